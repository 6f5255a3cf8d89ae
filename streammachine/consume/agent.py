"""One agent: a registered consumer of a stream in a group, its settings, its counters and its
pause switch. The agent builds its consumers (`consumer.Consumer`, `concurrency` of them per
stream, each from one `context.Context`) and runs them; a partitioned agent runs those of the
partitions this process owns (`partitions.PartitionOwner`).

An agent depends on a narrow `Host` (the App, as seen from here), not on the App itself.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec

from .. import keys
from ..codec import Payload, StructCodec
from ..schedule.rate import RateLimiter
from .consumer import Consumer
from .context import Context, Ownership, Switch
from .deadletter import Failures
from .delivery import BatchDelivery, Delivery, MessageDelivery
from .stats import AgentStats

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..settings import ConsumerConfig, Settings
    from ..tracing import Tracing
    from .partitions import OnOwned

__all__ = ["Agent", "Host"]

log = logging.getLogger("streammachine.agent")

Handler = Callable[..., Awaitable[Any]]


class Host(Protocol):
    """What an agent needs of the app that runs it."""

    name: str
    settings: Settings
    storage_namespace: str
    tracing: Tracing | None

    @property
    def redis(self) -> RedisConnection: ...

    def fail(self, reason: str, code: int = 1) -> None: ...


class Agent:
    """A registered consumer of one stream in one group (`@app.agent`)."""

    def __init__(
        self,
        host: Host,
        fn: Handler,
        config: ConsumerConfig,
        *,
        schema: type[msgspec.Struct] | None = None,
        payload: Payload = "fields",
        batch: bool = False,
    ) -> None:
        self.host = host
        self.fn = fn
        self.config = config
        self.name = config.name or getattr(fn, "__name__", "agent")
        self.schema = schema
        self.codec = StructCodec(schema, payload) if schema is not None else None
        self.batch = batch
        self.stats = AgentStats()
        self.switch = Switch()
        #: The deliveries of this process's consumers (the upkeep tick checks their timeouts).
        self.deliveries: list[Delivery] = []
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

    @property
    def paused(self) -> bool:
        """Paused by an operator (`streammachine pause`)."""
        return self.switch.paused

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
            created = await self.host.redis.ensure_group(
                stream, self.config.group, self.config.start
            )
            if created:
                log.info("created group %s on %s", self.config.group, stream)

    def consumers(self) -> list[Consumer]:
        """This process's consumers of an unpartitioned agent: `concurrency` per stream, the
        first of each stream tidying its group."""
        n = self.config.concurrency
        # `takeover=True`: at start, take the group's pending entries and handle them in order.
        own = Ownership(lambda: True, takeover=True) if self.config.takeover else None
        return [
            self.consumer(stream, i * n + c, housekeeper=c == 0, ownership=own)
            for i, stream in enumerate(self.streams)
            for c in range(n)
        ]

    def consumer(
        self,
        stream: str,
        index: int,
        *,
        housekeeper: bool = False,
        ownership: Ownership | None = None,
    ) -> Consumer:
        """Consumer number `index` of this agent on `stream`."""
        host, cfg = self.host, self.config
        name = self.consumer_name(index)
        kind = BatchDelivery if self.batch else MessageDelivery
        delivery = kind(
            self.fn,
            self.codec,
            self.stats,
            tracing=host.tracing,
            stream=stream,
            group=cfg.group,
            timeout_s=cfg.timeout_s,
        )
        self.deliveries.append(delivery)
        ctx = Context(
            stream=stream,
            name=name,
            config=cfg,
            redis=host.redis,
            stats=self.stats,
            delivery=delivery,
            failures=Failures(host.redis, stream, name, cfg, self.stats, self.name),
            prepare=self.prepare,
            namespace=host.storage_namespace,
            limiter=self._limiter,
            switch=self.switch,
            down_exit_s=host.settings.redis_down_exit_s,
            on_down=self._down,
        )
        return Consumer(ctx, housekeeper=housekeeper, ownership=ownership)

    def limiter(self) -> RateLimiter | None:
        """The agent's `rate_limit`, one per agent shared by every consumer, process and host."""
        rate = self.config.rate_limit
        if not rate:
            return None
        return RateLimiter(self.host.redis, f"{self.host.name}:{self.name}", rate)

    def _down(self, reason: str) -> None:
        self.host.fail(reason, code=3)

    def overdue(self, now: float) -> int:
        """Cancel handler calls past `timeout_s` (the upkeep tick calls this); how many are."""
        n = sum(d.overdue(now) for d in self.deliveries)
        self.stats.overdue = n
        return n

    async def run(self, stop: anyio.Event) -> None:
        """Run its consumers until `stop` is set and they have drained. A partitioned agent
        consumes only the partitions this process owns, an exclusive one only while this process
        owns its stream (`partitions.PartitionOwner`)."""
        self._limiter = self.limiter()
        self.deliveries.clear()
        if self.config.partitions or self.config.exclusive:
            from .partitions import PartitionOwner

            await PartitionOwner.of(self).run(stop)
            return
        async with anyio.create_task_group() as tg:
            for consumer in self.consumers():
                tg.start_soon(consumer.run, stop)
