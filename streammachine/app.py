"""App: its settings, its resources, and what it reports of itself.

Registration (`agent`, `timer`, `cron`, hooks) is in `registration.py`, sending (`send`,
`send_batch`, partitions) in `sending.py` and running (`start`, `run`, `shutdown`) in
`lifecycle.py`: parts of `App` (mixins) kept in modules of one job each.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import msgspec

from .codec import StructCodec
from .connection import RedisConnection
from .consume.agent import Agent
from .lifecycle import Lifecycle
from .presence.heartbeat import AgentBeat, Snapshot, TimerBeat, add_heartbeat
from .registration import Registration
from .schedule.cron import Cron
from .schedule.delayed import Scheduler
from .schedule.timer import Timer
from .sending import Record as Record  # re-exported: code imported it from here
from .sending import Sending
from .settings import AppConfig, Settings
from .tracing import Tracing

if TYPE_CHECKING:
    from .ohlc.consumer import FastOHLCConsumer
    from .produce import Producer
    from .state.storage import Storage

__all__ = ["App"]

log = logging.getLogger("streammachine.app")

P = ParamSpec("P")
R = TypeVar("R")
AsyncFn = Callable[P, Awaitable[R]]


class App(Registration, Sending, Lifecycle):
    """A StreamMachine application: agents (stream consumers), timers and lifecycle hooks.

    Args:
        name: the app's name, for logs and the dashboard.
        to_scan: accepted for compatibility; decorators register at import time.
        max_processes: size of `process_pool`.
        max_threads: size of `thread_pool`.
        dashboard_enabled: serve the dashboard when run by `app.start()` or `streammachine run`
            (the runner serves it, once per run).
        redis_url: the Redis URL (default: `REDIS_URL`, else `REDIS_HOST`/`PORT`/`DB`).
        storage_namespace: the `Storage` namespace (default: `STREAMMACHINE_STORAGE_NAMESPACE`).
        maxlen: approximate length cap for streams this app writes to.
        shutdown_timeout_s: how long in-flight handlers may run after a stop request.

    Example:
        >>> app = App(name="orders")
        >>> @app.agent("orders", group="billing")
        ... async def bill(record: Message) -> None:
        ...     await app.send("invoices", {"order": record.message["id"]})
    """

    def __init__(
        self,
        name: str = "streammachine",
        to_scan: bool = True,
        max_processes: int = 5,
        max_threads: int = 5,
        dashboard_enabled: bool = False,
        dashboard_host: str = "127.0.0.1",
        dashboard_port: int = 8000,
        *,
        redis_url: str | None = None,
        storage_namespace: str | None = None,
        maxlen: int | None = None,
        shutdown_timeout_s: float | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.current()
        self.config = AppConfig(
            name=name,
            to_scan=to_scan,
            max_processes=max_processes,
            max_threads=max_threads,
            shutdown_timeout_s=(
                self.settings.shutdown_timeout_s
                if shutdown_timeout_s is None
                else shutdown_timeout_s
            ),
            stream_maxlen=maxlen if maxlen is not None else self.settings.stream_maxlen,
        )
        self.name = name
        # The runner's settings (`streammachine run --dashboard ...`) beat the code's defaults.
        s = self.settings
        self.dashboard_enabled = dashboard_enabled or s.dashboard
        self.dashboard_host = s.dashboard_host or dashboard_host
        self.dashboard_port = s.dashboard_port or dashboard_port
        from .state.values import check_namespace

        self.storage_namespace = check_namespace(
            storage_namespace or self.settings.storage_namespace
        )
        self.agents: list[Agent] = []
        self.timers: list[Timer] = []
        self.crons: list[Cron] = []
        self.startup_hooks: list[Callable[[], Awaitable[Any]]] = []
        self.shutdown_hooks: list[Callable[[], Awaitable[Any]]] = []
        self._packed: dict[str, StructCodec] = {}
        #: Streams this app declares it writes to (`produces`), with their schema or None.
        self.produced: dict[str, type[msgspec.Struct] | None] = {}
        #: OpenTelemetry spans, when a tracer provider is configured (see `tracing`).
        self.tracing: Tracing | None = None
        self._partitions: dict[str, tuple[int, itertools.count[int]]] = {}
        self._redis_url = redis_url
        self._redis: RedisConnection | None = None
        self._storage: Storage | None = None
        self._scheduler: Scheduler | None = None
        self._producer: Producer | None = None
        self._process_pool: ProcessPoolExecutor | None = None
        self._thread_pool: ThreadPoolExecutor | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._forced = False
        self._exit_code = 0
        self._tasks = 0
        #: Extra tasks run beside the agents until stop (e.g. the instance heartbeat).
        self.background: list[Callable[[anyio.Event], Coroutine[Any, Any, None]]] = []
        #: What this process runs (a supervised worker runs a part of the app).
        self.active_agents: list[Agent] | None = None
        self.active_timers: list[Timer] | None = None
        # Every running App registers itself in Redis with a heartbeat (liveness, dashboard).
        add_heartbeat(self)
        #: Set once groups exist and agents and timers run (the supervisor's readiness signal).
        self.started: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"App({self.name!r}, agents={len(self.agents)}, timers={len(self.timers)})"

    # --- partitions (checked here; routing itself is `Sending`'s) ------------------------------

    # --- resources ---------------------------------------------------------------------------

    @property
    def redis(self) -> RedisConnection:
        """The app's Redis connection manager."""
        if self._redis is None:
            self._redis = RedisConnection(url=self._redis_url, settings=self.settings)
        return self._redis

    @property
    def storage(self) -> Storage:
        """Shared state in Redis, visible to every process and host of the app."""
        if self._storage is None:
            from .state.storage import Storage

            self._storage = Storage(namespace=self.storage_namespace, redis=self.redis)
        return self._storage

    @property
    def scheduler(self) -> Scheduler:
        """The delayed entries of this app's storage namespace (see `send(..., delay_s=)`)."""
        if self._scheduler is None or self._scheduler.redis is not self.redis:
            self._scheduler = Scheduler(self.redis, self.storage_namespace)
        return self._scheduler

    @property
    def producer(self) -> Producer:
        """Writes this app's sends outside handlers, idempotently (`streammachine.produce`)."""
        if self._producer is None or self._producer.redis is not self.redis:
            from .produce import Producer

            self._producer = Producer(self.redis, self.name)
        return self._producer

    @property
    def process_pool(self) -> ProcessPoolExecutor:
        """A process pool of `max_processes` workers for CPU-bound work."""
        if self._process_pool is None:
            self._process_pool = ProcessPoolExecutor(self.config.max_processes)
        return self._process_pool

    @property
    def thread_pool(self) -> ThreadPoolExecutor:
        """A thread pool of `max_threads` workers for blocking calls."""
        if self._thread_pool is None:
            self._thread_pool = ThreadPoolExecutor(self.config.max_threads)
        return self._thread_pool

    # --- sending -----------------------------------------------------------------------------

    def ohlc(self, input_stream: str, **kwargs: Any) -> FastOHLCConsumer:
        """A `FastOHLCConsumer` of `input_stream` that starts and stops with this app.

        Example:
            >>> candles = app.ohlc("ticks", intervals=["1m", "5m"])  # doctest: +SKIP
        """
        from .ohlc.consumer import FastOHLCConsumer

        return FastOHLCConsumer(input_stream, app=self, **kwargs)

    def snapshot(self) -> Snapshot:
        """What this process runs and its counters, as the instance heartbeat reports them.

        Example:
            >>> App(name="orders").snapshot().app
            'orders'
        """
        from .consume.stats import LATENCY_BUCKETS_S

        # A supervised worker runs a part of the app: `run` records which as active_*.
        agents = self.agents if self.active_agents is None else self.active_agents
        timers = self.timers if self.active_timers is None else self.active_timers
        return Snapshot(
            app=self.name,
            agents=[
                AgentBeat(
                    name=a.name,
                    stream=a.config.stream,
                    group=a.config.group,
                    concurrency=a.config.concurrency,
                    partitions=a.config.partitions or 0,
                    exclusive=a.config.exclusive,
                    paused=a.paused,
                    stats=a.stats.copy(),
                )
                for a in agents
            ],
            timers=[
                TimerBeat(
                    name=t.name,
                    interval_s=float(t.config.interval),
                    runs=t.runs,
                    failures=t.failures,
                )
                for t in timers
            ],
            latency_buckets_s=list(LATENCY_BUCKETS_S),
        )

    async def health_check(self) -> dict[str, Any]:
        """Health: ``{"status", "redis", "active_tasks", "registered_agents", "registered_timers"}``.

        Example:
            >>> await app.health_check()  # doctest: +SKIP
            {'status': 'healthy', 'redis': 'connected', 'active_tasks': 3, ...}
        """
        ok = await self.redis.health_check()
        return {
            "status": "healthy" if ok else "degraded",
            "redis": "connected" if ok else "disconnected",
            "active_tasks": self._tasks,
            "registered_agents": len(self.agents),
            "registered_timers": len(self.timers),
        }
