"""The message inspector: browse a stream by id or time range, each entry shown decoded (text
fields, JSON, msgpack, and the agent's schema when it is known) and raw (the exact bytes, escaped),
with a field filter. Bounded: at most `count` entries are returned and at most `scan_limit` read,
and a cursor says where to go on.

Entries are read raw (a read-only Lua XRANGE), so duplicate field names and field order are shown
as Redis holds them.

Example:
    >>> page = await inspect_stream(conn, "orders", start="10m", where=["status=failed"])  # doctest: +SKIP
    >>> page["entries"][0]["fields"]  # doctest: +SKIP
    {'id': '7', 'status': 'failed'}
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ..codec import StructCodec, as_text
from ..exceptions import ConfigError, SerializationError
from .ids import MAX_SEQ, is_entry_id, parse_time_ms

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = [
    "MAX_SHOWN_CHARS",
    "FieldMatch",
    "decode_value",
    "escape_bytes",
    "inspect_stream",
    "parse_where",
    "range_ids",
    "show_entry",
]

#: A value is shown up to this many characters (text and raw alike).
MAX_SHOWN_CHARS = 2000
#: At most this many fields of one entry are shown.
MAX_SHOWN_FIELDS = 100
_PAGE = 500

# Reads a range raw: redis-py's XRANGE parser folds fields into a dict (duplicates lost).
RAW_RANGE_LUA = """
if ARGV[4] == 'rev' then
  return redis.call('XREVRANGE', KEYS[1], ARGV[2], ARGV[1], 'COUNT', ARGV[3])
