"""The candle store of one aggregator: the kernel's arrays, their growth, applying ticks to them,
and reading, completing and flushing a (symbol, interval)'s candles (layout: `pykernel`).

A candle is a tumbling window: it is completed when the window engine's `closed` says so at the
engine's watermark (`watermark_of`: the newest tick time, or `now_ms`, minus the grace), and
flushing it moves its (symbol, interval)'s mark past it, which makes later ticks for it late.

Example:
    >>> store = CandleStore((60000,), grace_ms=0, jit=False)
    >>> store.n_candles
    0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exceptions import ConfigError
from ..state.windows import closed, watermark_of
from .kernel import kernels, readonly
from .pykernel import (
    COUNT,
    DONE,
    FLUSHED_END,
    HEAD,
    LATE_BY_INTERVAL,
    N_FREE,
    N_USED,
    NEED_SLOTS,
    NO_TIME,
    PREV,
    START,
    STATUS,
    WATERMARK,
)

__all__ = ["CandleStore"]


class CandleStore:
    """The candle pool of one aggregator: arrays, their growth, and walking a (symbol, interval).

    Example:
        >>> store = CandleStore((60000,), grace_ms=0, jit=False)
        >>> store.ensure_symbols(1)
        >>> one = np.ones(1)
        >>> store.apply(np.arange(1), np.zeros(1, np.int64), one, one, np.array([61000]))
        >>> store.candles(0, 0)
        [(60000, 61000, 61000, 1, 1.0, 1.0, 1.0, 1.0, 1.0)]
    """

    def __init__(self, intervals_ms: tuple[int, ...], grace_ms: int, jit: bool | None) -> None:
        self.kernels = kernels(jit)
        self.intervals_ms = intervals_ms
        self.grace_ms = grace_ms
        self.reset()

    def reset(self) -> None:
        """Forget every candle and counter."""
        nk = len(self.intervals_ms)
        self.ci = np.zeros((256, 5), np.int64)
        self.cf = np.zeros((256, 5), np.float64)
        self.free = np.zeros(256, np.int64)
        self.sk = np.empty((0, nk, 2), np.int64)
        self.meta = np.zeros(LATE_BY_INTERVAL + nk, np.int64)
        self.meta[WATERMARK] = NO_TIME
        self.ensure_symbols(16)

    def ensure_symbols(self, n: int) -> None:
        """Make room for symbol codes `0..n-1`."""
        have = self.sk.shape[0]
        if n > have:
            grown = np.empty((max(n, 2 * have), len(self.intervals_ms), 2), np.int64)
            grown[:have] = self.sk
            grown[have:, :, HEAD] = -1
            grown[have:, :, FLUSHED_END] = NO_TIME
            self.sk = grown

    def _grow(self) -> None:
        cap = self.ci.shape[0]
        self.ci = np.concatenate((self.ci, np.zeros_like(self.ci)))
        self.cf = np.concatenate((self.cf, np.zeros_like(self.cf)))
        self.free = np.concatenate((self.free, np.zeros(cap, np.int64)))

    def apply(self, symmap: Any, sym: Any, px: Any, vol: Any, ts: Any) -> None:
        """Apply ticks in order; `symmap[sym[i]]` is tick i's symbol code.

        Raises:
            ConfigError: a symbol code outside `symmap` (the ticks before it are applied).
        """
        kn = self.kernels
        view = kn.view
        args = tuple(view(readonly(a)) for a in (symmap, sym, px, vol, ts))
        i = 0
        while True:
            state = (view(self.ci), view(self.cf), view(self.sk), view(self.free), view(self.meta))
            i = kn.apply_batch(*state, self.intervals_ms, *args, i)
            status = self.meta[STATUS]
            if status == DONE:
                return
            if status == NEED_SLOTS:
                self._grow()
                continue
            raise ConfigError(
                f"symbol code {int(sym[i])} at index {i} was not handed out by symbol_code() or "
                f"symbol_codes(); valid codes are 0 to {len(symmap) - 1} (the ticks before it "
                "were applied)"
            )

    def slots(self, s: int, k: int) -> list[int]:
        """The slots of symbol `s`'s candles of interval `k`, oldest first."""
        prev = self.ci.data
        out = []
        c = int(self.sk[s, k, HEAD])
        while c >= 0:
            out.append(c)
            c = prev[c, PREV]
        out.reverse()
        return out

    def rows(self, slots: list[int]) -> list[tuple[Any, ...]]:
        """(start, first, last, count, open, high, low, close, volume) of each slot."""
        if not slots:
            return []
        ints = self.ci[slots, : COUNT + 1].tolist()
        floats = self.cf[slots].tolist()
        return [(*a, *b) for a, b in zip(ints, floats, strict=True)]

    def candles(self, s: int, k: int, watermark_ms: int | None = None) -> list[tuple[Any, ...]]:
        """Rows of symbol `s`'s candles of interval `k`; only completed ones given a watermark."""
        slots = self.slots(s, k)
        if watermark_ms is not None:
            slots = slots[: self._n_completed(slots, k, watermark_ms)]
        return self.rows(slots)

    def _n_completed(self, slots: list[int], k: int, watermark_ms: int) -> int:
        iv, mark = self.intervals_ms[k], watermark_of(watermark_ms, self.grace_ms)
        starts = self.ci.data
        n = 0
        while n < len(slots) and closed(starts[slots[n], START], iv, mark):
            n += 1
        return n

    def flushable(self, n_symbols: int, watermark_ms: int) -> list[tuple[int, int]]:
        """(interval index, symbol) pairs that may hold a completed candle, by interval then
        symbol: those whose newest candle is completed or has an older one. One NumPy pass, so
        that a batch does not walk every symbol's candles to find the few to flush."""
        heads = self.sk[:n_symbols, :, HEAD]
        held = heads >= 0
        slots = np.where(held, heads, 0)
        # The engine's `closed` on whole columns. The mark is clamped into int64, which changes
        # no comparison with an int64 end (start + interval).
        mark = min(max(watermark_of(watermark_ms, self.grace_ms), NO_TIME), -NO_TIME - 1)
        ivs = np.array(self.intervals_ms, np.int64)
        done = self.ci[slots, START] + ivs <= mark  # closed(start, iv, mark), column-wise
        maybe = held & (done | (self.ci[slots, PREV] >= 0))
        ks, ss = np.nonzero(maybe.T)
        return list(zip(ks.tolist(), ss.tolist(), strict=True))

    def flush(self, s: int, k: int, watermark_ms: int) -> list[tuple[Any, ...]]:
        """Remove symbol `s`'s completed candles of interval `k`; return their rows, oldest first."""
        slots = self.slots(s, k)
        n = self._n_completed(slots, k, watermark_ms)
        if n == 0:
            return []
        done = slots[:n]
        rows = self.rows(done)
        if n == len(slots):
            self.sk[s, k, HEAD] = -1
        else:
            self.ci[slots[n], PREV] = -1
        end = rows[-1][0] + self.intervals_ms[k]
        self.sk[s, k, FLUSHED_END] = max(int(self.sk[s, k, FLUSHED_END]), end)
        nf = int(self.meta[N_FREE])
        self.free[nf : nf + n] = done
        self.meta[N_FREE] = nf + n
        return rows

    @property
    def n_candles(self) -> int:
        """Candles held, every interval."""
        return int(self.meta[N_USED] - self.meta[N_FREE])
