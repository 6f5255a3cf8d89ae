"""What an agent needs of an App — a Redis connection, settings, `send` — for a FastOHLCConsumer
started on its own (`consumer.start()` without `app=`, as the reference documents it). It runs
no hooks, timers or heartbeat of its own: only the consumer's one agent, through the same
machinery as an App's (`consume.agent.Agent`, `consume.partitions.PartitionOwner`).

Example:
    >>> host = AgentHost("ohlc:ticks", Settings(redis_url="memory://"), stop)  # doctest: +SKIP
    >>> host.redis.url  # doctest: +SKIP
    'memory://'
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import anyio

from ..connection import RedisConnection
from ..sending import Sending
from ..settings import AppConfig, Settings

if TYPE_CHECKING:
    from ..codec import StructCodec
    from ..schedule.delayed import Scheduler

__all__ = ["AgentHost"]

log = logging.getLogger("streammachine.ohlc")


class AgentHost(Sending):
    """The part of an App an agent uses (see the module docstring).

    Args:
        name: a name for logs (and the agent's rate limit, if it had one).
        settings: the settings it connects with.
        stop: set to stop the agent; `fail` sets it too.
    """

    def __init__(self, name: str, settings: Settings, stop: anyio.Event) -> None:
        self.name = name
        self.settings = settings
        self.config = AppConfig(name=name, stream_maxlen=settings.stream_maxlen)
        self.storage_namespace = settings.storage_namespace
        self.tracing = None
        self._packed: dict[str, StructCodec] = {}
        self._partitions: dict[str, tuple[int, itertools.count[int]]] = {}
        self._redis = RedisConnection(url=None, settings=settings)
        self.stop = stop

    @property
    def redis(self) -> RedisConnection:
        """Its connection manager."""
        return self._redis

    @property
    def scheduler(self) -> Scheduler:
        """The delayed entries of its storage namespace (for `send(..., delay_s=)`)."""
        from ..schedule.delayed import Scheduler

        return Scheduler(self._redis, self.storage_namespace)

    def fail(self, reason: str, code: int = 1) -> None:
        """Stop (e.g. Redis down for too long); an App would exit with `code`."""
        log.error("%s stopping: %s", self.name, reason)
        self.stop.set()
