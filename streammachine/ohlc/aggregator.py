"""FastOHLC: candles per symbol and interval, from single ticks, NumPy arrays or stream replies.

Time is event time: a tick's candle starts at floor(timestamp_ms / interval) * interval. A candle
is completed once the watermark (the newest tick time seen, or the `now_ms` a caller passes)
reaches its end plus `grace_ms`. Flushing removes completed candles; a later tick that falls
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

import contextlib
import sys
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np

from ..exceptions import ConfigError, SerializationError
from .kernel import (
    LATE,
    LATE_BY_INTERVAL,
    NO_TIME,
    SKIPPED,
    TICKS,
    WATERMARK,
    CandleStore,
    readonly,
)
from .ticks import TickFields, split_entries, tick_columns, ticks_one_by_one

__all__ = [
    "Candle",
    "FastOHLC",
    "create_ohlc_aggregator",
    "format_candle_for_redis",
    "interval_name",
    "parse_interval",
    "parse_stream_id_timestamp",
]

_BUFFER_TICKS = 4096  # single ticks wait here, then reach the kernel as one batch


class Candle(NamedTuple):
    """One candle; `timestamp_ms` is the time of its newest tick.

    Example:
        >>> Candle(60000, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 119000).close
        1.5
    """

    candle_start_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    timestamp_ms: int


def _candle(row: tuple[Any, ...]) -> Candle:
    start, _first, last, count, o, h, lo, c, v = row
    return Candle(start, o, h, lo, c, v, count, last)


class FastOHLC:
    """Candles for many symbols and intervals, kept in NumPy arrays and updated by a Numba kernel
    (or its pure-Python twin, which gives identical candles).

    Args:
        intervals: candle lengths in ms (or names such as "1m", "90s"), at least one.
        grace_ms: how long after its end a candle stays open to ticks before it is completed.
        jit: True for the compiled kernel, False for pure Python, None to pick: Numba unless it
            is missing or `STREAMMACHINE_DISABLE_JIT=1`.

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
    ) -> None:
        ms = tuple(parse_interval(i) for i in intervals)
        if not ms or len(set(ms)) != len(ms):
            raise ConfigError(f"intervals must be distinct lengths, at least one; got {ms}")
        if isinstance(grace_ms, bool) or not isinstance(grace_ms, int) or grace_ms < 0:
            raise ConfigError(f"grace_ms must be an int >= 0, got {grace_ms!r}")
        self._k = {iv: k for k, iv in enumerate(ms)}
        self._store = CandleStore(ms, grace_ms, jit)
        self.clear()

    @property
    def intervals(self) -> tuple[int, ...]:
        """The intervals in ms, in the order given."""
        return self._store.intervals_ms

    @property
    def grace_ms(self) -> int:
        """How long after its end a candle waits for late ticks before it is completed."""
        return self._store.grace_ms

    @property
    def jit(self) -> bool:
        """True when this aggregator runs the Numba-compiled kernel."""
        return self._store.kernels.jit

    def clear(self) -> None:
        """Forget every candle, symbol and counter."""
        self._store.reset()
        self._names: list[str] = []
        self._codes: dict[str | bytes, int] = {}
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
        code = self._codes.get(symbol)
        return self._register(symbol) if code is None else code

    def _register(self, symbol: str | bytes) -> int:
        if isinstance(symbol, bytes):
            name = symbol.decode("utf-8", "surrogateescape")
        elif isinstance(symbol, str):
            name = symbol
        else:
            raise ConfigError(f"a symbol must be str or bytes, got {type(symbol).__name__}")
        code = self._codes.get(name)
        if code is None:
            code = len(self._names)
            self._names.append(name)
            self._store.ensure_symbols(code + 1)
            self._codes[name] = code
            with contextlib.suppress(UnicodeEncodeError):  # lone surrogates have no bytes
                self._codes[name.encode("utf-8", "surrogateescape")] = code
        self._codes[symbol] = code
        return code

    def symbol_codes(self, symbols: Sequence[str | bytes] | np.ndarray) -> np.ndarray:
        """The int codes of many symbols (new ones registered), as an int64 array.

        Example:
            >>> FastOHLC().symbol_codes(["A", "B", "A"]).tolist()
            [0, 1, 0]
        """
        codes, symmap = self._local_codes(np.asarray(symbols))
        return codes if symmap is None else symmap[codes]

    def _local_codes(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes of str/bytes symbols, and the map from them to this aggregator's codes (None
        when they are this aggregator's codes already)."""
        arr = np.ascontiguousarray(arr).ravel()
        if len(arr) == 0:
            return np.zeros(0, np.int64), None
        if arr.dtype.kind in "US" and self.jit:
            # Fixed-width strings viewed as rows of integers: hashed by the kernel, no str objects.
            wide = arr.dtype.kind == "U"
            rows = arr.view(np.uint32 if wide else np.uint8).reshape(len(arr), -1)
            local, firsts = self._store.kernels.factorize_rows(readonly(rows))
            return local, self._symmap(arr[firsts].tolist())
        if arr.dtype.kind not in "USO":
            raise ConfigError(f"symbols must be str or bytes (or int codes); got dtype {arr.dtype}")
        pd = sys.modules.get("pandas")
        if pd is not None:  # its C hash table maps twice as fast as a dict; used only if loaded
            # With the NA sentinel: pandas then skips a null scan that costs more than hashing.
            local, uniques = pd.factorize(arr)
            if len(local) and local.min() < 0:
                bad = arr[int(np.argmax(local < 0))]
                raise ConfigError(f"a symbol must be str or bytes, got {type(bad).__name__}")
            return local.astype(np.int64, copy=False), self._symmap(list(uniques))
        for name in dict.fromkeys(arr.tolist()):
            self.symbol_code(name)
        return np.fromiter(map(self._codes.__getitem__, arr.tolist()), np.int64, len(arr)), None

    def _symmap(self, uniques: list[Any]) -> np.ndarray:
        return np.array([self.symbol_code(u) for u in uniques], np.int64)

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
        codes = None if cols is None else self._raw_symbol_codes(cols.symbols)
        if cols is None or codes is None:
            b = self._b_ts.append, self._b_px.append, self._b_vol.append
            self._parse_skipped += ticks_one_by_one(
                ids, fields, names, self.symbol_code, b, self._b_sym.append
            )
            self._drain()
        else:
            self._store.apply(self._identity(), codes, cols.prices, cols.volumes, cols.times)
        return int(self._store.meta[TICKS]) - before

    def _raw_symbol_codes(self, symbols: list[Any]) -> np.ndarray | None:
        """Codes of symbols as they came, new ones registered in order; None if one is not a
        symbol (the entry-by-entry path then skips that entry alone)."""
        try:
            get = self._codes.get
            codes = list(map(get, symbols))
            if None in codes:
                for symbol in dict.fromkeys(symbols):
                    if isinstance(symbol, str | bytes) and get(symbol) is None:
                        self._register(symbol)
                codes = list(map(get, symbols))
                if None in codes:
                    return None
        except TypeError:  # unhashable
            return None
        return np.array(codes, np.int64)

    # -- output ------------------------------------------------------------------------------

    def _sk(self, symbol: str | bytes, interval: int | str) -> tuple[int, int]:
        """(symbol code or -1, interval index), after applying buffered ticks."""
        k = self._k.get(parse_interval(interval))
        if k is None:
            raise ConfigError(
                f"interval {interval!r} is not one of this aggregator's intervals "
                f"{list(self.intervals)} (ms); set them with FastOHLC(intervals=[...])"
            )
        self._drain()
        code = self._codes.get(symbol)
        return (-1 if code is None else code), k

    def _watermark(self, now_ms: int | None) -> int:
        return int(self._store.meta[WATERMARK]) if now_ms is None else int(now_ms)

    def get_candles(self, symbol: str | bytes, interval: int | str) -> list[Candle]:
        """Every candle held for `symbol` and `interval` (ms), oldest first; [] for an unknown
        symbol.

        Raises:
            ConfigError: the interval is not one of this aggregator's (a ValueError).

        Example:
            >>> FastOHLC(intervals=[60000]).get_candles("NONE", 60000)
            []
        """
        s, k = self._sk(symbol, interval)
        return [] if s < 0 else [_candle(r) for r in self._store.candles(s, k)]

    def get_completed_candles(
        self, symbol: str | bytes, interval: int | str, now_ms: int | None = None
    ) -> list[Candle]:
        """The candles whose end + `grace_ms` <= the watermark (`now_ms` if given), oldest first.

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> agg.update_tick("A", 1.0, 1.0, 0)
            >>> agg.get_completed_candles("A", 60000)
            []
            >>> agg.get_completed_candles("A", 60000, now_ms=60000)[0].candle_start_ms
            0
        """
        s, k = self._sk(symbol, interval)
        if s < 0:
            return []
        return [_candle(r) for r in self._store.candles(s, k, self._watermark(now_ms))]

    def flush_interval(
        self, symbol: str | bytes, interval: int | str, now_ms: int | None = None
    ) -> list[Candle]:
        """Remove the completed candles of `symbol` and `interval` and return them, oldest first.
        A later tick before the end of the newest of them is late: counted and dropped.

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> agg.update_tick("A", 1.0, 1.0, 0)
            >>> len(agg.flush_interval("A", 60000, now_ms=60000)), agg.get_candles("A", 60000)
            (1, [])
        """
        s, k = self._sk(symbol, interval)
        if s < 0:
            return []
        return [_candle(r) for r in self._store.flush(s, k, self._watermark(now_ms))]

    def flush_completed(self, now_ms: int | None = None) -> list[tuple[str, int, Candle]]:
        """`flush_interval` for every symbol and interval: (symbol, interval_ms, candle) tuples,
        by interval, then symbol, then start.

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> agg.update_tick("A", 1.0, 1.0, 0)
            >>> agg.flush_completed(now_ms=60000)[0][:2]
            ('A', 60000)
        """
        self._drain()
        wm = self._watermark(now_ms)
        store, names, intervals = self._store, self._names, self.intervals
        return [
            (names[s], intervals[k], _candle(row))
            for k, s in store.flushable(len(names), wm)
            for row in store.flush(s, k, wm)
        ]

    def get_candles_as_dicts(
        self, symbol: str | bytes, interval: int | str
    ) -> list[dict[str, Any]]:
        """`get_candles` as dicts keyed by the Candle field names.

        Example:
            >>> agg = FastOHLC(intervals=[60000])
            >>> agg.update_tick("A", 1.0, 2.0, 5)
            >>> agg.get_candles_as_dicts("A", 60000)[0]["volume"]
            2.0
        """
        return [c._asdict() for c in self.get_candles(symbol, interval)]

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
        st = self._store
        arrays = {n: getattr(st, n) for n in ("ci", "cf", "free", "sk", "meta")}
        return msgspec.msgpack.encode(
            {
                "v": 1,
                "intervals": list(self.intervals),
                "grace_ms": self.grace_ms,
                "names": self._names,
                "parse_skipped": self._parse_skipped,
                "arrays": {n: [a.dtype.str, list(a.shape), a.tobytes()] for n, a in arrays.items()},
            }
        )

    def restore(self, data: bytes) -> None:
        """Replace this aggregator's state with a `snapshot`.

        Raises:
            ConfigError: the snapshot is of other intervals or grace, or not a snapshot.
        """
        try:
            state = msgspec.msgpack.decode(data)
            intervals, grace, names = state["intervals"], state["grace_ms"], state["names"]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"not an OHLC snapshot: {exc}") from None
        if tuple(intervals) != self.intervals or grace != self.grace_ms:
            raise ConfigError(
                f"the snapshot is of intervals {intervals} and grace {grace} ms, not "
                f"{list(self.intervals)} and {self.grace_ms} ms: use the same settings, or start "
                "from scratch with a new state stream"
            )
        self.clear()
        for name in names:
            self._register(name)
        self._parse_skipped = int(state["parse_skipped"])
        for n, (dtype, shape, raw) in state["arrays"].items():
            setattr(self._store, n, np.frombuffer(raw, np.dtype(dtype)).reshape(shape).copy())

    def _meta(self, index: int) -> int:
        self._drain()
        return int(self._store.meta[index])

    @property
    def tick_count(self) -> int:
        """Ticks taken since `clear()`, late ones included, skipped ones not."""
        return self._meta(TICKS)

    @property
    def late_tick_count(self) -> int:
        """Ticks dropped from at least one interval because their candle was already flushed."""
        return self._meta(LATE)

    @property
    def skipped_count(self) -> int:
        """Ticks left out: no parsable price, symbol or time, or a non-finite price or volume."""
        return self._meta(SKIPPED) + self._parse_skipped

    @property
    def watermark_ms(self) -> int | None:
        """The newest tick time seen; None before the first tick."""
        wm = self._meta(WATERMARK)
        return None if wm == NO_TIME else wm

    def stats(self) -> dict[str, Any]:
        """Counters and sizes.

        Example:
            >>> FastOHLC(intervals=[60000]).stats()["candles"]
            0
        """
        store, names = self._store, range(len(self._names))
        return {
            "jit": self.jit,
            "intervals_ms": list(self.intervals),
            "grace_ms": self.grace_ms,
            "symbols": len(self._names),
            "tick_count": self.tick_count,
            "late_tick_count": self.late_tick_count,
            "skipped_count": self.skipped_count,
            "watermark_ms": self.watermark_ms,
            "candles": store.n_candles,
            "candles_by_interval": {
                iv: sum(len(store.slots(s, k)) for s in names)
                for k, iv in enumerate(self.intervals)
            },
            "late_by_interval": {
                iv: int(store.meta[LATE_BY_INTERVAL + k]) for k, iv in enumerate(self.intervals)
            },
        }