end
return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
"""
_WHERE = re.compile(r"^([^=~]+)([=~])(.*)$", re.S)


@dataclass(frozen=True, slots=True)
class FieldMatch:
    """`field=value` (equal) or `field~text` (contains) on an entry's decoded fields."""

    field: str
    op: str
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether `fields` (text) satisfy this condition."""
        got = fields.get(self.field)
        if got is None:
            return False
        return got == self.value if self.op == "=" else self.value.lower() in got.lower()


def parse_where(conditions: Sequence[str]) -> list[FieldMatch]:
    """`["status=failed", "note~late"]` as conditions; a ConfigError shows the form.

    Example:
        >>> parse_where(["a=1"])[0]
        FieldMatch(field='a', op='=', value='1')
    """
    out = []
    for text in conditions:
        m = _WHERE.match(text)
        if m is None:
            raise ConfigError(
                f"filter {text[:60]!r} is not FIELD=VALUE (equal) or FIELD~TEXT (contains)"
            )
        out.append(FieldMatch(m.group(1), m.group(2), m.group(3)))
    return out


def escape_bytes(raw: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """Bytes as Python shows them in a bytes literal (`a\\xff\\n`): exact and one line.

    Example:
        >>> escape_bytes(b"a\\xff\\n")
        'a\\\\xff\\\\n'
    """
    data = raw if isinstance(raw, bytes) else as_text(raw).encode()
    text = repr(data)[2:-1]
    return text if len(text) <= limit else text[:limit] + f"…[{len(text) - limit} more]"


def decode_value(raw: Any) -> dict[str, Any]:
    """One field value decoded: `{"text"}` (UTF-8, else None with `"binary": True`), plus `"json"`
    for a JSON object or array and `"msgpack"` for binary that is a msgpack map or array.

    Example:
        >>> decode_value(b'{"a": 1}')["json"], decode_value(b"\\x81\\xa1a\\x01")["msgpack"]
        ({'a': 1}, {'a': 1})
    """
    data = raw if isinstance(raw, bytes) else as_text(raw).encode()
    out: dict[str, Any] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        out["text"], out["binary"] = None, True
        try:
            packed = msgspec.msgpack.decode(data)
        except (msgspec.DecodeError, ValueError, RecursionError):
            return out
        if isinstance(packed, dict | list):
            out["msgpack"] = _jsonable(packed)
        return out
    out["text"] = text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "…"
    if text[:1] in ("{", "[") and len(text) <= 1_000_000:
        with contextlib.suppress(ValueError, RecursionError):
            out["json"] = json.loads(text)
    return out


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 64:
        return repr(value)
    if isinstance(value, dict):
        return {as_text(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return escape_bytes(value)
    if isinstance(value, float) and value != value:
        return "nan"
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def show_entry(
    entry_id: Any, flat: Sequence[Any], schema: StructCodec | None = None
) -> dict[str, Any]:
    """One raw entry (`[k1, v1, ...]` as Redis holds it) shown decoded and raw.

    Returns:
        `{"id", "fields" (text, last value of a repeated name), "decoded" ({field: decode_value}
        for fields that decode further), "raw" ([[name, value], ...] escaped, in order),
        "value" (the schema's decoded record, when a schema is given), "schema_error",
        "fields_cut" (more fields than shown)}`.
    """
    pairs = list(zip(flat[::2], flat[1::2], strict=False))
    shown = pairs[:MAX_SHOWN_FIELDS]
    fields: dict[str, str] = {}
    decoded: dict[str, Any] = {}
    for k, v in shown:
        name = as_text(k)
        d = decode_value(v)
        fields[name] = d["text"] if d["text"] is not None else escape_bytes(v)
        if len(d) > 1:
            decoded[name] = d
    out: dict[str, Any] = {
        "id": as_text(entry_id),
        "fields": fields,
        "decoded": decoded,
        "raw": [[escape_bytes(k, 200), escape_bytes(v)] for k, v in shown],
        "fields_cut": len(pairs) > len(shown),
    }
    if schema is not None:
        try:
            out["value"] = _jsonable(msgspec.to_builtins(schema.decode(list(flat))))
        except (SerializationError, msgspec.ValidationError, TypeError, ValueError) as exc:
            out["value"], out["schema_error"] = None, str(exc)[:500]
    return out


def range_ids(start: str | None, end: str | None) -> tuple[str, str]:
    """XRANGE bounds from ids or times (see `streammachine.admin.ids`): a time starts at its ms
    and an end time takes in its whole ms.

    Example:
        >>> range_ids("5-1", None), range_ids(None, "1970-01-01T00:00:01Z")
        (('5-1', '+'), ('-', '1000-18446744073709551615'))
    """

    def one(text: str | None, edge: str, seq: str) -> str:
        if text is None or text.strip() in ("", "-", "+"):
            return edge
        if text.startswith("(") and is_entry_id(text[1:]):
            return text
        if is_entry_id(text):
            return text
        return f"{parse_time_ms(text)}-{seq}"

    return one(start, "-", "0"), one(end, "+", str(MAX_SEQ))


async def inspect_stream(
    conn: RedisConnection,
    stream: str,
    *,
    start: str | None = None,
    end: str | None = None,
    where: Sequence[str] = (),
    count: int = 50,
    newest_first: bool = False,
    scan_limit: int = 10_000,
    schema: StructCodec | None = None,
) -> dict[str, Any]:
    """Entries of `stream` between `start` and `end` (ids, times or durations ago) that match
    every `where` condition, decoded (see `show_entry`).

    Returns:
        `{"stream", "exists", "entries", "scanned" (entries read), "next" (the id to continue
        from, as `start`, or as `end` when `newest_first`; None at the end)}`.

    Raises:
        ConfigError: a bad id, time or condition; `stream` is not a stream.
    """
    from .queries import check_stream

    conditions = parse_where(where)
    lo, hi = range_ids(start, end)
    count = max(1, min(count, 1000))
    if not await check_stream(conn, stream):
        return {"stream": stream, "exists": False, "entries": [], "scanned": 0, "next": None}
    read = conn.script(RAW_RANGE_LUA)
    entries: list[dict[str, Any]] = []
    scanned, nxt = 0, None
    while scanned < scan_limit:
        page = min(_PAGE, scan_limit - scanned)
        args: list[str | int] = [lo, hi, page, "rev" if newest_first else "fwd"]
        batch = await read(keys=[stream], args=args)
        for n, (entry_id, flat) in enumerate(batch):
            scanned += 1
            shown = show_entry(entry_id, flat, schema)
            if all(c.matches(shown["fields"]) for c in conditions):
                entries.append(shown)
                if len(entries) >= count:
                    more = n + 1 < len(batch) or len(batch) == page
                    # Exclusive: XRANGE and XREVRANGE both take `(id` (Redis >= 6.2).
                    nxt = "(" + as_text(entry_id) if more else None
                    return _page(stream, entries, scanned, nxt)
        if len(batch) < page:
            return _page(stream, entries, scanned, None)
        nxt = "(" + as_text(batch[-1][0])
        if newest_first:
            hi = nxt
        else:
            lo = nxt
    return _page(stream, entries, scanned, nxt)


def _page(
    stream: str, entries: list[dict[str, Any]], scanned: int, nxt: str | None
) -> dict[str, Any]:
    return {"stream": stream, "exists": True, "entries": entries, "scanned": scanned, "next": nxt}
