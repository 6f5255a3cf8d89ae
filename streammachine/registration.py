"""Registration: the decorators that declare an app's agents, timers, crons and hooks
(`Registration` is a part of `App`, a mixin). Each checks its arguments at import time, so a
mistake fails when the module loads, not at the first message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import msgspec

from .codec import StructCodec
from .consume.agent import Agent
from .exceptions import ConfigError
from .schedule.cron import Cron
from .schedule.timer import Timer
from .settings import ConsumerConfig, Settings, TimerConfig
from .state.windowing import WindowAgent

if TYPE_CHECKING:
    from .connection import RedisConnection
    from .state.table import Table
    from .state.windows import Kind
    from .tracing import Tracing

__all__ = ["Registration"]

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


#: No IANA zone name is near this long; a longer `tz` is refused before the file system sees it.
_MAX_TZ_LEN = 64
#: How far ahead a cron expression must fire at least once (Feb 29 comes within 8 years).
_CRON_HORIZON_YEARS = 30


def _check_cron(expr: str, tz: object, scope: str) -> None:
    """Refuse a `tz` that is not a short string, and an expression that never fires (e.g.
    "0 0 31 2 *", Feb 31), which `Cron.check` lets through and the runner would fail on."""
    if not isinstance(tz, str) or not tz or len(tz) > _MAX_TZ_LEN:
        shown = repr(tz) if len(repr(tz)) <= 40 else repr(tz)[:40] + "..."
        raise ConfigError(
            f"tz {shown} is not a time zone: use an IANA name such as 'UTC' or 'Europe/Paris'"
        )
    try:
        fields, zone = Cron.check(expr, tz, scope)
    except OSError:  # a name the zoneinfo loader cannot even open (e.g. "../x")
        raise ConfigError(
            f"tz {tz!r} is not a time zone: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None
    from datetime import datetime

    from croniter import CroniterBadDateError, croniter

    it = croniter(
        expr,
        datetime.now(zone),
        second_at_beginning=fields == 6,
        max_years_between_matches=_CRON_HORIZON_YEARS,
    )
    try:
        it.get_next(float)
    except CroniterBadDateError:
        raise ConfigError(
            f"cron {expr!r} never fires (no such date within {_CRON_HORIZON_YEARS} years, e.g. "
            "February 30): check the day and month fields"
        ) from None


class Registration:
    """`App.agent`, `App.timer`, `App.cron`, `App.produces` and the lifecycle hooks."""

    settings: Settings
    agents: list[Agent]
    timers: list[Timer]
    crons: list[Cron]
    startup_hooks: list[Callable[[], Awaitable[Any]]]
    shutdown_hooks: list[Callable[[], Awaitable[Any]]]
    produced: dict[str, type[msgspec.Struct] | None]
    _packed: dict[str, StructCodec]
    _partitions: dict[str, Any]
    #: The tables declared with `table()`, by name (set by the first one).
    tables: dict[str, Table[Any]]

    # What an agent needs of its app (`consume.agent.Host`).
    name: str
    storage_namespace: str
    tracing: Tracing | None

    if TYPE_CHECKING:

        @property
        def redis(self) -> RedisConnection: ...

        def fail(self, reason: str, code: int = 1) -> None: ...

        def partitioned(self, stream: str, partitions: int) -> None: ...

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
        timeout_s: float | None = None,
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
            timeout_s: how long one handler call (one message, or one batch) may run; past it
                the call is cancelled and counts as a failed delivery (retried, dead-lettered
                after `max_deliveries`). Default `STREAMMACHINE_HANDLER_TIMEOUT_S` (300 s); 0
                means no limit. A handler that blocks the event loop cannot be cancelled.
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
            timeout_s=(s.handler_timeout_s if timeout_s is None else timeout_s) or None,
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

    def window(
        self,
        stream: str,
        group: str | None = None,
        *,
        kind: Kind,
        agg: Any = None,
        key: str | Callable[..., str] | None = None,
        time: str | Callable[..., int] | None = None,
        grace_s: float = 0.0,
        emit: Literal["update", "close"] = "close",
        to: str | None = None,
        name: str | None = None,
        partitions: int | None = None,
        count: int | None = None,
        lease_ms: int | None = None,
    ) -> WindowAgent:
        """Register event-time windows over `stream` (docs/windows.md): per key, an aggregate
        of each window's entries, written to `to` in the commit of the batch that changed or
        closed it, so each closed window is emitted exactly once.

        `kind`: `tumbling(size_s)`, `hopping(size_s, step_s)`, `sliding(size_s)` or
        `session(gap)`; `agg`: output field → aggregate (`count()`, `sum_(f)`, `min_(f)`,
        `max_(f)`, `mean(f)`, `first(f)`, `last(f)`, `reduce(fn)`) or one function (or decorate
        it); `key`/`time`: a field or a function of the Message (time in ms; None: the entry id's
        time); entries older than the watermark minus `grace_s` go to `<stream>:late`; `emit`:
        "close" (final values) or "update"; `to`: the output (default `<stream>:<name>`);
        `partitions`: one owner and watermark per partition. All in docs/windows.md.

        Example:
            >>> from streammachine.windows import tumbling, count, sum_
            >>> app.window("trades", "w", kind=tumbling(60), key="symbol",  # doctest: +SKIP
            ...            agg={"n": count(), "volume": sum_("qty")}, to="volume_1m")
        """
        group = group or self.settings.default_group
        name = name or group
        lease = 5000 if lease_ms is None else lease_ms
        window = WindowAgent(
            stream, group=group, name=name, kind=kind, agg=agg, key=key, time=time,
            grace_s=grace_s, emit=emit, to=to,
        )  # fmt: skip
        self.agent(
            stream, group, batch=True, count=count, takeover=True, claim_idle_ms=lease,
            block_ms=min(self.settings.block_ms, max(10, lease // 2)), name=name, exclusive=not partitions, partitions=partitions, lease_ms=lease,
        )(window.handle)  # fmt: skip
        self.agents[-1].on_owned = window.on_owned
        return window

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
        _check_cron(expr, tz, scope)  # a bad expression fails here, at import time

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

    def table(
        self,
        name: str,
        *,
        default: Any = None,
        schema: Any = None,
        ttl_s: float | None = None,
        stream: str | None = None,
    ) -> Table[Any]:
        """Declare a table: keyed, typed state in Redis (see docs/stateful.md).

        Inside a handler its changes (`set`, `delete`, `incr`, `update`) ride in the batch's
        commit: applied exactly when the entry is acked, read-your-writes in the handler.

        Args:
            name: the table's name (letters, digits, `_`, `.`, `-`); one table per name.
            default: the value of a missing key, or a callable making one (`default=list`).
            schema: the values' type (a msgspec.Struct, int, float, dict[str, int], ...).
            ttl_s: retention: each key expires this long after its last change.
            stream: the stream whose agent changes the table: the table lives in its slot,
                and is partitioned with it when the agent has `partitions=`.

        Example:
            >>> counts = app.table("counts", default=0, schema=int, stream="clicks")  # doctest: +SKIP
        """
        from .state.table import Table

        tables: dict[str, Table[Any]] = self.__dict__.setdefault("tables", {})
        if name in tables:
            raise ConfigError(f"table {name!r} is declared twice: declare it once and share it")

        def partitions() -> int:
            spec = self._partitions.get(stream) if stream is not None else None
            return int(spec[0]) if spec else 0

        made: Table[Any] = Table(
            name, default=default, schema=schema, ttl_s=ttl_s, stream=stream,
            partitions=partitions, redis=lambda: self.redis,
        )  # fmt: skip
        tables[name] = made
        return made