def create_ohlc_aggregator(intervals: Sequence[int | str] | None = None) -> FastOHLC:
    """A FastOHLC with the given intervals, by default 1 and 5 minutes.

    Example:
        >>> create_ohlc_aggregator().intervals
        (60000, 300000)
    """
    return FastOHLC(intervals=(60000, 300000) if intervals is None else intervals)


# -- names, ids and replies ----------------------------------------------------------------------

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def interval_name(interval_ms: int) -> str:
    """A short name, one per length: the count of the largest unit that divides it.

    Example:
        >>> [interval_name(ms) for ms in (60000, 90000, 3600000, 86400000, 1500)]
        ['1m', '90s', '1h', '1d', '1500ms']
    """
    ms = parse_interval(interval_ms)
    return next(f"{ms // size}{unit}" for unit, size in _UNITS if ms % size == 0)


def parse_interval(interval: int | str) -> int:
    """An interval in ms, from ms or a name: "1500ms", "90s", "1m", "1h", "1d" or "60000".

    Example:
        >>> parse_interval("5m"), parse_interval(60000)
        (300000, 60000)
    """
    ms = 0
    if isinstance(interval, int) and not isinstance(interval, bool):
        ms = interval
    elif isinstance(interval, str):
        text = interval.strip().lower()
        unit = next(
            (u for u, _ in sorted(_UNITS, key=lambda u: -len(u[0])) if text.endswith(u)), ""
        )
        number = text[: len(text) - len(unit)]
        if number.isascii() and number.isdigit():
            ms = int(number) * dict(_UNITS).get(unit, 1)
    if ms <= 0:
        raise ConfigError(
            f"interval {interval!r} is not a positive length; give ms (60000) or a name such as "
            "1500ms, 90s, 1m, 1h, 1d"
        )
    return ms


