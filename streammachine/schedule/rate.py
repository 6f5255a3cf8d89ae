"""Rate limits: one GCRA limiter in Redis shared by every consumer, process and host of an agent."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .. import keys
from ..exceptions import ConfigError
from .timing import parse_rate

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["RateLimiter"]

log = logging.getLogger("streammachine.schedule")


# --- rate limits ---------------------------------------------------------------------------------

# GCRA as reservations: each call takes n tokens and returns how long (µs) the caller waits before
# using them, so waiting callers never call again and the combined rate is the limit. KEYS[1]
# holds the theoretical arrival time (epoch µs, Redis' clock); ARGV: µs per token, burst
# tolerance µs, n.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
local new = tat + tonumber(ARGV[3]) * tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return wait
"""


class RateLimiter:
    """A rate limit shared by every process and host using the same `name` on one Redis (GCRA,
    one script call per `acquire`).

    Args:
        redis: the connection.
        name: the limit's name (its key is `streammachine:rate:{<name>}`).
        rate: `"200/s"`, `"10/m"`, `"5/h"`, or tokens per second as a number.
        burst: tokens that may be taken at once after a quiet spell (default 1).

    Example:
        >>> limiter = RateLimiter(app.redis, "orders:bill", "200/s")  # doctest: +SKIP
        >>> await limiter.acquire(len(batch))  # doctest: +SKIP
        0.0
    """

    def __init__(
        self, redis: RedisConnection, name: str, rate: str | float, *, burst: int = 1
    ) -> None:
        per_s = parse_rate(rate) if isinstance(rate, str) else float(rate)
        if per_s <= 0 or burst < 1:
            raise ConfigError("a rate must be > 0 and burst >= 1")
        self.redis = redis
        self.name = name
        self.rate_per_s = per_s
        self.key = keys.rate(name)
        self.interval_us = 1e6 / per_s
        self.tolerance_us = (burst - 1) * self.interval_us
        self._tokens = 0  # reserved by `take` and not used yet

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {self.rate_per_s:g}/s)"

    async def reserve(self, n: int = 1) -> float:
        """Take `n` tokens now; returns the seconds to wait before using them."""
        wait_us = await self.redis.script(RATE_SCRIPT)(
            keys=[self.key], args=[repr(self.interval_us), repr(self.tolerance_us), int(n)]
        )
        return float(wait_us) / 1e6

    async def acquire(self, n: int = 1) -> float:
        """Wait (sleeping, not polling) until `n` tokens are allowed; returns the seconds waited."""
        if n <= 0:
            return 0.0
        wait = await self.reserve(n)
        if wait > 0:
            await anyio.sleep(wait)
        return wait

    async def take(self, n: int) -> None:
        """`acquire(n)` for a hot loop: tokens are reserved in chunks of at least 50 ms worth,
        so a limit far above the pace costs one Redis call now and then, not one per batch
        (the combined rate of every caller stays the limit).

        Example:
            >>> await limiter.take(len(batch))  # doctest: +SKIP
        """
        if self._tokens >= n:
            self._tokens -= n
            return
        chunk = max(n - self._tokens, int(self.rate_per_s * 0.05))
        wait_s = await self.reserve(chunk)
        self._tokens += chunk - n
        if wait_s > 0:
            await anyio.sleep(wait_s)
