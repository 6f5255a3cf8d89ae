"""FastOHLC: candles per symbol and interval, from single ticks, NumPy arrays or stream replies.

Time is event time, and a candle is a tumbling window of the window engine (`state/windows.py`,
docs/ohlc.md "Semantics"): a tick's candle starts at floor(timestamp_ms / interval) * interval. A
candle is completed once the watermark (the newest tick time seen, or the `now_ms` a caller
passes) reaches its end plus `grace_ms`. Flushing removes completed candles; a later tick that falls
before the end of the newest flushed candle is late: counted in `late_tick_count` and dropped, so
nothing downstream sees a candle twice.

Example:
    >>> agg = FastOHLC(intervals=[60000])
    >>> agg.update_tick("AAPL", 150.0, 10.0, 1_638_360_000_000)
    >>> agg.update_tick(b"AAPL", 151.0, 5.0, 1_638_360_030_000)
    >>> [(c.open, c.high, c.close, c.volume) for c in agg.get_candles("AAPL", 60000)]
    [(150.0, 151.0, 151.0, 15.0)]
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from ..settings import Settings
from . import snapshot as snapshots
from .candle import parse_interval
from .kernel import jit_active
from .output import CandleOutput
from .pykernel import TICKS
from .store import CandleStore
from .symbols import SymbolTable
from .ticks import TickFields, split_entries, tick_columns, ticks_one_by_one

__all__ = ["FastOHLC", "create_ohlc_aggregator"]

_BUFFER_TICKS = 4096  # single ticks wait here, then reach the kernel as one batch


class FastOHLC(CandleOutput):
    """Candles for many symbols and intervals, kept in NumPy arrays and updated by a Numba kernel
    (or its pure-Python twin, which gives identical candles).

    Args:
        intervals: candle lengths in ms (or names such as "1m", "90s"), at least one.
        grace_ms: how long after its end a candle stays open to ticks before it is completed.
        jit: True for the compiled kernel, False for pure Python, None to pick: Numba unless it
            is missing or the settings disable it (`Settings.disable_jit`, from
            `STREAMMACHINE_DISABLE_JIT=1`), read once, here.
        settings: the settings that pick the kernel when `jit` is None (default: the process's,
            `Settings.current()`; an App passes its own).

    Symbols are str or bytes; b"AAPL" and "AAPL" are one symbol. Not thread-safe.

    Example:
        >>> agg = FastOHLC(intervals=[60000, 300000], grace_ms=0)
        >>> agg.update_tick(b"AAPL", 150.25, 1000.0, 1638360000000)
        >>> agg.get_candles(b"AAPL", 60000)[0].trade_count
        1
    """

    def __init__(
        self,
        intervals: Sequence[int | str] = (60000, 300000),
        grace_ms: int = 0,
        *,
        jit: bool | None = None,
        settings: Settings | None = None,
    ) -> None:
        ms = tuple(parse_interval(i) for i in intervals)
        if not ms or len(set(ms)) != len(ms):
            raise ConfigError(f"intervals must be distinct lengths, at least one; got {ms}")
        if isinstance(grace_ms, bool) or not isinstance(grace_ms, int) or grace_ms < 0:
            raise ConfigError(f"grace_ms must be an int >= 0, got {grace_ms!r}")
        self._k = {iv: k for k, iv in enumerate(ms)}
        self._store = CandleStore(ms, grace_ms, jit_active(settings) if jit is None else jit)
        self.clear()

    def clear(self) -> None:
        """Forget every candle, symbol and counter."""
        self._store.reset()
        self._symbols = SymbolTable(on_new=self._store.ensure_symbols)
        self._names = self._symbols.names
        self._codes = self._symbols.codes  # read per tick: one attribute, not two
        self._register = self._symbols.register
        self._parse_skipped = 0
        self._ident = np.arange(64, dtype=np.int64)
        self._new_buffers()

    def _new_buffers(self) -> None:
        self._b_sym: array[int] = array("q")
        self._b_px: array[float] = array("d")
        self._b_vol: array[float] = array("d")
        self._b_ts: array[int] = array("q")

    # -- symbols -----------------------------------------------------------------------------

    def symbol_code(self, symbol: str | bytes) -> int:
        """The int code of `symbol` for `update_arrays`, registered if new.

        Example:
            >>> FastOHLC().symbol_code("AAPL")
            0
        """
        return self._symbols.code(symbol)

    def symbol_codes(self, symbols: Sequence[str | bytes] | np.ndarray) -> np.ndarray:
        """The int codes of many symbols (new ones registered), as an int64 array.

        Example:
            >>> FastOHLC().symbol_codes(["A", "B", "A"]).tolist()
            [0, 1, 0]
        """
        codes, symmap = self._local_codes(np.asarray(symbols))
        return codes if symmap is None else symmap[codes]

    def _local_codes(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        factorize = self._store.kernels.factorize_rows if self.jit else None
        return self._symbols.local_codes(arr, factorize)

    def symbols(self) -> list[str]:
        """Every symbol seen since `clear()`, in order of first appearance."""
        return list(self._names)

    # -- input -------------------------------------------------------------------------------

    def update_tick(
        self, symbol: str | bytes, price: float, volume: float, timestamp_ms: int
    ) -> None:
        """Add one trade. It waits in a small buffer that every read (and every batch) applies
        first, in arrival order: cheaper than one kernel call per tick, same candles.

        A non-finite price or volume is skipped and counted in `skipped_count`.

        Example:
            >>> agg = FastOHLC()
            >>> agg.update_tick(b"AAPL", 150.25, 1000.0, 1638360000000)
            >>> agg.tick_count
            1
        """
        code = self._codes.get(symbol)
        if code is None:
            code = self._register(symbol)
        try:
            self._b_ts.append(timestamp_ms)
            self._b_px.append(price)
            self._b_vol.append(volume)
        except (TypeError, OverflowError) as exc:
            n = len(self._b_sym)
            del self._b_ts[n:], self._b_px[n:], self._b_vol[n:]
            raise ConfigError(
                f"update_tick takes a float price and volume and an int timestamp_ms; got "
                f"{price!r}, {volume!r}, {timestamp_ms!r} ({exc})"
            ) from None
        self._b_sym.append(code)
        if len(self._b_sym) >= _BUFFER_TICKS:
            self._drain()

    def _drain(self) -> None:
        """Apply the buffered ticks."""
        if self._b_sym:
            sym, px, vol, ts = self._b_sym, self._b_px, self._b_vol, self._b_ts
            self._new_buffers()  # new ones: NumPy views of the old may outlive this call
            self._store.apply(
                self._identity(),
                np.frombuffer(sym, np.int64),
                np.frombuffer(px, np.float64),
                np.frombuffer(vol, np.float64),
                np.frombuffer(ts, np.int64),
            )

    def _identity(self) -> np.ndarray:
        """The map from this aggregator's codes to themselves (grown, not rebuilt, per call)."""
        n = len(self._names)
        if len(self._ident) < n:
            self._ident = np.arange(max(n, 2 * len(self._ident)), dtype=np.int64)
        return self._ident[:n]

    def update_arrays(self, symbols: Any, prices: Any, volumes: Any, timestamps_ms: Any) -> int:
        """Add many trades, in array order; return how many were taken (not skipped).

        Args:
            symbols: int codes from `symbol_code`/`symbol_codes`, or str or bytes symbols.
            prices: floats.
            volumes: floats.
            timestamps_ms: int milliseconds, or datetime64.

        Raises:
            ConfigError: lengths differ, float timestamps, or a code that was never handed out
                (the ticks before it are applied).

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> agg.update_arrays(np.array(["A", "B"]), [1.0, 2.0], [1.0, 1.0], [0, 1])
            2
        """
        px = np.ascontiguousarray(prices, dtype=np.float64)
        vol = np.ascontiguousarray(volumes, dtype=np.float64)
        ts = np.asarray(timestamps_ms)
        if ts.dtype.kind == "M":
            ts = ts.astype("datetime64[ms]").view(np.int64)
        elif ts.dtype.kind not in "iu":
            raise ConfigError(f"timestamps_ms must be integer milliseconds, not {ts.dtype}")
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        sym = np.asarray(symbols)
        if not (sym.ndim == px.ndim == vol.ndim == ts.ndim == 1) or not (
            len(sym) == len(px) == len(vol) == len(ts)
        ):
            raise ConfigError(
                "update_arrays takes four 1-D arrays of one length; got shapes "
                f"{sym.shape}, {px.shape}, {vol.shape}, {ts.shape}"
            )
        if sym.dtype.kind in "iu":
            codes, symmap = np.ascontiguousarray(sym, dtype=np.int64), None
        else:
            codes, symmap = self._local_codes(sym)
        self._drain()
        before = int(self._store.meta[TICKS])
        self._store.apply(self._identity() if symmap is None else symmap, codes, px, vol, ts)
        return int(self._store.meta[TICKS]) - before

    def process_stream_batch(
        self,
        entries: Any,
        price_field: str = "price",
        volume_field: str = "volume",
        symbol_field: str = "symbol",
        timestamp_field: str | None = None,
    ) -> int:
        """Add the ticks of an XREAD/XREADGROUP (or XRANGE) reply; return how many were taken.

        Takes RESP2 (`[[stream, [(id, fields), ...]], ...]`) and RESP3 (`{stream: entries}`)
        replies, fields as a dict or a flat `[k, v, ...]` list, bytes or str. A tick's time is
        its `timestamp_field` (int ms) when given, else its entry id's time. An entry without
        a parsable price, symbol or time, or with a bad volume, is left out and counted in
        `skipped_count`; a missing volume is 0.

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> reply = [[b"ticks", [(b"1638360000000-0", {b"symbol": b"A", b"price": b"1.5"})]]]
            >>> agg.process_stream_batch(reply)
            1
        """
        ids, fields = split_entries(entries)
        names = TickFields(price_field, volume_field, symbol_field, timestamp_field)
        return self._process_entries(ids, fields, names)

    def _process_entries(self, ids: list[Any], fields: list[Any], names: TickFields) -> int:
        """`process_stream_batch` of entries given as their ids and their fields."""
        self._drain()
        before = int(self._store.meta[TICKS])
        cols = tick_columns(ids, fields, names)
        codes = None if cols is None else self._symbols.raw_codes(cols.symbols)
        if cols is None or codes is None:
            b = self._b_ts.append, self._b_px.append, self._b_vol.append
            self._parse_skipped += ticks_one_by_one(
                ids, fields, names, self.symbol_code, b, self._b_sym.append
            )
            self._drain()
        else:
            self._store.apply(self._identity(), codes, cols.prices, cols.volumes, cols.times)
        return int(self._store.meta[TICKS]) - before

    # -- state --------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Every open candle, flushed-up-to mark, symbol and counter, as bytes (msgpack), for
        `restore` after a restart.

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> agg.update_tick("A", 1.0, 1.0, 0)
            >>> twin = FastOHLC(intervals=[60000])
            >>> twin.restore(agg.snapshot())
            >>> twin.get_candles("A", 60000) == agg.get_candles("A", 60000)
            True
        """
        self._drain()
        return snapshots.encode(self._store, self._names, self._parse_skipped)

    def restore(self, data: bytes) -> None:
        """Replace this aggregator's state with a `snapshot`.

        Raises:
            ConfigError: the snapshot is of other intervals or grace, or not a snapshot (it is
                checked whole before anything is replaced).
        """
        state = snapshots.decode(data, self.intervals, self.grace_ms)
        self.clear()
        for name in state.names:
            self._register(name)
        self._parse_skipped = state.parse_skipped
        for n, a in state.arrays.items():
            setattr(self._store, n, a)


def create_ohlc_aggregator(intervals: Sequence[int | str] | None = None) -> FastOHLC:
    """A FastOHLC with the given intervals, by default 1 and 5 minutes.

    Example:
        >>> create_ohlc_aggregator().intervals
        (60000, 300000)
    """
    return FastOHLC(intervals=(60000, 300000) if intervals is None else intervals)
