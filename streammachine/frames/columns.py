"""XREAD/XREADGROUP replies as columns: the one conversion core behind `frames`.

A reply of any shape redis-py gives becomes a stream column, the entry ids (text, milliseconds,
sequence) and one column of decoded text per field, in the order fields are first seen. Entries
that share one set of fields (the usual case) take C-level passes only: `map` over the entries,
one join and one translate to check every id, one NumPy parse for their numbers; anything else
takes a columnar loop, never a dict per row. No pandas here: `frames` builds the frame.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from ..exceptions import ConfigError, SerializationError

__all__ = ["Columns", "StreamsReply", "column_names", "meta_columns", "parse_ids", "reply_columns"]

#: XREAD/XREADGROUP output: RESP2 `[[stream, entries], ...]` or RESP3 `{stream: entries}`.
StreamsReply = Mapping[Any, Any] | Sequence[Any] | None

SEQUENCE_COLUMN = "sequence"
_INT64_MAX = 2**63 - 1
_ID_RE = re.compile(r"([0-9]+)-([0-9]+)")
# At most 18 digits a part, so every number the fast check lets through fits in int64.
_IDS_RE = re.compile(r"[0-9]{1,18}-[0-9]{1,18}(?:\n[0-9]{1,18}-[0-9]{1,18})*")
_DIGITS = b"0123456789"
# An id of at most 20 characters of which one is the dash has at most 18 digits a part.
_SHORT_ID = 20
# A column whose first _SAMPLE values hold at most _FEW distinct ones is decoded through a cache.
_SAMPLE, _FEW = 64, 8


class Columns(NamedTuple):
    """The rows of a reply, column by column."""

    streams: list[str]
    ids: list[str]
    ms: np.ndarray
    seq: np.ndarray
    #: field name → its value in each row (decoded text; None where the entry lacks it)
    fields: dict[str, list[str | None]]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def reply_columns(streams: StreamsReply) -> Columns:
    """The columns of every entry of `streams`; `(None, None)` placeholders are skipped.

    Raises:
        SerializationError: the reply has another shape, or an id is not `<ms>-<seq>`.
    """
    stream_values: list[str] = []
    raw_ids: list[Any] = []
    fields: list[Any] = []
    for stream, entries in _stream_items(streams):
        try:
            ids = [e[0] for e in entries]
            flds = [e[1] for e in entries]
        except (TypeError, IndexError, KeyError):
            pairs = [_split_entry(e) for e in entries]  # raises the clear error
            ids, flds = [p[0] for p in pairs], [p[1] for p in pairs]
        if None in ids:
            keep = [i for i, raw in enumerate(ids) if raw is not None]
            ids, flds = [ids[i] for i in keep], [flds[i] for i in keep]
        stream_values += [stream] * len(ids)
        raw_ids += ids
        fields += flds
    id_texts, ms, seq = parse_ids(raw_ids)
    found = _uniform_columns(fields)
    if found is None:
        found = _general_columns(fields, id_texts)
    return Columns(
        stream_values, id_texts, ms, seq, {k: _decode_column(v) for k, v in found.items()}
    )


def meta_columns(stream: str, id_: str, timestamp: str, include_sequence: bool) -> list[str]:
    """The meta column names in frame order; they must differ."""
    meta = [stream, id_, timestamp, *([SEQUENCE_COLUMN] if include_sequence else [])]
    if len(set(meta)) != len(meta):
        raise ConfigError(f"meta column names must differ, got {meta}")
    return meta


def column_names(meta: list[str], field_names: Iterable[str]) -> dict[str, str]:
    """Field name → column name; a field named like a meta column becomes `field_<name>`."""
    names = list(dict.fromkeys(field_names))
    taken = {*meta, *names}
    out: dict[str, str] = {}
    for name in names:
        column = name
        if name in meta:
            column = f"field_{name}"
            while column in taken:
                column = f"field_{column}"
            taken.add(column)
        out[name] = column
    return out


def _stream_items(streams: StreamsReply) -> list[tuple[str, Sequence[Any]]]:
    """(stream name, entries) pairs from any XREAD reply shape redis-py gives."""
    if streams is None:
        return []
    if isinstance(streams, Mapping):
        pairs = list(streams.items())
    elif isinstance(streams, list | tuple):
        if not all(isinstance(p, list | tuple) and len(p) == 2 for p in streams):
            raise SerializationError(
                "expected XREAD output: a list of [stream, entries] pairs (RESP2) "
                "or a dict {stream: entries} (RESP3)"
            )
        pairs = [(p[0], p[1]) for p in streams]
    else:
        raise SerializationError(
            f"expected XREAD output (a list or dict), got {type(streams).__name__}"
        )
    out: list[tuple[str, Sequence[Any]]] = []
    for name, entries in pairs:
        entries = [] if entries is None else entries
        if not isinstance(entries, list | tuple):
            raise SerializationError(f"entries of stream {name!r} must be a list")
        first = entries[0] if entries else None
        # redis-py's RESP3 parser wraps a stream's entries in one more list: [[(id, fields), ...]]
        if isinstance(first, list | tuple) and (not first or isinstance(first[0], list | tuple)):
            entries = [e for sub in entries for e in sub]
        out.append((_text(name), entries))
    return out


def _split_entry(entry: Any) -> tuple[Any, Any]:
    if entry is None:
        return None, None
    if not isinstance(entry, list | tuple) or len(entry) < 2:
        raise SerializationError(f"expected a stream entry (id, fields), got {entry!r}")
    return entry[0], entry[1]


def _parse_id(raw: Any) -> tuple[str, int, int]:
    text = _text(raw)
    match = _ID_RE.fullmatch(text)
    if match is None or int(match[1]) > _INT64_MAX or int(match[2]) > _INT64_MAX:
        raise SerializationError(
            f"bad stream entry id {raw!r}: expected '<milliseconds>-<sequence>' "
            "(two integers below 2**63) such as '1700000000000-0'"
        )
    return text, int(match[1]), int(match[2])


def parse_ids(raw_ids: list[Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(id texts, milliseconds, sequence numbers) of stream entry ids, bytes or str.

    Raises:
        SerializationError: an id is not `<ms>-<seq>` with parts below 2**63 (it is named).
    """
    n = len(raw_ids)
    if not n:
        return [], np.empty(0, np.int64), np.empty(0, np.int64)
    joined = _ascii_lines(raw_ids)
    if joined is not None and _well_formed(joined, raw_ids):
        text = joined.decode("ascii")
        numbers = np.fromstring(text.replace("\n", "-"), dtype=np.int64, sep="-")
        return text.split("\n"), numbers[0::2], numbers[1::2]
    parsed = [_parse_id(raw) for raw in raw_ids]  # raises, naming the bad id
    numbers = np.array([(p[1], p[2]) for p in parsed], dtype=np.int64).reshape(n, 2)
    return [p[0] for p in parsed], numbers[:, 0].copy(), numbers[:, 1].copy()


