"""Ticks from stream entries: columns in bulk when the entries allow it, else entry by entry.

A batch whose entries share one field layout (the same keys at the same places, as one producer
writes them) becomes NumPy columns with C-level passes only: `map` over the entries for each
field, `float`/`int` over each column, one parse of all ids. Any entry the bulk path cannot take
as it is — a missing or unparsable field, another layout, a deleted entry — sends the whole batch
through the entry-by-entry path, which skips (and counts) exactly the bad entries. Both paths
parse each value with the same Python `float`/`int`, so they take the same ticks.

Example:
    >>> cols = tick_columns(["5-0"], [[b"symbol", b"A", b"price", b"1.5"]], TickFields())
    >>> cols.prices.tolist(), cols.times.tolist(), cols.symbols
    ([1.5], [5], [b'A'])
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from ..frames.columns import parse_ids

__all__ = ["TickColumns", "TickFields", "split_entries", "tick_columns", "ticks_one_by_one"]

_DIGITS = b"0123456789"
_INT_DIGITS = 18  # so every number parsed in bulk fits in int64
# What makes the entry-by-entry path skip an entry; the bulk path also gives up on IndexError.
_SKIP = (TypeError, ValueError, KeyError, AttributeError, OverflowError, StopIteration)
_BAD = (*_SKIP, IndexError)


class TickFields(NamedTuple):
    """The field names of a tick; `timestamp` None: the time is the entry id's."""

    price: str = "price"
    volume: str = "volume"
    symbol: str = "symbol"
    timestamp: str | None = None


class TickColumns(NamedTuple):
    """Ticks column by column; symbols as they came (str or bytes)."""

    symbols: list[Any]
    prices: np.ndarray
    volumes: np.ndarray
    times: np.ndarray


def tick_columns(ids: list[Any], fields: list[Any], names: TickFields) -> TickColumns | None:
    """The ticks of `fields` (flat [k, v, ...] lists or dicts) as columns, or None when one
    entry needs the entry-by-entry path (see the module docstring)."""
    n = len(fields)
    if n == 0:
        return None
    try:
        first = fields[0]
        if isinstance(first, dict):
            keys = list(first)
            kind = type(keys[0])
            # One type of first key (it picks the field names per entry on the other path) and
            # one size: with the fields taken below present in all, a missing volume is then
            # missing from all, once the first's other keys are found in all too.
            if len(set(map(len, fields))) != 1 or set(map(type, map(next, map(iter, fields)))) != {
                kind
            }:
                return None
            place: dict[Any, Any] = {k: k for k in keys}
            unchecked = keys
        else:
            if len(first) % 2 or len(set(map(len, fields))) != 1:
                return None
            keys = first[0::2]
            kind = type(keys[0])
            # Every key in its place, so a dict per entry would hold the same fields.
            key_places = itemgetter(*range(0, len(first), 2))
            if list(map(key_places, fields)).count(key_places(first)) != n:
                return None
            place = {k: 2 * j + 1 for j, k in enumerate(keys)}  # a repeated key: the last wins
            unchecked = []
        if kind is bytes:
            name = _encoded(names)
        elif kind is str:
            name = names
        else:
            return None
        if name.price not in place or name.symbol not in place:
            return None
        prices = _floats(_column(fields, place[name.price]))
        if name.volume in place:
            volumes = _floats(_column(fields, place[name.volume]))
        else:
            for key in unchecked:
                if key not in (name.price, name.symbol, name.timestamp):
                    _column(fields, key)  # KeyError: another key set
            volumes = np.zeros(n, np.float64)
        if name.timestamp is None:
            times = _id_times(ids)
        elif name.timestamp in place:
            times = _ints(_column(fields, place[name.timestamp]))
        else:
            return None
        symbols = _column(fields, place[name.symbol])
    except _BAD:
        return None
    return TickColumns(symbols, prices, volumes, times)


def _id_times(ids: list[Any]) -> np.ndarray:
    """The ms part of each entry id. Ids as str (an agent's `Message.key`) go to `parse_ids` as
    bytes, made by one join and one split: it takes bytes in one pass, str one by one."""
    if type(ids[0]) is str:
        try:
            raw = "\n".join(ids).encode("ascii").split(b"\n")
        except (TypeError, UnicodeEncodeError):
            raw = ids
        ids = raw if len(raw) == len(ids) else ids  # an id holding a newline: as it is
    return parse_ids(ids)[1]


