"""The event-time window engine: pure state, no I/O (DESIGN.md "state and windows").

One `Engine` holds the open windows of one stream (one partition) of a window agent: per key,
the aggregate states of its open windows, the newest event time seen, and how many entries came
late. `add` puts one entry in its windows, `close` takes out the windows the watermark has passed,
`updates` gives the current value of the windows changed since the last call; `dump`/`load`
turn one key's windows into bytes and back, so `windowing.py` can stage them in a commit.

Semantics (docs/windows.md):
- watermark = newest event time seen - grace. It only moves forward, entry by entry, so what is
  late does not depend on how entries were batched.
- tumbling(size) / hopping(size, step): windows [start, start + size) with start a multiple of
  step; a window closes when watermark ≥ its end. An entry is late for the windows it belongs to
  that are closed (a hopping entry still counts in its open windows).
- sliding(size): one window per distinct (key, event time t), holding the key's entries in
  (t - size, t]; it closes when watermark > t. An entry older than the watermark is late.
- session(gap): entries of a key less than `gap` apart form one session [first, last]; it
  closes when watermark ≥ last + gap. An entry older than the watermark is late.

Example:
    >>> from streammachine.state.aggregates import count
    >>> e = Engine(tumbling(10), {"n": count()}, grace_ms=0)
    >>> [e.add("a", t, {}) for t in (1000, 4000, 12000)]
    [True, True, True]
    >>> [(r.key, r.start, r.end, r.values) for r in e.close()]
    [('a', 0, 10000, {'n': 2})]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from .aggregates import Aggregate, Record
from .windowkinds import (
    Kind,
    closed,
    hopping,
    session,
    sliding,
    tumbling,
    watermark_of,
    window_start,
)

__all__ = [
    "Engine",
    "Kind",
    "Row",
    "closed",
    "hopping",
    "session",
    "sliding",
    "tumbling",
    "watermark_of",
    "window_start",
]


@dataclass(frozen=True, slots=True)
class Row:
    """One window's value: its key, bounds in ms (see the module docstring) and aggregates."""

    key: str
    start: int
    end: int
    values: dict[str, Any]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


