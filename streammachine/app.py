"""App: registration of agents, timers and hooks, its resources, and what it reports of itself.

Sending (`send`, `send_batch`, partitions) is in `sending.py` and running (`start`, `run`,
`shutdown`) in `lifecycle.py`: parts of `App` (mixins) kept in modules of one job each.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import anyio
import msgspec

from .codec import StructCodec
from .connection import RedisConnection
from .consume.agent import Agent
from .exceptions import ConfigError
from .lifecycle import Lifecycle
from .presence.heartbeat import AgentBeat, AgentStats, Snapshot, TimerBeat, add_heartbeat
from .schedule.cron import Cron
from .schedule.delayed import Scheduler
from .schedule.timer import Timer
from .sending import Record as Record  # re-exported: code imported it from here
from .sending import Sending
from .settings import AppConfig, ConsumerConfig, Settings, TimerConfig
from .tracing import Tracing

if TYPE_CHECKING:
    from .ohlc.consumer import FastOHLCConsumer
    from .state.storage import Storage

__all__ = ["App"]

log = logging.getLogger("streammachine.app")

P = ParamSpec("P")
R = TypeVar("R")
AsyncFn = Callable[P, Awaitable[R]]


def _check_coroutine(fn: object, decorator: str) -> None:
    """Refuse, at decoration time, a handler the runner could only fail on at its first call."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__ counts
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call):
        return
    name = getattr(fn, "__qualname__", None) or repr(fn)
    raise ConfigError(
        f"{decorator} needs an `async def` function; {name} is not a coroutine function"
    )