def _column(fields: list[Any], place: Any) -> list[Any]:
    return list(map(itemgetter(place), fields))


def _floats(values: list[Any]) -> np.ndarray:
    # `float()` itself: NumPy's text parse is no faster for floats (it is for ints).
    return np.array(list(map(float, values)), np.float64)


def _ints(values: list[Any]) -> np.ndarray:
    """`int()` of each value (else `int(float())`, as one by one); plain digits in one call."""
    joined = _lines(values)
    if (
        joined is not None
        and joined.translate(None, _DIGITS) == b"\n" * (len(values) - 1)
        and max(map(len, values)) <= _INT_DIGITS
    ):
        return np.fromstring(joined, dtype=np.int64, sep="\n")
    return np.array(list(map(_int_ms, values)), np.int64)


def _lines(values: list[Any]) -> bytes | None:
    """The values one a line, when all are bytes and none is empty (an empty value is no
    number); None otherwise."""
    try:
        joined = b"\n".join(values)
    except TypeError:
        return None
    if not joined or joined[:1] == b"\n" or joined[-1:] == b"\n" or b"\n\n" in joined:
        return None
    return joined


def _encoded(names: TickFields) -> TickFields:
    ts = names.timestamp
    return TickFields(
        names.price.encode(),  # type: ignore[arg-type]
        names.volume.encode(),  # type: ignore[arg-type]
        names.symbol.encode(),  # type: ignore[arg-type]
        None if ts is None else ts.encode(),  # type: ignore[arg-type]
    )


def ticks_one_by_one(
    ids: list[Any],
    fields: list[Any],
    names: TickFields,
    code_of: Callable[[Any], int],
    out: tuple[Callable[[int], None], Callable[[float], None], Callable[[float], None]],
    out_sym: Callable[[int], None],
) -> int:
    """Parse entry by entry, appending each good tick's time, price, volume (`out`) and symbol
    code (`out_sym`); return how many entries were skipped. An entry without a parsable price,
    symbol or time, or with a bad volume, is skipped; a missing volume is 0."""
    keys: dict[type, TickFields] = {str: names, bytes: _encoded(names)}
    to_ts, to_px, to_vol = out
    skipped = 0
    for eid, entry in zip(ids, fields, strict=True):
        try:
            f = entry
            if not isinstance(f, dict):  # a flat [k, v, ...] list; None: deleted
                f = dict(zip(f[::2], f[1::2], strict=True))
            name = keys[type(next(iter(f)))]  # field names are all bytes or all str
            p = float(f[name.price])
            raw_v = f.get(name.volume)
            v = 0.0 if raw_v is None else float(raw_v)
            if name.timestamp is None:
                t = int(eid.partition(b"-" if type(eid) is bytes else "-")[0])
            else:
                t = _int_ms(f[name.timestamp])
            code = code_of(f[name.symbol])
            to_ts(t)  # first: an out-of-range time fails here, before the others
        except _SKIP:
            skipped += 1
            continue
        to_px(p)
        to_vol(v)
        out_sym(code)
    return skipped


def _int_ms(raw: Any) -> int:
    try:
        return int(raw)
    except ValueError:
        return int(float(raw))


def split_entries(reply: Any) -> tuple[list[Any], list[Any]]:
    """(ids, fields) of the entries of an XREAD/XREADGROUP reply, RESP2 or RESP3, or of XRANGE."""
    if isinstance(reply, dict):
        groups = []
        for entries in reply.values():
            # redis-py's RESP3 XREAD wraps each stream's entries in one more list.
            if len(entries) == 1 and entries[0] and isinstance(entries[0][0], list | tuple):
                entries = entries[0]
            groups.append(entries)
    elif reply:
        first = reply[0]
        if (
            len(first) == 2
            and isinstance(first[1], list | tuple)
            and (not first[1] or isinstance(first[1][0], list | tuple))
        ):
            groups = [entries for _stream, entries in reply]
        else:
            groups = [reply]  # XRANGE: the entries themselves
    else:
        groups = []
    ids: list[Any] = []
    fields: list[Any] = []
    for entries in groups:
        ids += [entry[0] for entry in entries]
        fields += [entry[1] for entry in entries]
    return ids, fields
