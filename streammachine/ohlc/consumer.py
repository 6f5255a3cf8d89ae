"""FastOHLCConsumer: candles from a tick stream, emitted to candle streams, crash-safe.

It consumes the tick stream as a batch agent (the raw entries parsed column by column) and, in
one atomic commit per batch (DESIGN.md "handler output"), acks the ticks, writes the candles they
completed to `<prefix>_<interval name>` (`candles_1m`, `candles_90s`, …) and writes a snapshot of
the aggregator (open candles, flushed-up-to marks) to `<prefix>:state:<group>`. After a crash the
next consumer restores that snapshot and redelivers only the ticks it does not contain: no candle
is lost, none is emitted twice.

The aggregator lives in one process at a time: a lease (`<prefix>:lease:<group>`, SET NX PX,
renewed while it runs) lets one consumer work while others wait as hot standbys; when the holder
dies, a standby takes over once the lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..exceptions import ConfigError
from .aggregator import FastOHLC, format_candle_for_redis, interval_name, parse_interval
from .ticks import TickFields

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ..app import App
    from ..message import Message

__all__ = ["FastOHLCConsumer"]

log = logging.getLogger("streammachine.ohlc")

# Renew or release the lease only while we still hold it.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


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
        price_field, volume_field, symbol_field: field names of a tick.
        timestamp_field: a tick's time field in ms; default: the entry id's time.
        emit_interval_s: how often `clock="wall"` completes candles by the wall clock.
        clock: "event" completes candles by the newest tick time seen (replays give the same
            candles); "wall" also completes them by the wall clock (live feeds that go quiet).
        grace_ms: how long after its end a candle waits for late ticks.
        app: the App whose Redis it uses; with `app=` it starts and stops with that app.
        count: ticks per read.
        lease_ms: how long the lease lasts without renewal (a standby waits this long).

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
        if emit_interval_s <= 0 or lease_ms < 100:
            raise ConfigError("emit_interval_s must be > 0 and lease_ms >= 100")
        self.input_stream = input_stream
        self.group = group
        self.fields = (price_field, volume_field, symbol_field, timestamp_field)
        self._names = TickFields(*self.fields)
        self.clock = clock
        self.emit_interval_s = emit_interval_s
        self.count = count
        self.lease_ms = lease_ms
        self.aggregator = FastOHLC([parse_interval(i) for i in intervals], grace_ms)
        self.outputs = {
            iv: f"{output_stream_prefix}_{interval_name(iv)}" for iv in self.aggregator.intervals
        }
        self.state_stream = f"{output_stream_prefix}:state:{group}"
        self.lease_key = f"{output_stream_prefix}:lease:{group}"
        self.emitted = 0
        self._outer = app
        self._token = secrets.token_hex(8)
        self._lock = anyio.Lock()
        self._saved = b""
        self._stop: anyio.Event | None = None
        self._inner: App | None = None
        self._done: anyio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        if app is not None:
            app.on_startup(self.start)
            app.on_shutdown(self.stop)

    def __repr__(self) -> str:
        return f"FastOHLCConsumer({self.input_stream!r} -> {sorted(self.outputs.values())})"

    @property
    def running(self) -> bool:
        """True while this consumer holds the lease and consumes."""
        started = self._inner.started if self._inner is not None else None
        return started is not None and started.is_set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start in the background: wait for the lease, restore the snapshot, consume.
        Returns at once; calling it twice does nothing."""
        if self._done is not None:
            return
        from ..app import App

        url = self._outer.redis.url if self._outer is not None else None
        inner = App(name=f"ohlc:{self.input_stream}", redis_url=url)
        inner.agent(
            self.input_stream,
            group=self.group,
            batch=True,
            count=self.count,
            # Only the lease holder consumes, so another consumer's entries are a dead one's:
            # take them first, in order, so no tick is handled after newer ones completed its
            # candle (it would count as late).
            takeover=True,
            claim_idle_ms=self.lease_ms,
            name=f"ohlc_{self.group}",
        )(self._handle)
        if self.clock == "wall":
            inner.timer(self.emit_interval_s, name="ohlc_wall_clock")(self._emit_by_wall_clock)
        self._inner, self._stop, self._done = inner, anyio.Event(), anyio.Event()
        # The lifetime is the caller's app, not this call: a task of our own, ended by stop().
        self._task = asyncio.get_running_loop().create_task(self._lifetime())

    async def stop(self) -> None:
        """Stop consuming (the last batch is committed), release the lease, wait until done."""
        if self._stop is None or self._done is None:
            return
        self._stop.set()
        if self._inner is not None:
            self._inner.request_stop()
        await self._done.wait()

    async def _lifetime(self) -> None:
        assert self._inner is not None and self._stop is not None and self._done is not None
        inner, stop = self._inner, self._stop
        try:
            await inner.redis.connect()
            if not await self._acquire(stop):
                return
            await self._restore()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, tg)
                await inner.run()
                tg.cancel_scope.cancel()
        except Exception:
            log.exception("the OHLC consumer of %s stopped", self.input_stream)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()
                await inner.aclose()
            self._done.set()

    # --- the lease ------------------------------------------------------------------------

    async def _acquire(self, stop: anyio.Event) -> bool:
        client = self._client()
        waiting = False
        while not stop.is_set():
            if await client.set(self.lease_key, self._token, nx=True, px=self.lease_ms):
                log.info("OHLC consumer of %s holds the lease", self.input_stream)
                return True
            if not waiting:
                waiting = True
                log.info("OHLC consumer of %s waits as a standby for the lease", self.input_stream)
            with anyio.move_on_after(self.lease_ms / 3000.0):
                await stop.wait()
        return False

    async def _renew(self, tg: TaskGroup) -> None:
        client = self._client()
        last = time.monotonic()
        while True:
            await anyio.sleep(self.lease_ms / 3000.0)
            try:
                held = await client.eval(_RENEW, 1, self.lease_key, self._token, self.lease_ms)  # type: ignore[misc]
                if held:
                    last = time.monotonic()
            except Exception:
                held = time.monotonic() - last < self.lease_ms / 2000.0
            if not held:
                # Another consumer may take over now: stop before it can start.
                log.error("lost the OHLC lease of %s: stopping this consumer", self.input_stream)
                assert self._inner is not None
                self._inner.request_stop(force=True)
                return

    async def _release(self) -> None:
        try:
            await self._client().eval(_RELEASE, 1, self.lease_key, self._token)  # type: ignore[misc]
        except Exception:
            log.debug("releasing the lease failed", exc_info=True)

    def _client(self) -> Any:
        assert self._inner is not None
        return self._inner.redis.client

    # --- candles --------------------------------------------------------------------------

    async def _restore(self) -> None:
        entries = await self._client().xrevrange(self.state_stream, count=1)
        if entries:
            fields = entries[0][1]
            # "zdata": compressed (this version); "data": as written by earlier versions.
            packed = fields.get(b"zdata")
            self.aggregator.restore(fields[b"data"] if packed is None else zlib.decompress(packed))
            log.info(
                "restored %d symbols of %s from %s",
                len(self.aggregator.symbols()), self.input_stream, self.state_stream,
            )  # fmt: skip
        self._saved = self.aggregator.snapshot()

    async def _handle(self, batch: list[Message]) -> None:
        """A batch of ticks: update, and hand completed candles and the new state to the commit."""
        async with self._lock:
            try:
                # The raw replies' ids and fields, parsed column by column (ohlc/ticks.py).
                self.aggregator._process_entries(
                    [m.key for m in batch], [m._fields for m in batch], self._names
                )
                completed = self.aggregator.flush_completed()
                await self._send(completed)
            except BaseException:
                # Not committed: these ticks come again, so forget what they did.
                self.aggregator.restore(self._saved)
                raise

    async def _send(self, completed: list[tuple[str, int, Any]]) -> None:
        inner = self._inner
        assert inner is not None
        for sym, iv, candle in completed:
            await inner.send(self.outputs[iv], format_candle_for_redis(candle, sym, iv))
        self._saved = self.aggregator.snapshot()
        await inner.send(self.state_stream, {"zdata": _compress(self._saved)}, maxlen=-1)
        self.emitted += len(completed)

    async def _emit_by_wall_clock(self) -> None:
        """clock="wall": complete candles by the wall clock; candles and state in one MULTI/EXEC."""
        async with self._lock:
            completed = self.aggregator.flush_completed(now_ms=int(time.time() * 1000))
            if not completed:
                return
            inner = self._inner
            assert inner is not None
            same_slot = inner.redis.same_slot([self.state_stream, *self.outputs.values()])
            try:
                async with inner.redis.client.pipeline(transaction=same_slot) as pipe:
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
