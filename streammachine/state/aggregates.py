"""Window aggregates: count, sum, min, max, mean, first, last and a user function (`reduce`).

An aggregate turns one entry into a small state (`init`), folds two states into one (`merge`:
sessions that join, the entries of a sliding window) and gives the window's value (`result`).
States are plain msgpack-able values (numbers, strings, lists), so a window's state can be
staged in a commit and read back by another process.

Example:
    >>> agg = sum_("qty")
    >>> agg.result(agg.merge(agg.init({"qty": "2"}, 1000), agg.init({"qty": "3.5"}, 2000)))
    5.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "Aggregate",
    "count",
    "first",
    "last",
    "max_",
    "mean",
    "min_",
    "number",
    "reduce",
    "sum_",
]

Record = dict[str, str]


def number(text: str) -> int | float:
    """A field's text as a number: an int when it is one, else a float (ValueError if neither)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


class Aggregate:
    """One aggregate over a field of the window's entries (see the module docstring)."""

    name = "aggregate"

    def __init__(self, field: str | None = None) -> None:
        self.field = field

    def __repr__(self) -> str:
        return f"{self.name}({self.field!r})" if self.field else f"{self.name}()"

    def value(self, record: Record) -> Any:
        """The entry's value of `field` (a number); KeyError/ValueError when it has none."""
        assert self.field is not None
        return number(record[self.field])

    def init(self, record: Record, t: int) -> Any:
        """The state of a window holding only this entry (at event time `t` ms)."""
        return self.value(record)

    def merge(self, a: Any, b: Any) -> Any:
        """The state of the union of two windows' entries (`b` arrived after `a`)."""
        raise NotImplementedError

    #: `fold(state, record, t)`: `merge(state, init(record, t))` without building the entry's
    #: state and without changing `state` (None: this aggregate has none; the engine merges).
    fold: Callable[[Any, Record, int], Any] | None = None

    def result(self, state: Any) -> Any:
        """The window's value."""
        return state


class _Count(Aggregate):
    name = "count"

    def init(self, record: Record, t: int) -> Any:
        return 1

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def fold(self, state: Any, record: Record, t: int) -> Any:
        return state + 1


class _Sum(Aggregate):
    name = "sum"

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def fold(self, state: Any, record: Record, t: int) -> Any:
        return state + number(record[self.field])  # type: ignore[index]


class _Min(Aggregate):
    name = "min"

    def merge(self, a: Any, b: Any) -> Any:
        return b if b < a else a

    def fold(self, state: Any, record: Record, t: int) -> Any:
        b = number(record[self.field])  # type: ignore[index]
        return b if b < state else state


class _Max(Aggregate):
    name = "max"

    def merge(self, a: Any, b: Any) -> Any:
        return b if b > a else a

    def fold(self, state: Any, record: Record, t: int) -> Any:
        b = number(record[self.field])  # type: ignore[index]
        return b if b > state else state


class _Mean(Aggregate):
    name = "mean"

    def init(self, record: Record, t: int) -> Any:
        return [self.value(record), 1]

    def merge(self, a: Any, b: Any) -> Any:
        return [a[0] + b[0], a[1] + b[1]]

    def fold(self, state: Any, record: Record, t: int) -> Any:
        return [state[0] + self.value(record), state[1] + 1]

    def result(self, state: Any) -> Any:
        return state[0] / state[1]


class _First(Aggregate):
    # State: [event time, value]; the earliest event time wins, the earlier arrival on a tie.
    name = "first"

    def init(self, record: Record, t: int) -> Any:
        return [t, self.value(record)]

    def merge(self, a: Any, b: Any) -> Any:
        return b if b[0] < a[0] else a

    def fold(self, state: Any, record: Record, t: int) -> Any:
        value = self.value(record)  # read even when unused: a bad entry fails as with init
        return [t, value] if t < state[0] else state

    def result(self, state: Any) -> Any:
        return state[1]


class _Last(_First):
    name = "last"

    def merge(self, a: Any, b: Any) -> Any:
        return b if b[0] >= a[0] else a

    def fold(self, state: Any, record: Record, t: int) -> Any:
        value = self.value(record)
        return [t, value] if t >= state[0] else state


class _Reduce(Aggregate):
    # State: the window's entries as [event time, fields]; `fn` gets the fields in event-time
    # order. Costs memory in proportion to the window: prefer the built-in aggregates.
    name = "reduce"

    def __init__(self, fn: Callable[[list[Record]], Any]) -> None:
        super().__init__(None)
        self.fn = fn

    def __repr__(self) -> str:
        return f"reduce({getattr(self.fn, '__name__', self.fn)!r})"

    def init(self, record: Record, t: int) -> Any:
        return [[t, record]]

    def merge(self, a: Any, b: Any) -> Any:
        a.extend(b)
        return a

    def result(self, state: Any) -> Any:
        return self.fn([r for _, r in sorted(state, key=lambda e: e[0])])


def count() -> Aggregate:
    """How many entries the window holds."""
    return _Count()


def sum_(field: str) -> Aggregate:
    """The sum of a numeric field (exported as `streammachine.windows.sum`)."""
    return _Sum(field)


def min_(field: str) -> Aggregate:
    """The smallest value of a numeric field."""
    return _Min(field)


def max_(field: str) -> Aggregate:
    """The largest value of a numeric field."""
    return _Max(field)


def mean(field: str) -> Aggregate:
    """The mean of a numeric field."""
    return _Mean(field)


def first(field: str) -> Aggregate:
    """The value of the entry with the earliest event time."""
    return _First(field)


def last(field: str) -> Aggregate:
    """The value of the entry with the latest event time."""
    return _Last(field)


def reduce(fn: Callable[[list[Record]], Any]) -> Aggregate:
    """A user function of the window's entries (their fields as str→str dicts, in event-time
    order), e.g. `reduce(lambda rows: len({r["user"] for r in rows}))`."""
    if not callable(fn):
        raise ConfigError(f"reduce() takes a function of the window's entries, not {fn!r}")
    return _Reduce(fn)