class App(Sending, Lifecycle):
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
        from .state.storage import check_namespace

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

    # --- registration ------------------------------------------------------------------------

    def agent(
        self,
        stream: str,
        group: str | None = None,
        concurrency: int = 1,
        processes: int | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        *,
        schema: type[msgspec.Struct] | None = None,
        payload: Literal["fields", "msgpack", "json"] = "fields",
        batch: bool = False,
        count: int | None = None,
        block_ms: int | None = None,
        claim_idle_ms: int | None = None,
        claim_interval_ms: int | None = None,
        max_deliveries: int = 5,
        retry_backoff_ms: int = 1000,
        dead_letter: str | None = None,
        maxlen: int | None = None,
        trim: Literal["acked"] | None = None,
        partitions: int | None = None,
        takeover: bool = False,
        name: str | None = None,
        rate_limit: str | None = None,
        exclusive: bool = False,
        lease_ms: int | None = None,
    ) -> Callable[[AsyncFn[P, R]], AsyncFn[P, R]]:
        """Register a consumer of `stream` in consumer group `group`.

        The handler gets each `Message` in order and the entry is acked once it returns; an error
        leaves it pending for a retry with backoff, and after `max_deliveries` it moves to the
        dead-letter stream (`<stream>:dead`). With `batch=True` the handler gets a list of Messages.

        Args:
            stream: the stream to consume.
            group: the consumer group (default `STREAMMACHINE_DEFAULT_GROUP`, else "eventengine").
            concurrency: consumers of this agent in each process.
            processes: worker processes for this agent under `streammachine run`.
            start: where a new group starts: "earliest" (the whole stream) or "latest".
            schema: a msgspec Struct; the handler then gets `record.value` decoded and validated
                (text fields converted, e.g. "1.5" → float); a message that fails validation goes
                to the dead-letter stream with the reason.
            payload: how a `schema` message is laid out: "fields" (one field per struct field),
                or "msgpack"/"json" (the whole struct packed in one `data` field; faster, nested).
            batch: call the handler once per batch with a list of Messages.
            count: entries per read (default `STREAMMACHINE_COUNT`).
            block_ms: how long an idle read blocks.
            claim_idle_ms: take over other consumers' entries idle this long.
            claim_interval_ms: how often to look for such entries.
            max_deliveries: deliveries before an entry is dead-lettered (0 = never).
            retry_backoff_ms: the first retry's delay; doubled per delivery, with jitter.
            dead_letter: the dead-letter stream (default `<stream>:dead`).
            maxlen: approximate length cap for streams this agent's handler writes to.
            trim: "acked" periodically trims `stream` below the oldest entry any group still
                needs, so it cannot grow without bound and never loses unread entries.
            partitions: consume K partition streams `<stream>:p0 … :p{K-1}` (each its own slot
                on a cluster); `send(stream, record, key=...)` routes by a stable hash of the key.
            takeover: on start, take over every pending entry of the group and handle them,
                in order, before new ones (for a single active consumer, e.g. behind a lease,
                whose handler keeps state that depends on order).
            name: the agent's name (default: the function's name).
            rate_limit: at most this many messages handled, e.g. "200/s", "10/m" or "5/h",
                by all consumers, processes and hosts of this agent together (one limit in
                Redis, see `streammachine.schedule.RateLimiter`).
            exclusive: one consumer at a time across all processes and hosts (a lease; standbys
                take over, pending entries first, in order). lease_ms: that lease's (or a
                partition's) life without renewal, default 5000.

        Example:
            >>> @app.agent("input_stream", group="workers", concurrency=2)  # doctest: +SKIP
            ... async def process(record: Message) -> None: ...
        """
        s = self.settings
        config = ConsumerConfig(
            stream=stream,
            group=group or s.default_group,
            concurrency=concurrency,
            processes=processes,
            start=start,
            count=count or s.count,
            block_ms=block_ms or s.block_ms,
            claim_idle_ms=claim_idle_ms or s.claim_idle_ms,
            claim_interval_ms=claim_interval_ms
            or min(5000, max(100, (claim_idle_ms or s.claim_idle_ms) // 2)),
            max_deliveries=max_deliveries,
            retry_backoff_ms=retry_backoff_ms,
            dead_letter=dead_letter,
            maxlen=maxlen,
            trim=trim,
            partitions=partitions,
            takeover=takeover,
            name=name or "",
            rate_limit=rate_limit,
            exclusive=exclusive,
            lease_ms=5000 if lease_ms is None else lease_ms,
        )

        if partitions:
            self.partitioned(stream, partitions)

        def register(fn: AsyncFn[P, R]) -> AsyncFn[P, R]:
            _check_coroutine(fn, "@app.agent")
            agent = Agent(self, fn, config, schema=schema, payload=payload, batch=batch)
            self.agents.append(agent)
            if agent.codec is not None and payload != "fields":
                self._packed[stream] = agent.codec
            return fn

        return register

    def timer(
        self,
        t: float,
        *,
        scope: Literal["app", "instance"] = "app",
        name: str | None = None,
    ) -> Callable[[AsyncFn[P, R]], AsyncFn[P, R]]:
        """Register a task that runs every `t` seconds (no drift, never overlapping itself).

        Args:
            t: the interval in seconds.
            scope: "app" (default): once per interval for the whole app — every process and
                host with this App name on this Redis — run by the holder of a lease in Redis;
                when it dies another process takes over within `max(3 * t, 5 s)`.
                "instance": in every process (e.g. per-process housekeeping).
            name: the timer's name (default: the function's name).

        Example:
            >>> @app.timer(5)  # doctest: +SKIP
            ... async def heartbeat() -> None: ...
        """
        config = TimerConfig(interval=t, name=name or "", scope=scope)

        def register(fn: AsyncFn[P, R]) -> AsyncFn[P, R]:
            _check_coroutine(fn, "@app.timer")
            self.timers.append(Timer(fn, config))
            return fn

        return register

    def cron(
        self,
        expr: str,
        *,
        tz: str = "UTC",
        scope: Literal["app", "instance"] = "app",
        name: str | None = None,
    ) -> Callable[[AsyncFn[P, R]], AsyncFn[P, R]]:
        """Register a task fired at the wall-clock times of a cron expression.

        Args:
            expr: five fields (`minute hour day month weekday`) or six with a leading seconds
                field, e.g. "*/5 * * * *" or "*/10 * * * * *".
            tz: the time zone the expression is read in (an IANA name).
            scope: "app" (default): each fire time runs once across the app, claimed in Redis,
                so a failover neither skips nor doubles it; "instance": in every process.
            name: the cron's name (default: the function's name).

        Example:
            >>> @app.cron("0 3 * * *", tz="Europe/Paris")  # doctest: +SKIP
            ... async def nightly() -> None: ...
        """
        Cron.check(expr, tz, scope)  # a bad expression fails here, at import time

        def register(fn: AsyncFn[P, R]) -> AsyncFn[P, R]:
            _check_coroutine(fn, "@app.cron")
            self.crons.append(Cron(fn, expr, tz=tz, scope=scope, name=name))
            return fn

        return register

    def produces(self, stream: str, schema: type[msgspec.Struct] | None = None) -> None:
        """Declare that this app writes to `stream` (records of `schema`, or field maps), so its
        AsyncAPI document (`streammachine asyncapi`) has a `send` operation for it. Sending
        works without it; this only describes the app.

        Example:
            >>> app.produces("invoices", schema=Invoice)  # doctest: +SKIP
        """
        self.produced[stream] = schema

    def on_startup(self, fn: AsyncFn[P, R]) -> AsyncFn[P, R]:
        """Register a coroutine function run before agents and timers start."""
        self.startup_hooks.append(fn)
        return fn

    def on_shutdown(self, fn: AsyncFn[P, R]) -> AsyncFn[P, R]:
        """Register a coroutine function run after agents and timers stopped."""
        self.shutdown_hooks.append(fn)
        return fn

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
        from .consume.agent import LATENCY_BUCKETS_S

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
                    stats=AgentStats(**a.stats.as_dict()),
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
