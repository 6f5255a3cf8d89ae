"""Rate limits: one GCRA limiter in Redis shared by every consumer, process and host of an agent."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .. import keys
from ..codec import as_text
from ..exceptions import ConfigError
from .timing import parse_rate

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["BURST_WINDOW_S", "RECHECK_S", "RateLimiter"]

log = logging.getLogger("streammachine.schedule")


# --- rate limits ---------------------------------------------------------------------------------

#: At most `max(1, rate x BURST_WINDOW_S)` tokens are taken at once (an agent with a rate limit
#: reads batches no larger), so over any window of T seconds at most `rate x T` plus one such
#: batch are handled: "5/s" handles one entry every 0.2 s, "1000/s" 50 every 50 ms.
BURST_WINDOW_S = 0.05
#: A stored time further ahead than this many batches of `max_batch` (or 60 s) is not one the
#: limit can have set (another tenant, a hand-written value): it is reset, and said once.
MAX_QUEUED_BATCHES = 100
#: During a longer wait the key is looked at this often: when it is gone, the wait ends.
RECHECK_S = 1.0

# GCRA as reservations: each call takes n tokens and returns how long (µs) the caller waits before
# using them, so waiting callers never call again and the combined rate is the limit. KEYS[1]
# holds the theoretical arrival time (epoch µs, Redis' clock); ARGV: µs per token, burst
# tolerance µs, n, the furthest ahead a valid time can be (µs). A value that is not a number, or
# further ahead, is reset to now. Returns {wait µs, 1 when reset, the bad value (cut)}.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local raw = redis.pcall('GET', KEYS[1])
local tat, bad = now, ''
if type(raw) == 'string' then
  tat = tonumber(raw)
  if not tat or tat ~= tat or tat > now + tonumber(ARGV[4]) then tat, bad = now, raw end
elseif type(raw) == 'table' then
  tat, bad = now, '(a key of another type)'
  redis.call('DEL', KEYS[1])
end
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
local new = tat + tonumber(ARGV[3]) * tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {wait, bad ~= '' and 1 or 0, string.sub(bad, 1, 60)}
"""


class RateLimiter:
    """A rate limit shared by every process and host using the same `name` on one Redis (GCRA,
    one script call per `acquire`).

    Args:
        redis: the connection.
        name: the limit's name (its key is `streammachine:rate:{<name>}`).
        rate: `"200/s"`, `"10/m"`, `"5/h"`, or tokens per second as a number.
        burst: tokens that may be taken at once after a quiet spell (default 1).

    A value in its key that this limit cannot have set (not a number, or further ahead than
    `MAX_QUEUED_BATCHES` batches) is reset and logged once; a wait never exceeds that bound,
    ends when the key is deleted, and ends at once when the `stop` given to `acquire`/`take`
    is set.

    Example:
        >>> limiter = RateLimiter(app.redis, "orders:bill", "200/s")  # doctest: +SKIP
        >>> await limiter.acquire(len(batch))  # doctest: +SKIP
        0.0
    """

    def __init__(
        self, redis: RedisConnection, name: str, rate: str | float, *, burst: int = 1
    ) -> None:
        per_s = parse_rate(rate) if isinstance(rate, str) else float(rate)
        if not per_s > 0 or per_s == float("inf") or burst < 1:
            raise ConfigError("a rate must be > 0 and finite, and burst >= 1")
        self.redis = redis
        self.name = name
        self.rate_per_s = per_s
        self.key = keys.rate(name)
        self.interval_us = 1e6 / per_s
        self.tolerance_us = (burst - 1) * self.interval_us
        #: The most tokens taken at once (and the largest batch an agent reads under it).
        self.max_batch = max(1, int(per_s * BURST_WINDOW_S))
        #: The longest wait this limit can ask for (a stored time further ahead is reset).
        self.max_wait_s = max(60.0, MAX_QUEUED_BATCHES * self.max_batch / per_s)
        self._tokens = 0  # reserved by `take` and not used yet
        self._warned = False

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {self.rate_per_s:g}/s)"

    async def reserve(self, n: int = 1) -> float:
        """Take `n` tokens now; returns the seconds to wait before using them."""
        cap_us = self.max_wait_s * 1e6 + self.tolerance_us
        reply = await self.redis.script(RATE_SCRIPT)(
            keys=[self.key],
            args=[repr(self.interval_us), repr(self.tolerance_us), int(n), repr(cap_us)],
        )
        if int(reply[1]) and not self._warned:
            self._warned = True
            log.warning(
                "rate limit %s: its key %s held %r, not a time this limit can have set; reset "
                "(said once)", self.name, self.key, as_text(reply[2]),
            )  # fmt: skip
        return min(float(reply[0]) / 1e6, self.max_wait_s + self.tolerance_us / 1e6)

    async def _wait(self, wait_s: float, stop: anyio.Event | None) -> bool:
        """Sleep `wait_s` (looking at the key every `RECHECK_S`); False when `stop` ended it."""
        deadline = anyio.current_time() + wait_s
        while (left := deadline - anyio.current_time()) > 0:
            with anyio.move_on_after(min(left, RECHECK_S)):
                if stop is None:
                    await anyio.sleep_forever()
                else:
                    await stop.wait()
            if stop is not None and stop.is_set():
                return False
            if deadline - anyio.current_time() > 0 and not await self.redis.client.exists(self.key):
                return True  # the limit was reset (its key deleted): go on
        return stop is None or not stop.is_set()

    async def acquire(self, n: int = 1, stop: anyio.Event | None = None) -> float:
        """Wait (sleeping, not polling) until `n` tokens are allowed; returns the seconds waited.
        With `stop`, setting it ends the wait early (the tokens are not used)."""
        if n <= 0:
            return 0.0
        wait = await self.reserve(n)
        if wait > 0:
            await self._wait(wait, stop)
        return wait

    async def take(self, n: int, stop: anyio.Event | None = None) -> bool:
        """`acquire(n)` for a hot loop: tokens are reserved `max_batch` at a time (50 ms worth),
        so a limit far above the pace costs one Redis call now and then, not one per batch
        (the combined rate of every caller stays the limit). Returns False when `stop` was set
        while waiting: the tokens are not to be used (e.g. the batch is left unhandled).

        Example:
            >>> await limiter.take(len(batch))  # doctest: +SKIP
            True
        """
        if self._tokens >= n:
            self._tokens -= n
            return True
        chunk = max(n - self._tokens, self.max_batch)
        wait_s = await self.reserve(chunk)
        self._tokens += chunk - n
        if wait_s > 0:
            return await self._wait(wait_s, stop)
        return True