def _ascii_lines(raw_ids: list[Any]) -> bytes | None:
    """The ids one per line as ASCII bytes; None when one is not ASCII text or bytes."""
    try:
        return b"\n".join(raw_ids)
    except TypeError:
        pass
    try:
        return "\n".join([_text(raw) for raw in raw_ids]).encode("ascii")
    except UnicodeEncodeError:
        return None


def _well_formed(joined: bytes, raw_ids: list[Any]) -> bool:
    """True when every line of `joined` is `<digits>-<digits>`, each part at most 18 digits."""
    n = len(raw_ids)
    # Without its digits, the text must be one dash per line and nothing else: this also
    # rejects an id that holds a newline, since it makes one line too many.
    if joined.translate(None, _DIGITS) != b"-\n" * (n - 1) + b"-":
        return False
    if joined[:1] == b"-" or joined[-1:] == b"-" or b"\n-" in joined or b"-\n" in joined:
        return False  # a part without digits
    if max(map(len, raw_ids)) <= _SHORT_ID:
        return True
    return _IDS_RE.fullmatch(joined.decode("ascii")) is not None


def _field_pairs(fields: Any, entry_id: str) -> Iterable[tuple[Any, Any]]:
    if fields is None:
        return ()
    if isinstance(fields, Mapping):
        return fields.items()
    if isinstance(fields, list | tuple) and len(fields) % 2 == 0:
        it = iter(fields)
        return zip(it, it, strict=False)
    raise SerializationError(
        f"fields of entry {entry_id} must be a dict or a flat [key, value, ...] list, "
        f"got {fields!r}"
    )


def _uniform_columns(fields: list[Any]) -> dict[str, list[Any]] | None:
    """Columns of raw values when every entry has the same keys, else None."""
    try:
        if not fields or len(set(map(len, fields))) != 1:
            return None
        first = fields[0]
        if isinstance(first, dict):
            keys, slots = list(first), list(first)
        elif isinstance(first, list | tuple) and len(first) % 2 == 0:
            keys, slots = list(first[0::2]), list(range(1, len(first), 2))
            for j, key in enumerate(keys):
                if list(map(itemgetter(2 * j), fields)).count(key) != len(fields):
                    return None
        else:
            return None
        # Keys equal once decoded (b"a", "a"): the last value wins at the first key's place, as
        # a dict per row would have it.
        names = [_text(k) for k in keys]
        return {
            name: list(map(itemgetter(s), fields)) for name, s in zip(names, slots, strict=True)
        }
    except (KeyError, TypeError, IndexError):
        return None


def _general_columns(fields: list[Any], id_texts: list[str]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    slots: dict[Any, list[Any]] = {}  # raw key → its column, so each raw key is decoded once
    n = len(fields)
    for i, entry_fields in enumerate(fields):
        for key, value in _field_pairs(entry_fields, id_texts[i]):
            column = slots.get(key)
            if column is None:
                name = _text(key)
                column = columns.get(name)
                if column is None:
                    column = columns[name] = [None] * n
                slots[key] = column
            column[i] = value
    return columns


def _decode_column(values: list[Any]) -> list[str | None]:
    try:
        if len(set(values[:_SAMPLE])) <= _FEW:
            # A column of few distinct values (symbols, sides): decode each one once.
            texts = {v: v.decode() for v in dict.fromkeys(values)}
            return list(map(texts.__getitem__, values))
        return list(map(bytes.decode, values))  # strict UTF-8: any bad byte takes the slow way
    except (TypeError, AttributeError, UnicodeDecodeError):
        pass
    try:
        "".join(values)  # succeeds only when every value is text already (decode_responses)
        return list(values)
    except TypeError:
        return [_text_or_none(v) for v in values]
