"""One agent: a registered consumer of a stream in a group, its settings and its counters.

The work happens in `consumer.Consumer` (the read → deliver → commit loop, `concurrency` of them
per stream), `delivery` (the handler call, retries, dead letters) and `commit` (the atomic commit
of acks and handler output).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .. import keys
from ..codec import Payload, StructCodec
from ..schedule.rate import RateLimiter
from ..settings import ConsumerConfig
from .commit import current_batch
from .consumer import Consumer
from .delivery import BatchDelivery, Failures, MessageDelivery
from .stats import LATENCY_BUCKETS_S, AgentStats
from .wire import Wire

if TYPE_CHECKING:
    from ..app import App
    from .partitions import OnOwned

__all__ = ["LATENCY_BUCKETS_S", "Agent", "AgentStats", "current_batch"]

log = logging.getLogger("streammachine.consume.agent")

Handler = Callable[..., Awaitable[Any]]


class Agent:
    """A registered consumer of one stream in one group (`@app.agent`)."""

    def __init__(
        self,
        app: App,
        fn: Handler,
        config: ConsumerConfig,
        *,
        schema: type[msgspec.Struct] | None = None,
        payload: Payload = "fields",
        batch: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.config = config
        self.name = config.name or getattr(fn, "__name__", "agent")
        self.schema = schema
        self.codec = StructCodec(schema, payload) if schema is not None else None
        self.batch = batch
        self.stats = AgentStats()
        #: Awaited with (owner, partition index) when this process takes over a partition (or
        #: an exclusive agent's stream), before it consumes it; e.g. to restore a snapshot.
        self.on_owned: OnOwned | None = None
        self._limiter: RateLimiter | None = None

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, stream={self.config.stream!r}, group={self.config.group!r})"

    @property
    def running(self) -> int:
        """How many of its batches are being handled right now."""
        return self.stats.running

    def consumer_name(self, index: int) -> str:
        """`<host>-<pid>-<agent>-<n>`: stable for the process and readable in XINFO."""
        return f"{socket.gethostname()}-{os.getpid()}-{self.name}-{index}"

    @property
    def streams(self) -> list[str]:
        """The streams this agent consumes: its stream, or `<stream>:p0 … :p{K-1}` when it has
        K partitions."""
        k = self.config.partitions
        base = self.config.stream
        return [keys.partition(base, i) for i in range(k)] if k else [base]

    async def prepare(self) -> None:
        """Create the group (MKSTREAM) if it does not exist; an existing group keeps its place."""
        for stream in self.streams:
            created = await self.app.redis.ensure_group(
                stream, self.config.group, self.config.start
            )
            if created:
                log.info("created group %s on %s", self.config.group, stream)

    def consumers(self) -> list[Consumer]:
        """This process's consumers of an unpartitioned agent: `concurrency` per stream, the
        first of each stream tidying its group."""
        n = self.config.concurrency
        return [
            self.consumer(stream, i * n + c, housekeeper=c == 0)
            for i, stream in enumerate(self.streams)
            for c in range(n)
        ]

    def consumer(
        self,
        stream: str,
        index: int,
        *,
        housekeeper: bool = False,
        takeover: bool | None = None,
        holds: Callable[[], bool] | None = None,
        gate: anyio.Semaphore | None = None,
    ) -> Consumer:
        """Consumer number `index` of this agent on `stream` (see `Consumer` for the rest)."""
        app, cfg = self.app, self.config
        name = self.consumer_name(index)
        kind = BatchDelivery if self.batch else MessageDelivery
        delivery = kind(
            self.fn, self.codec, self.stats, tracing=app.tracing, stream=stream, group=cfg.group
        )
        failures = Failures(app.redis, stream, name, cfg, self.stats, self.name)
        down_exit_s = app.settings.redis_down_exit_s
        wire = Wire(app.redis, stream, name, down_exit_s=down_exit_s, on_down=self._down)
        return Consumer(
            cfg, stream, name, app.redis, delivery, failures, self.stats, self.prepare,
            housekeeper=housekeeper, wire=wire, namespace=app.storage_namespace,
            limiter=self._limiter, takeover=cfg.takeover if takeover is None else takeover,
            holds=holds, gate=gate,
        )  # fmt: skip

    def limiter(self) -> RateLimiter | None:
        """The agent's `rate_limit`, one per agent shared by every consumer, process and host."""
        rate = self.config.rate_limit
        if not rate:
            return None
        return RateLimiter(self.app.redis, f"{self.app.name}:{self.name}", rate)

    def _down(self, reason: str) -> None:
        self.app.fail(reason, code=3)

    async def run(self, stop: anyio.Event) -> None:
        """Run its consumers until `stop` is set and they have drained. A partitioned agent
        consumes only the partitions this process owns, an exclusive one only while this process
        owns its stream (`partitions.PartitionOwner`)."""
        self._limiter = self.limiter()
        if self.config.partitions or self.config.exclusive:
            from .partitions import PartitionOwner

            await PartitionOwner.of(self).run(stop)
            return
        async with anyio.create_task_group() as tg:
            for consumer in self.consumers():
                tg.start_soon(consumer.run, stop)