@dataclass(slots=True)
class Engine:
    """The open windows of one stream of a window agent (see the module docstring).

    Args:
        kind: the window kind.
        aggs: output field name → aggregate.
        grace_ms: how far behind the newest event time an entry may be and still count.
    """

    kind: Kind
    aggs: dict[str, Aggregate]
    grace_ms: int = 0
    #: The newest event time seen (None: nothing yet).
    max_t: int | None = None
    late: int = 0
    #: key → its open windows (tumbling/hopping: {start: states}; session: [[start, last,
    #: states], …]; sliding: [[[t, states], …], [window end times t, …]])
    keys: dict[str, Any] = field(default_factory=dict)
    #: keys changed since `clean()` (their bytes must be written)
    dirty: set[str] = field(default_factory=set)
    #: windows changed since `updates()`: (key, start), kept only when `track` (emit="update")
    touched: set[tuple[str, int]] = field(default_factory=set)
    track: bool = True
    #: no window closes before the watermark reaches this (None: none is open)
    next_end: int | None = None
    _inits: list[Any] = field(default_factory=list, init=False, repr=False)
    _merges: list[Any] = field(default_factory=list, init=False, repr=False)
    #: Every aggregate's `fold` (None when one has none): an entry folds into its window's
    #: states without building states of its own.
    _folds: list[Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Bound methods looked up once: `add` runs per entry.
        self._inits = [a.init for a in self.aggs.values()]
        self._merges = [a.merge for a in self.aggs.values()]
        folds = [a.fold for a in self.aggs.values()]
        self._folds = folds if all(f is not None for f in folds) else None

    @property
    def watermark(self) -> int | None:
        """Newest event time seen minus the grace (None until an entry was seen)."""
        return None if self.max_t is None else watermark_of(self.max_t, self.grace_ms)

    def _init(self, record: Record, t: int) -> list[Any]:
        return [init(record, t) for init in self._inits]

    def _merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [merge(x, y) for merge, x, y in zip(self._merges, a, b, strict=True)]

    def _result(self, states: list[Any]) -> dict[str, Any]:
        return {n: agg.result(s) for (n, agg), s in zip(self.aggs.items(), states, strict=True)}

    def add(self, key: str, t: int, record: Record) -> bool:
        """Put one entry (event time `t` ms) in its windows; False when it is late (for at
        least one of its windows). Raises KeyError/ValueError when an aggregate's field is
        missing or not a number (nothing changed then)."""
        kind = self.kind.kind
        if kind == "tumbling" and not self.track:
            return self._add_tumbling(key, t, record)
        wm = self.watermark
        ok = True
        if kind in ("tumbling", "hopping"):
            size, step = self.kind.size_ms, self.kind.step_ms
            start = window_start(t, step)
            starts = []
            while start + size > t:
                if wm is None or not closed(start, size, wm):
                    starts.append(start)
                else:
                    ok = False
                start -= step
            if starts:
                states = self._init(record, t)
                windows = self.keys.setdefault(key, {})
                last = starts[-1]
                for s in starts:
                    # The states are fresh: only windows but the last need a copy of their own.
                    mine = states if s == last else _copy(states)
                    have = windows.get(s)
                    windows[s] = mine if have is None else self._merge(have, mine)
                    if self.track:
                        self.touched.add((key, s))
                self._ends(starts[-1] + size)
                self.dirty.add(key)
        elif wm is not None and t < wm:
            ok = False
        elif kind == "session":
            self._add_session(key, t, self._init(record, t))
        else:
            self._add_sliding(key, t, self._init(record, t))
        if not ok:
            self.late += 1
        if self.max_t is None or t > self.max_t:
            self.max_t = t
        return ok

    def _add_tumbling(self, key: str, t: int, record: Record) -> bool:
        # The common case, with nothing it does not need: one window per entry.
        size = self.kind.size_ms
        start = window_start(t, size)
        end = start + size
        max_t = self.max_t
        if max_t is not None and closed(start, size, watermark_of(max_t, self.grace_ms)):
            self.late += 1
            return False
        windows = self.keys.get(key)
        have = None if windows is None else windows.get(end - size)
        folds = self._folds
        if have is None:
            states = [init(record, t) for init in self._inits]
        elif folds is not None:
            # The states are new values (`fold` changes none): a bad entry changes nothing.
            states = [fold(x, record, t) for fold, x in zip(folds, have, strict=True)]
        else:
            states = [init(record, t) for init in self._inits]
            states = [m(x, y) for m, x, y in zip(self._merges, have, states, strict=True)]
        if windows is None:
            windows = self.keys[key] = {}
        windows[end - size] = states
        if self.next_end is None or end < self.next_end:
            self.next_end = end
        if max_t is None or t > max_t:
            self.max_t = t
        self.dirty.add(key)
        return True

    def _add_session(self, key: str, t: int, states: list[Any]) -> None:
        gap = self.kind.size_ms
        sessions: list[list[Any]] = self.keys.setdefault(key, [])
        start, last, keep = t, t, []
        joined: list[list[Any]] = []
        for s in sessions:
            if s[0] - gap < t < s[1] + gap:
                joined.append(s)
                start, last = min(start, s[0]), max(last, s[1])
            else:
                keep.append(s)
        merged: list[Any] | None = None
        for s in joined:  # in arrival order of their entries: the older sessions first
            merged = s[2] if merged is None else self._merge(merged, s[2])
            self.touched.discard((key, s[0]))
        merged = states if merged is None else self._merge(merged, states)
        keep.append([start, last, merged])
        keep.sort(key=lambda s: s[0])
        self.keys[key] = keep
        if self.track:
            self.touched.add((key, start))
        self._ends(last + gap)
        self.dirty.add(key)

    def _add_sliding(self, key: str, t: int, states: list[Any]) -> None:
        size = self.kind.size_ms
        buf, ends = self.keys.setdefault(key, [[], []])
        buf.append([t, states])
        if t not in ends:
            ends.append(t)
        if self.track:
            for e in ends:
                if t <= e < t + size:
                    self.touched.add((key, e))
        self._ends(t + 1)
        self.dirty.add(key)

    def _ends(self, end: int) -> None:
        if self.next_end is None or end < self.next_end:
            self.next_end = end

    def _sliding_value(self, buf: list[Any], end: int) -> dict[str, Any]:
        size = self.kind.size_ms
        merged: list[Any] | None = None
        for t, states in buf:
            if end - size < t <= end:
                # copy: merge may extend its first argument in place (reduce)
                merged = _copy(states) if merged is None else self._merge(merged, _copy(states))
        assert merged is not None
        return self._result(merged)

    def _bounds(self, key: str, start: int) -> tuple[int, int] | None:
        """(start, end) of the open window `start` of `key`, None when it is gone."""
        kind, windows = self.kind.kind, self.keys.get(key)
        if windows is None:
            return None
        if kind in ("tumbling", "hopping"):
            return (start, start + self.kind.size_ms) if start in windows else None
        if kind == "session":
            for s in windows:
                if s[0] == start:
                    return (s[0], s[1])
            return None
        return (start - self.kind.size_ms, start) if start in windows[1] else None

    def _value(self, key: str, start: int) -> dict[str, Any]:
        kind, windows = self.kind.kind, self.keys[key]
        if kind in ("tumbling", "hopping"):
            return self._result(_copy(windows[start]))
        if kind == "session":
            return self._result(_copy(next(s[2] for s in windows if s[0] == start)))
        return self._sliding_value(windows[0], start)

    def updates(self) -> list[Row]:
        """The current value of every open window changed since the last call (emit="update")."""
        rows = []
        for key, start in sorted(self.touched):
            bounds = self._bounds(key, start)
            if bounds is not None:
                rows.append(Row(key, bounds[0], bounds[1], self._value(key, start)))
        self.touched.clear()
        return rows

    def close(self) -> list[Row]:
        """Take out every window the watermark has passed; their final values, oldest first."""
        wm = self.watermark
        if wm is None or self.next_end is None or wm < self.next_end:
            return []  # nothing can close yet: no pass over every key
        rows: list[Row] = []
        upcoming: list[int] = []
        kind, size = self.kind.kind, self.kind.size_ms
        for key in list(self.keys):
            windows = self.keys[key]
            if kind in ("tumbling", "hopping"):
                for start in sorted(s for s in windows if closed(s, size, wm)):
                    rows.append(Row(key, start, start + size, self._result(windows.pop(start))))
                    self.dirty.add(key)
                empty = not windows
                if windows:
                    upcoming.append(min(windows) + size)
            elif kind == "session":
                done = [s for s in windows if s[1] + size <= wm]
                for s in done:
                    rows.append(Row(key, s[0], s[1], self._result(s[2])))
                if done:
                    self.keys[key] = windows = [s for s in windows if s[1] + size > wm]
                    self.dirty.add(key)
                empty = not windows
                upcoming += [s[1] + size for s in windows]
            else:
                buf, ends = windows
                done = sorted(e for e in ends if e < wm)
                for e in done:
                    rows.append(Row(key, e - size, e, self._sliding_value(buf, e)))
                kept = [b for b in buf if b[0] > wm - size]
                if done or len(kept) != len(buf):
                    windows[0], windows[1] = kept, [e for e in ends if e >= wm]
                    self.dirty.add(key)
                empty = not windows[1] and not kept
                upcoming += [e + 1 for e in windows[1]]
            if empty:
                del self.keys[key]
        self.next_end = min(upcoming) if upcoming else None
        rows.sort(key=lambda r: (r.end, r.key, r.start))
        return rows

    def open_windows(self) -> int:
        """How many windows are open."""
        kind = self.kind.kind
        if kind == "sliding":
            return sum(len(w[1]) for w in self.keys.values())
        return sum(len(w) for w in self.keys.values())

    def dump(self, key: str) -> bytes | None:
        """`key`'s open windows as bytes (None: it has none)."""
        windows = self.keys.get(key)
        return None if windows is None else _encoder.encode(windows)

    def load(self, key: str, raw: bytes) -> None:
        """Restore `key`'s open windows from `dump` bytes (ValueError when they are not)."""
        try:
            windows = _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"window state of {key!r} is not readable: {exc}") from None
        kind = self.kind.kind
        shape = dict if kind in ("tumbling", "hopping") else list
        if not isinstance(windows, shape) or (kind == "sliding" and len(windows) != 2):
            raise ValueError(f"window state of {key!r} is not a {kind} window's")
        self.keys[key] = windows
        self.next_end = -(2**63)  # unknown: the next `close` looks at every key


def _copy(states: list[Any]) -> list[Any]:
    # Aggregate states are numbers, short lists, or (reduce) lists of entries: a shallow copy
    # of each list is enough for `merge` not to change the stored one.
    return [list(s) if isinstance(s, list) else s for s in states]
