"""Which processes are alive: the instance heartbeat keys, read by consumers' housekeeping.

Every running App writes `streammachine:instances:<host>-<pid>-<random>` with a TTL and marks its
`<host>-<pid>-` alive in one sorted set (see `streammachine.presence.heartbeat`). Consumer names start with
`<host>-<pid>-`, so a consumer belongs to a live process exactly when that prefix is alive. This is
the only liveness rule (DESIGN.md "consumer names and liveness"): XINFO's idle time is not one, as
a blocked read on Redis ≤ 7.0 does not refresh it.

The set is untrusted input (another tenant or a hand-written ZADD may put anything there): a
member that is not `<host>-<pid>-` (an empty string would prefix every consumer) is ignored and
logged once, and no member stays alive longer than `MAX_ALIVE_MS` from now — a score further out
is cut to that, so a member nobody refreshes ages out.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from typing import TYPE_CHECKING

from .. import keys

if TYPE_CHECKING:
    from ..connection import RedisConnection

log = logging.getLogger("streammachine.liveness")

__all__ = [
    "ALIVE_SCRIPT",
    "MAX_ALIVE_MS",
    "LiveSet",
    "is_live",
    "live_prefixes",
    "process_prefix",
]

#: A sorted set of live processes (`<host>-<pid>-`), scored by when each stops being alive
#: (Redis' clock, ms): the heartbeat writes it, consumers read it in one call.
PROCESSES_KEY = keys.PROCESSES

#: The longest a process is taken for alive without a heartbeat (a heartbeat every 2 s marks it
#: for 7 s; even a 60 s interval stays well below this).
MAX_ALIVE_MS = 600_000
#: What a member must look like: `<host>-<pid>-`, printable, of a sane length.
_MEMBER = re.compile(r"[^\x00-\x20\x7f]{1,253}-[0-9]{1,10}-")
_warned: set[str] = set()

# Mark ARGV[1] alive for ARGV[2] ms from now (Redis' clock) and forget the expired ones.
ALIVE_SCRIPT = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + math.min(tonumber(ARGV[2]), {MAX_ALIVE_MS}), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return 1
"""
# The processes alive now; a member marked alive further ahead than StreamMachine ever marks one
# (a hand-written score) is cut to that horizon, so it ages out unless refreshed.
_LIVE_SCRIPT = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local horizon = now + {MAX_ALIVE_MS}
local far = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. horizon, '+inf', 'LIMIT', 0, 1000)
for _, member in ipairs(far) do
  redis.call('ZADD', KEYS[1], 'XX', horizon, member)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""


def _valid_members(found: list[bytes | str]) -> set[str]:
    """The well-formed `<host>-<pid>-` members; each malformed one is logged once."""
    out: set[str] = set()
    for raw in found:
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            text = None
        if text is not None and _MEMBER.fullmatch(text):
            out.add(text)
            continue
        shown = repr(raw)[:80]
        if shown not in _warned and len(_warned) < 1000:
            _warned.add(shown)
            log.warning(
                "%s holds %s, which is not a process (<host>-<pid>-); ignored",
                PROCESSES_KEY, shown,
            )  # fmt: skip
    return out


def process_prefix() -> str:
    """`<host>-<pid>-`: how this process's consumer names and instance ids begin.

    Example:
        >>> process_prefix().endswith(f"-{os.getpid()}-")
        True
    """
    return f"{socket.gethostname()}-{os.getpid()}-"


async def live_prefixes(redis: RedisConnection) -> set[str]:
    """The `<host>-<pid>-` prefixes of every process whose heartbeat is fresh (this one too)."""
    found = await redis.script(_LIVE_SCRIPT)(keys=[PROCESSES_KEY])
    return {process_prefix(), *_valid_members(found)}


class LiveSet:
    """`live_prefixes`, read at most once per `every_s` (consumers ask at every claim)."""

    def __init__(self, redis: RedisConnection, every_s: float = 1.0) -> None:
        self.redis = redis
        self.every_s = every_s
        self._at = -1e9
        self._live: set[str] = set()

    async def get(self) -> set[str]:
        """The live prefixes, at most `every_s` old."""
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._live = await live_prefixes(self.redis)
            self._at = now
        return self._live


def is_live(consumer: str, prefixes: set[str]) -> bool:
    """Whether `consumer` (a consumer name) belongs to one of the live processes.

    Example:
        >>> is_live("web-1-42-bill-0", {"web-1-42-"}), is_live("web-1-7-bill-0", {"web-1-42-"})
        (True, False)
    """
    return any(consumer.startswith(p) for p in prefixes if p)