def parse_stream_id_timestamp(stream_id: str | bytes) -> int:
    """The milliseconds part of a Redis stream id.

    Raises:
        SerializationError: not an id `<ms>-<seq>` or `<ms>` (a ValueError).

    Example:
        >>> parse_stream_id_timestamp("1638360000000-0")
        1638360000000
    """
    text = stream_id.decode("latin-1") if isinstance(stream_id, bytes) else str(stream_id)
    ms, dash, seq = text.partition("-")
    if not all(part.isascii() and part.isdigit() for part in ((ms, seq) if dash else (ms,))):
        raise SerializationError(
            f"{stream_id!r} is not a Redis stream id such as '1638360000000-0'"
        )
    return int(ms)


def format_candle_for_redis(candle: Any, symbol: str | bytes, interval_ms: int) -> dict[str, str]:
    """A candle (a Candle, or a dict of its fields) as str fields for XADD.

    Example:
        >>> c = Candle(60000, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 119000)
        >>> format_candle_for_redis(c, b"AAPL", 60000)["close"]
        '1.5'
    """
    values = candle if isinstance(candle, dict) else candle._asdict()
    name = symbol.decode("utf-8", "replace") if isinstance(symbol, bytes) else str(symbol)
    out = {"symbol": name, "interval_ms": str(int(interval_ms))}
    out.update((field, str(values[field])) for field in Candle._fields)
    return out
