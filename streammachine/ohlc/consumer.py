"""FastOHLCConsumer: candles from a tick stream, emitted to candle streams, crash-safe.

It is an exclusive batch agent on the tick stream (`exclusive=True`: one consumer at a time
across every process and host, `consume/partitions.PartitionOwner`), registered on the user's
App, plus, with `clock="wall"`, an instance timer that completes candles by the wall clock in
the process that owns the stream. Started on its own (`start()` without `app=`), it runs the
same agent on an `AgentHost` (a connection and `send`, no App).

Each batch is one atomic commit (DESIGN.md "handler output"): the ticks' acks, the candles they
completed (to `<prefix>_<interval name>`: `candles_1m`, `candles_90s`, …) and a snapshot of the
aggregator (open candles, flushed-up-to marks) to `keys.ohlc(stream, group, "state")`. When a
process takes the stream over, it restores that snapshot first (once falling back to where
earlier versions kept it, `<prefix>:state:<group>`), then the dead owner's pending ticks in
order, then new ones: no candle is lost, none is emitted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio

from .. import keys
from ..consume.agent import Agent
from ..exceptions import ConfigError
from ..schedule.timer import Timer
from ..settings import MAX_LEASE_MS, ConsumerConfig, Settings, TimerConfig
from .aggregator import FastOHLC
from .candle import format_candle_for_redis, interval_name, parse_interval
from .standalone import AgentHost
from .ticks import TickFields

if TYPE_CHECKING:
    from ..app import App
    from ..consume.partitions import PartitionOwner
    from ..message import Message

__all__ = ["FastOHLCConsumer"]

log = logging.getLogger("streammachine.ohlc")


def _compress(snapshot: bytes) -> bytes:
    # The snapshot goes out with every batch: mostly zeros and alike timestamps, it shrinks about
    # tenfold at level 1 for a few tens of µs, far less than moving and storing it whole costs
    # the commit (bench_ohlc.py end to end).
    return zlib.compress(snapshot, 1)


class FastOHLCConsumer:
    """Consume ticks from `input_stream` and emit completed candles, exactly once.

    Args:
        input_stream: the tick stream (fields `symbol`, `price`, `volume`, optional timestamp).
        output_stream_prefix: candles go to `<prefix>_<interval name>`, e.g. `candles_1m`.
        intervals: candle lengths in ms or names ("1m", "90s").
        group: the consumer group on `input_stream`.
        price_field: a tick's price field.
        volume_field: a tick's volume field.
        symbol_field: a tick's symbol field.
        timestamp_field: a tick's time field in ms; default: the entry id's time.
        emit_interval_s: how often `clock="wall"` completes candles by the wall clock.
        clock: "event" completes candles by the newest tick time seen (replays give the same
            candles); "wall" also completes them by the wall clock (live feeds that go quiet).
        grace_ms: how long after its end a candle waits for late ticks.
        app: the App it registers on (an agent, and a timer for `clock="wall"`), so it runs and
            stops with that app; without one, `start()` and `stop()` run it.
        count: ticks per read.
        lease_ms: how long the ownership lease lasts without renewal (a standby waits this long
            for a holder that died).

    Example:
        >>> consumer = FastOHLCConsumer("ticks", intervals=[60000, 300000])
        >>> @app.on_startup  # doctest: +SKIP
        ... async def start() -> None:
        ...     await consumer.start()
    """

    def __init__(
        self,
        input_stream: str,
        output_stream_prefix: str = "candles",
        intervals: Sequence[int | str] = (60000, 300000),
        group: str = "ohlc_workers",
        price_field: str = "price",
        volume_field: str = "volume",
        symbol_field: str = "symbol",
        timestamp_field: str | None = None,
        emit_interval_s: float = 1.0,
        clock: Literal["event", "wall"] = "event",
        grace_ms: int = 0,
        *,
        app: App | None = None,
        count: int = 1000,
        lease_ms: int = 10_000,
    ) -> None:
        if clock not in ("event", "wall"):
            raise ConfigError(f"clock must be 'event' or 'wall', not {clock!r}")
        if emit_interval_s <= 0 or not 100 <= lease_ms <= MAX_LEASE_MS:
            raise ConfigError(
                f"emit_interval_s must be > 0 and lease_ms between 100 and {MAX_LEASE_MS}"
            )
        self.input_stream = input_stream
        self.group = group
        self.fields = (price_field, volume_field, symbol_field, timestamp_field)
        self._names = TickFields(*self.fields)
        self.clock = clock
        self.emit_interval_s = emit_interval_s
        self.count = count
        self.lease_ms = lease_ms
        settings = app.settings if app is not None else None
        ms = [parse_interval(i) for i in intervals]
        self.aggregator = FastOHLC(ms, grace_ms, settings=settings)
        self.outputs = {
            iv: f"{output_stream_prefix}_{interval_name(iv)}" for iv in self.aggregator.intervals
        }
        self.state_stream = keys.ohlc(input_stream, group, "state")
        #: Where earlier versions kept the snapshot: read when `state_stream` has none.
        self.legacy_state_stream = keys.ohlc_legacy_state(output_stream_prefix, group)
        self.emitted = 0
        self.name = f"ohlc:{input_stream}:{group}"
        self._lock = anyio.Lock()
        self._saved = b""
        #: What it sends through and reads with: the App, or its own AgentHost once started.
        self._host: App | AgentHost | None = app
        self._owner: PartitionOwner | None = None
        self._standalone = app is None
        self._done: anyio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        if app is not None:
            app.agent(input_stream, **self._agent_options())(self._handle)
            agent = next(a for a in app.agents if a.fn == self._handle)
            agent.on_owned = self._on_owned
            if clock == "wall":
                timer = app.timer(emit_interval_s, scope="instance", name=f"{self.name}:wall")
                timer(self._emit_by_wall_clock)

    def __repr__(self) -> str:
        return f"FastOHLCConsumer({self.input_stream!r} -> {sorted(self.outputs.values())})"

    def _agent_options(self) -> dict[str, Any]:
        # Owned by one process at a time, so another consumer's pending ticks are a dead
        # owner's: taken first, in order (no tick handled after newer ones completed its candle).
        return {
            "group": self.group,
            "batch": True,
            "count": self.count,
            "takeover": True,
            "claim_idle_ms": self.lease_ms,
            "name": self.name,
            "exclusive": True,
            "lease_ms": self.lease_ms,
        }

    @property
    def running(self) -> bool:
        """True while this process owns the tick stream (its snapshot restored) and consumes."""
        return self._owner is not None and self._owner.serving(0)

    # --- on its own -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start in the background, when made without `app=`: wait to own the stream, restore
        the snapshot, consume. Returns at once; calling it twice (or with `app=`) does nothing."""
        if not self._standalone or self._done is not None:
            return
        settings = Settings.current()  # as of now: the caller may set REDIS_URL after __init__
        stop = anyio.Event()
        host = AgentHost(self.name, settings, stop)
        cfg = self._agent_options()
        cfg.pop("batch")
        s = settings
        config = ConsumerConfig(
            stream=self.input_stream, block_ms=s.block_ms,
            claim_interval_ms=min(5000, max(100, self.lease_ms // 2)), **cfg,
        )  # fmt: skip
        # `Agent` is typed for an App; it uses only what an AgentHost has.
        agent = Agent(cast("App", host), self._handle, config, batch=True)
        agent.on_owned = self._on_owned
        self._host, self._done = host, anyio.Event()
        # The lifetime is the caller's app, not this call: a task of our own, ended by stop().
        self._task = asyncio.get_running_loop().create_task(self._lifetime(host, agent))

    async def stop(self) -> None:
        """Stop consuming (the last batch is committed), give up the stream, wait until done.
        With `app=` the app stops it; this does nothing."""
        if not isinstance(self._host, AgentHost) or self._done is None:
            return
        self._host.stop.set()
        await self._done.wait()

    async def _lifetime(self, host: AgentHost, agent: Agent) -> None:
        assert self._done is not None
        try:
            await host.redis.connect()
            await agent.prepare()
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.run, host.stop)
                if self.clock == "wall":
                    timer = TimerConfig(self.emit_interval_s, f"{self.name}:wall", "instance")
                    tg.start_soon(Timer(self._emit_by_wall_clock, timer).run, host.stop)
        except Exception:
            log.exception("the OHLC consumer of %s stopped", self.input_stream)
        finally:
            with anyio.CancelScope(shield=True):
                await host.redis.close()
            self._done.set()

    # --- candles --------------------------------------------------------------------------

    def _client(self) -> Any:
        assert self._host is not None
        return self._host.redis.client

    async def _on_owned(self, owner: PartitionOwner, index: int) -> None:
        """This process owns the stream now: restore the newest snapshot before any tick."""
        async with self._lock:
            self._owner = owner
            await self._restore()

    async def _restore(self) -> None:
        client = self._client()
        source = self.state_stream
        entries = await client.xrevrange(source, count=1)
        if not entries:
            # Once, on upgrade: the first commit writes the new key, which wins from then on.
            source = self.legacy_state_stream
            entries = await client.xrevrange(source, count=1)
        self.aggregator.clear()
        if entries:
            fields = entries[0][1]
            # "zdata": compressed (this version); "data": as written by earlier versions.
            packed, plain = fields.get(b"zdata"), fields.get(b"data")
            try:
                self.aggregator.restore(zlib.decompress(packed) if packed is not None else plain)
            except (zlib.error, TypeError, ConfigError) as exc:
                raise ConfigError(
                    f"the OHLC snapshot in {source!r} cannot be restored ({exc}); nothing is "
                    "consumed until it can (delete that stream to start over, which emits again "
                    "the candles of its open ticks)"
                ) from None
            log.info(
                "restored %d symbols of %s from %s",
                len(self.aggregator.symbols()), self.input_stream, source,
            )  # fmt: skip
        self._saved = self.aggregator.snapshot()

    async def _handle(self, batch: list[Message]) -> None:
        """A batch of ticks: update, and hand completed candles and the new state to the commit."""
        host = self._host
        assert host is not None
        async with self._lock:
            try:
                # The raw replies' ids and fields, parsed column by column (ohlc/ticks.py).
                self.aggregator._process_entries(
                    [m.key for m in batch], [m._fields for m in batch], self._names
                )
                completed = self.aggregator.flush_completed()
                for sym, iv, candle in completed:
                    await host.send(self.outputs[iv], format_candle_for_redis(candle, sym, iv))
                self._saved = self.aggregator.snapshot()
                state = {"zdata": _compress(self._saved)}
                await host.send(self.state_stream, state, maxlen=-1)  # exactly the newest
                self.emitted += len(completed)
            except BaseException:
                # Not committed: these ticks come again, so forget what they did.
                self.aggregator.restore(self._saved)
                raise

    async def _emit_by_wall_clock(self) -> None:
        """clock="wall": complete candles by the wall clock; candles and state in one MULTI/EXEC,
        only in the process that owns the stream."""
        async with self._lock:
            if not self.running:
                return
            completed = self.aggregator.flush_completed(now_ms=int(time.time() * 1000))
            if not completed:
                return
            host = self._host
            assert host is not None
            same_slot = host.redis.same_slot([self.state_stream, *self.outputs.values()])
            try:
                async with host.redis.client.pipeline(transaction=same_slot) as pipe:
                    for sym, iv, candle in completed:
                        pipe.xadd(self.outputs[iv], format_candle_for_redis(candle, sym, iv))  # type: ignore[arg-type]
                    snapshot = self.aggregator.snapshot()
                    state: dict[Any, Any] = {"zdata": _compress(snapshot)}
                    pipe.xadd(self.state_stream, state, maxlen=1, approximate=False)
                    await pipe.execute()
            except BaseException:
                self.aggregator.restore(self._saved)
                raise
            self._saved = snapshot
            self.emitted += len(completed)
