"""What an aggregator gives out: its candles (all, completed, flushed) and its counters. A part of
`FastOHLC` (a mixin), kept in a module of its own; it reads the attributes declared below.

Example:
    >>> from streammachine.ohlc import FastOHLC
    >>> agg = FastOHLC(intervals=[60000])
    >>> agg.update_tick("A", 1.0, 1.0, 0)
    >>> [c.open for c in agg.get_candles("A", "1m")], agg.tick_count
    ([1.0], 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError
from .candle import Candle, candle_from_row, parse_interval
from .pykernel import LATE, LATE_BY_INTERVAL, NO_TIME, SKIPPED, TICKS, WATERMARK
from .store import CandleStore

__all__ = ["CandleOutput"]


class CandleOutput:
    """`FastOHLC`'s reads, flushes and counters."""

    _k: dict[int, int]
    _store: CandleStore
    _codes: dict[str | bytes, int]
    _names: list[str]
    _parse_skipped: int

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

    if TYPE_CHECKING:

        def _drain(self) -> None: ...  # FastOHLC's: apply the buffered ticks

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
        return [] if s < 0 else [candle_from_row(r) for r in self._store.candles(s, k)]

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
        return [candle_from_row(r) for r in self._store.candles(s, k, self._watermark(now_ms))]

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
        return [candle_from_row(r) for r in self._store.flush(s, k, self._watermark(now_ms))]

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
            (names[s], intervals[k], candle_from_row(row))
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
