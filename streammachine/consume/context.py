"""What a consumer is built from: one `Context` (its stream, group, name, configuration,
connection, counters, handler call and failure handling), the agent's pause `Switch`, and, for a
partition's single owner, its `Ownership` (as FastStream hands a subscriber one config object, not
the broker)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..schedule.rate import RateLimiter
    from ..settings import ConsumerConfig
    from .deadletter import Failures
    from .delivery import Delivery
    from .stats import AgentStats

__all__ = ["Context", "Ownership", "Switch"]


class Switch:
    """An agent's pause switch in this process, set from Redis by the process's upkeep (an
    operator's `streammachine pause`); consumers stop reading while it is off.

    Example:
        >>> s = Switch()
        >>> s.set(True)
        >>> s.paused
        True
    """

    __slots__ = ("_resumed", "paused")

    def __init__(self) -> None:
        self.paused = False
        self._resumed: anyio.Event | None = None

    def set(self, paused: bool) -> None:
        """Pause or resume."""
        if paused == self.paused:
            return
        self.paused = paused
        if not paused and self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    async def wait(self, stop: anyio.Event) -> None:
        """Wait until resumed (or `stop`)."""
        if not self.paused:
            return
        if self._resumed is None:
            self._resumed = anyio.Event()
        resumed = self._resumed
        async with anyio.create_task_group() as tg:

            async def on_stop() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_stop)
            await resumed.wait()
            tg.cancel_scope.cancel()


@dataclass(frozen=True, slots=True)
class Ownership:
    """A partition's single owner: the consumer asks `holds()` before every read and batch and
    stops when it says no; at start it takes over the partition's pending entries (`takeover`);
    `gate` bounds how many of the process's partitions handle a batch at once. `sole`: the lease
    makes it the stream's only consumer, so whatever another consumer holds there is stranded
    (a stalled former owner's read that landed after the takeover) and is taken at every claim
    pass, whether its process lives or not."""

    holds: Callable[[], bool]
    takeover: bool = True
    gate: anyio.Semaphore | None = None
    sole: bool = False


@dataclass(frozen=True, slots=True)
class Context:
    """Everything one consumer works with.

    Attributes:
        stream: the stream it reads (the agent's, or one of its partitions).
        name: its consumer name in the group (`<host>-<pid>-<agent>-<n>`).
        config: the agent's configuration (group, count, block_ms, claim_idle_ms, ...).
        redis: the app's connection manager.
        stats: the agent's counters.
        delivery: the handler call; failures: retries and dead letters.
        prepare: creates the group again (after NOGROUP or a reconnect).
        namespace: the storage namespace of delayed sends and state changes made in handlers.
        limiter: the agent's rate limit, taken per batch before it is handled.
        switch: the agent's pause switch.
        down_exit_s, on_down: give up (call `on_down`) after this long without Redis.
    """

    stream: str
    name: str
    config: ConsumerConfig
    redis: RedisConnection
    stats: AgentStats
    delivery: Delivery
    failures: Failures
    prepare: Callable[[], Awaitable[None]]
    namespace: str = "default"
    limiter: RateLimiter | None = None
    switch: Switch | None = None
    down_exit_s: float | None = None
    on_down: Callable[[str], None] | None = None

    @property
    def group(self) -> str:
        """The consumer group."""
        return self.config.group
