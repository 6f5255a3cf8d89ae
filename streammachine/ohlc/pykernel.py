"""The OHLC kernel's source: plain Python loops over candle arrays, the pure-Python twin that
`kernel` also compiles with Numba (one source, so both paths give identical candles).

OHLC is a tumbling-window aggregation on the window engine's terms (DESIGN.md "state and
windows"): a candle is the tumbling window `window_start(t, interval)` of `state/windows.py` and
a tick is late when that window is `closed` at its symbol's flushed-up-to mark, the same
functions the engine uses (Numba compiles them into this kernel). The candle's fields are the
engine's aggregates first/max/min/last (price), sum (volume) and count (`ohlc/candle.py`
`candle_aggregates`); this kernel is their batch path.

Every candle of every (symbol, interval) lives in one pool of slots, two arrays wide:

- `ci[slot]` int64: candle start, first tick time, last tick time, trade count, previous slot
- `cf[slot]` float64: open, high, low, close, volume

`sk[symbol, interval]` holds the newest candle's slot (the head of a list linked through `prev`,
newest first) and the end of the newest flushed candle (ticks before it are late). `meta` carries
the counters. One pass over a batch updates every interval; a tick inside its symbol's newest
candle (nearly all of them) costs no division and no search.

Run as they are, these functions take memoryviews (whose items are Python floats and ints,
several times faster than NumPy scalars); Numba takes the NumPy arrays themselves.

Example:
    >>> import numpy as np
    >>> apply_batch.__name__, factorize_rows(np.array([[1], [2], [1]]))[0].tolist()
    ('apply_batch', [0, 1, 0])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..state.windows import closed, window_start

__all__ = [
    "BAD_CODE",
    "BAD_INDEX",
    "CLOSE",
    "COUNT",
    "DONE",
    "FIRST",
    "FLUSHED_END",
    "HEAD",
    "HELPERS",
    "HIGH",
    "LAST",
    "LATE",
    "LATE_BY_INTERVAL",
    "LOW",
    "NEED_SLOTS",
    "NO_TIME",
    "N_FREE",
    "N_USED",
    "OPEN",
    "PREV",
    "SKIPPED",
    "START",
    "STATUS",
    "TICKS",
    "VOLUME",
    "WATERMARK",
    "apply_batch",
    "apply_tick",
    "factorize_rows",
]

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
    cs = window_start(t, iv)
    if head >= 0:
        start = ci[head, START]
        if t >= start:
            if t < start + iv:
                _update(ci, cf, head, p, v, t)
                return UPDATED
        else:
            if closed(cs, iv, sk[s, k, FLUSHED_END]):
                return DROPPED_LATE
            newer = head
            node = ci[head, PREV]
            while node >= 0 and ci[node, START] > cs:
                newer = node
                node = ci[node, PREV]
            if node >= 0 and ci[node, START] == cs:
                _update(ci, cf, node, p, v, t)
                return UPDATED
            prev = node
    elif closed(cs, iv, sk[s, k, FLUSHED_END]):
        return DROPPED_LATE
    c = _new_slot(free, meta)
    _init(ci, cf, c, cs, p, v, t, prev)
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


#: The functions `apply_batch` calls: Numba compiles them into it (`register_jitable`).
HELPERS = (apply_tick, _update, _new_slot, _init, window_start, closed)
