"""The OHLC candle kernel: candles in NumPy arrays, updated by Numba or by its pure-Python twin.

Every candle of every (symbol, interval) lives in one pool of slots, two arrays wide:

- `ci[slot]` int64: candle start, first tick time, last tick time, trade count, previous slot
- `cf[slot]` float64: open, high, low, close, volume

`sk[symbol, interval]` holds the newest candle's slot (the head of a list linked through `prev`,
newest first) and the end of the newest flushed candle (ticks before it are late). `meta` carries
the counters. One pass over a batch updates every interval; a tick inside its symbol's newest
candle (nearly all of them) costs no division and no search.

The functions below are plain Python. `kernels(jit=True)` compiles the same source with
`numba.njit(cache=True)` on first use; `kernels(jit=False)` runs it as it is, on memoryviews
(whose items are Python floats and ints, several times faster than NumPy scalars). One source
means both paths give identical candles.

Example:
    >>> k = kernels(jit=False)
    >>> k.jit
    False
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import ConfigError, NotAvailableError

__all__ = ["CandleStore", "Kernels", "jit_active", "kernels", "readonly"]

log = logging.getLogger("streammachine.ohlc.kernel")

# ci columns
START, FIRST, LAST, COUNT, PREV = 0, 1, 2, 3, 4
# cf columns
OPEN, HIGH, LOW, CLOSE, VOLUME = 0, 1, 2, 3, 4
# sk[symbol, interval, ...]: the newest candle's slot, the end of the newest flushed candle
HEAD, FLUSHED_END = 0, 1
# meta
N_USED, N_FREE, WATERMARK, TICKS, LATE, SKIPPED, STATUS, BAD_INDEX, LATE_BY_INTERVAL = range(9)
# meta[STATUS] after a batch: done, stopped for more slots, stopped at a symbol code out of range
DONE, NEED_SLOTS, BAD_CODE = 0, 1, 2
NO_TIME = -(2**63)
# apply_tick results
UPDATED, DROPPED_LATE, CREATED = 0, 1, 2


def apply_tick(
    ci: Any,
    cf: Any,
    sk: Any,
    free: Any,
    meta: Any,
    s: int,
    k: int,
    iv: int,
    p: float,
    v: float,
    t: int,
) -> int:
    """Apply one tick to symbol code `s`'s candle of interval `k`: UPDATED, DROPPED_LATE or CREATED.

    The caller guarantees a free slot. An out-of-order tick walks back along the symbol's list.
    """
    head = sk[s, k, HEAD]
    prev = head  # the older neighbour of a new candle
    newer = -1  # the newer neighbour of a new candle; -1: it becomes the head
    if head >= 0:
        start = ci[head, START]
        if t >= start:
            if t < start + iv:
                _update(ci, cf, head, p, v, t)
                return UPDATED
        else:
            if t < sk[s, k, FLUSHED_END]:
                return DROPPED_LATE
            cs = (t // iv) * iv
            newer = head
            node = ci[head, PREV]
            while node >= 0 and ci[node, START] > cs:
                newer = node
                node = ci[node, PREV]
            if node >= 0 and ci[node, START] == cs:
                _update(ci, cf, node, p, v, t)
                return UPDATED
            prev = node
    elif t < sk[s, k, FLUSHED_END]:
        return DROPPED_LATE
    c = _new_slot(free, meta)
    _init(ci, cf, c, (t // iv) * iv, p, v, t, prev)
    if newer < 0:
        sk[s, k, HEAD] = c
    else:
        ci[newer, PREV] = c
    return CREATED


def _update(ci: Any, cf: Any, c: int, p: float, v: float, t: int) -> None:
    if p > cf[c, HIGH]:
        cf[c, HIGH] = p
    if p < cf[c, LOW]:
        cf[c, LOW] = p
    cf[c, VOLUME] += v
    ci[c, COUNT] += 1
    # Ties keep the first arrival as open and take the last arrival as close.
    if t < ci[c, FIRST]:
        ci[c, FIRST] = t
        cf[c, OPEN] = p
    if t >= ci[c, LAST]:
        ci[c, LAST] = t
        cf[c, CLOSE] = p


def _new_slot(free: Any, meta: Any) -> int:
    if meta[N_FREE] > 0:
        meta[N_FREE] -= 1
        return int(free[meta[N_FREE]])
    meta[N_USED] += 1
    return int(meta[N_USED] - 1)


def _init(ci: Any, cf: Any, c: int, cs: int, p: float, v: float, t: int, prev: int) -> None:
    ci[c, START] = cs
    ci[c, FIRST] = t
    ci[c, LAST] = t
    ci[c, COUNT] = 1
    ci[c, PREV] = prev
    cf[c, OPEN] = p
    cf[c, HIGH] = p
    cf[c, LOW] = p
    cf[c, CLOSE] = p
    cf[c, VOLUME] = v


def apply_batch(
    ci: Any,
    cf: Any,
    sk: Any,
    free: Any,
    meta: Any,
    intervals: Any,
    symmap: Any,
    sym: Any,
    px: Any,
    vol: Any,
    ts: Any,
    i0: int,
) -> int:
    """Apply ticks `i0..` in arrival order; return the index it stopped at (see meta[STATUS]).

    `intervals` is a tuple (Numba then unrolls the per-interval loop), `symmap` maps the input's
    symbol codes to the aggregator's. Ticks with a non-finite price or volume are skipped. The
    batch stops early when the pool may lack a slot per interval, or at a code outside `symmap`.
    """
    n = len(ts)
    nk = len(intervals)
    nmap = len(symmap)
    cap = ci.shape[0]
    # Counters stay in locals: Numba cannot keep array cells in registers across the loop.
    watermark = meta[WATERMARK]
    ticks = 0
    late_ticks = 0
    skipped = 0
    room = 0
    status = DONE
    # A known non-negative index spares Numba's negative-index wraparound on every load.
    i = i0 if i0 > 0 else 0
    while i < n:
        if room < nk:
            room = meta[N_FREE] + cap - meta[N_USED]
            if room < nk:
                status = NEED_SLOTS
                break
        code = sym[i]
        if code < 0 or code >= nmap:
            status = BAD_CODE
            meta[BAD_INDEX] = i
            break
        p = px[i]
        v = vol[i]
        # NaN and ±inf both fail x - x == 0.
        if not (p - p == 0.0 and v - v == 0.0):
            skipped += 1
            i += 1
            continue
        s = symmap[code]
        t = ts[i]
        if t > watermark:
            watermark = t
        ticks += 1
        late = 0
        for k in range(nk):
            iv = intervals[k]
            c = sk[s, k, HEAD]
            if c >= 0:
                start = ci[c, START]
                if start <= t and t < start + iv:
                    _update(ci, cf, c, p, v, t)
                    continue
            r = apply_tick(ci, cf, sk, free, meta, s, k, iv, p, v, t)
            if r == CREATED:
                room -= 1
            elif r == DROPPED_LATE:
                meta[LATE_BY_INTERVAL + k] += 1
                late = 1
        late_ticks += late
        i += 1
    meta[WATERMARK] = watermark
    meta[TICKS] += ticks
    meta[LATE] += late_ticks
    meta[SKIPPED] += skipped
    meta[STATUS] = status
    return i


def factorize_rows(rows: Any) -> tuple[Any, Any]:
    """Codes for the rows of a 2-D array (fixed-width strings viewed as integers), first seen = 0.

    Returns (codes, index of each code's first row). An open-addressing hash table keyed by row.
    """
    n, w = rows.shape
    codes = np.empty(n, np.int64)
    firsts = np.empty(16, np.int64)
    size = 64
    table = np.full(size, -1, np.int64)
    hashes = np.empty(16, np.uint64)
    m = 0
    for i in range(n):
        h = np.uint64(14695981039346656037)
        for j in range(w):
            h = (h ^ np.uint64(rows[i, j])) * np.uint64(1099511628211)
        h ^= h >> np.uint64(29)
        mask = size - 1
        pos = np.int64(h & np.uint64(mask))
        while True:
            u = table[pos]
            if u < 0:
                break
            if hashes[u] == h:
                r = firsts[u]
                same = True
                for j in range(w):
                    if rows[r, j] != rows[i, j]:
                        same = False
                        break
                if same:
                    break
            pos = (pos + 1) & mask
        if u >= 0:
            codes[i] = u
            continue
        if m == len(firsts):
            firsts = np.concatenate((firsts, np.empty(m, np.int64)))
            hashes = np.concatenate((hashes, np.empty(m, np.uint64)))
        firsts[m] = i
        hashes[m] = h
        table[pos] = m
        codes[i] = m
        m += 1
        if 2 * m > size:
            size *= 4
            table = np.full(size, -1, np.int64)
            mask = size - 1
            for u in range(m):
                pos = np.int64(hashes[u] & np.uint64(mask))
                while table[pos] >= 0:
                    pos = (pos + 1) & mask
                table[pos] = u
    return codes, firsts[:m].copy()


@dataclass(frozen=True)
class Kernels:
    """One path's functions: Numba-compiled (`jit=True`) or the plain Python source."""

    jit: bool
    apply_batch: Any
    factorize_rows: Any

    def view(self, array: Any) -> Any:
        """NumPy arrays for Numba; memoryviews for Python, whose items are plain floats and ints."""
        return array if self.jit else memoryview(array)


_PY = Kernels(jit=False, apply_batch=apply_batch, factorize_rows=factorize_rows)
_jit: Kernels | None = None
_jit_failed = False


def jit_disabled_by_env() -> bool:
    """True when `STREAMMACHINE_DISABLE_JIT` is 1, true or yes."""
    return os.environ.get("STREAMMACHINE_DISABLE_JIT", "").strip().lower() in ("1", "true", "yes")


def jit_active() -> bool:
    """True when the compiled path is the default: Numba imports and the env does not disable it.

    Example:
        >>> isinstance(jit_active(), bool)
        True
    """
    return not jit_disabled_by_env() and _compiled() is not None


def _compiled() -> Kernels | None:
    """Wrap the functions with `numba.njit(cache=True)` once; each compiles (or loads from the
    on-disk cache) on its first call, so importing this module compiles nothing."""
    global _jit, _jit_failed
    if _jit is None and not _jit_failed:
        if importlib.util.find_spec("numba") is None:
            _jit_failed = True
            return None
        try:
            import numba
            from numba.extending import register_jitable
        except ImportError as exc:  # a broken install: fall back rather than fail
            log.warning("numba could not be imported (%s); OHLC runs in pure Python", exc)
            _jit_failed = True
            return None
        for helper in (apply_tick, _update, _new_slot, _init):
            register_jitable(helper)
        jit = numba.njit(cache=True, nogil=True)
        _jit = Kernels(jit=True, apply_batch=jit(apply_batch), factorize_rows=jit(factorize_rows))
    return _jit


def kernels(jit: bool | None = None) -> Kernels:
    """The functions of one path: Numba when `jit` is True, Python when False, else `jit_active()`.

    Raises:
        NotAvailableError: `jit=True` and Numba cannot be imported.

    Example:
        >>> kernels(jit=False).jit
        False
    """
    if jit is None:
        jit = jit_active()
    if not jit:
        return _PY
    compiled = _compiled()
    if compiled is None:
        raise NotAvailableError(
            "the compiled OHLC kernel needs numba: pip install 'streammachine[jit]'"
        )
    return compiled


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view: Numba types writable and read-only arrays apart, so inputs always
    passed read-only (pandas hands out read-only arrays) compile one variant, not several."""
    view = array.view()
    view.flags.writeable = False
    return view


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
        last_start = watermark_ms - self.intervals_ms[k] - self.grace_ms
        starts = self.ci.data
        n = 0
        while n < len(slots) and starts[slots[n], START] <= last_start:
            n += 1
        return n

    def flushable(self, n_symbols: int, watermark_ms: int) -> list[tuple[int, int]]:
        """(interval index, symbol) pairs that may hold a completed candle, by interval then
        symbol: those whose newest candle is completed or has an older one. One NumPy pass, so
        that a batch does not walk every symbol's candles to find the few to flush."""
        heads = self.sk[:n_symbols, :, HEAD]
        held = heads >= 0
        slots = np.where(held, heads, 0)
        # Clamped into int64, which changes no comparison with an int64 start.
        last_start = np.array(
            [
                min(max(watermark_ms - iv - self.grace_ms, NO_TIME), -NO_TIME - 1)
                for iv in self.intervals_ms
            ],
            np.int64,
        )
        maybe = held & ((self.ci[slots, START] <= last_start) | (self.ci[slots, PREV] >= 0))
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
