"""Which processes are alive: the instance heartbeat keys, read by consumers' housekeeping.

Every running App writes `streammachine:instances:<host>-<pid>-<random>` with a TTL and marks its
`<host>-<pid>-` alive in one sorted set (see `streammachine.presence.heartbeat`). Consumer names start with
`<host>-<pid>-`, so a consumer belongs to a live process exactly when that prefix is alive. This is
the only liveness rule (DESIGN.md "consumer names and liveness"): XINFO's idle time is not one, as
a blocked read on Redis ≤ 7.0 does not refresh it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

from .. import keys
from ..codec import as_text

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = [
    "ALIVE_SCRIPT",
    "LiveSet",
    "is_live",
    "live_prefixes",
    "process_prefix",
]

#: A sorted set of live processes (`<host>-<pid>-`), scored by when each stops being alive
#: (Redis' clock, ms): the heartbeat writes it, consumers read it in one call.
PROCESSES_KEY = keys.PROCESSES

# Mark ARGV[1] alive for ARGV[2] ms from now (Redis' clock) and forget the expired ones.
ALIVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return 1
"""
# The processes alive now.
_LIVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""


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
    return {process_prefix(), *(as_text(p) for p in found)}


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
    return any(consumer.startswith(p) for p in prefixes)
