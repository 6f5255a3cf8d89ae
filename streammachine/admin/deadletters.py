"""Reading dead letters: list them with filters (a field's value, the error text, a time range),
and show one decoded and raw. Sending them back, editing and purging are in
`streammachine.admin.replay`.

A dead letter is the original entry's fields, as the bytes it arrived with, followed by the
dead-letter fields (`streammachine.consume.deadletter.DEAD_LETTER_FIELDS`); its entry id is the
time it was dead-lettered, so a time range is an id range and costs no scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import keys
from ..codec import as_text
from ..consume.deadletter import DEAD_LETTER_FIELDS, flat_fields, split_dead
from .inspector import RAW_RANGE_LUA, FieldMatch, escape_bytes, parse_where, show_entry
from .queries import check_stream, client_of

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..connection import RedisConnection

__all__ = [
    "DEAD_LETTER_FIELDS",
    "DeadFilter",
    "dead_dict",
    "dead_letter_stream",
    "find_dead",
    "list_dead",
    "show_dead",
]

#: At most this many dead letters are read looking for matches (the page says where it stopped).
SCAN_LIMIT = 100_000
_PAGE = 1000


def dead_letter_stream(stream: str) -> str:
    """The dead-letter stream of `stream`: `stream` itself when it ends with ":dead".

    Example:
        >>> dead_letter_stream("orders"), dead_letter_stream("orders:dead")
        ('orders:dead', 'orders:dead')
    """
    return stream if stream.endswith(keys.DEAD_SUFFIX) else keys.dead_letters(stream)


def default_source(dead: str) -> str | None:
    """The stream a dead letter came from when it does not say: its dead-letter stream's name
    without ":dead"."""
    return dead[: -len(keys.DEAD_SUFFIX)] if dead.endswith(keys.DEAD_SUFFIX) else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def dead_dict(dead: str, entry_id: Any, raw: Any) -> dict[str, Any]:
    """A dead letter (its fields as a dict or a flat list): its metadata, and the original
    message's fields under "fields".

    Example:
        >>> dead_dict("o:dead", b"1-0", [b"n", b"1", b"error", b"boom"])["fields"]
        {'n': '1'}
    """
    original, meta = split_dead(flat_fields(raw))
    m = {k: as_text(v) for k, v in meta.items()}
    deliveries = m.get("deliveries", "")
    return {
        "stream": dead,
        "id": as_text(entry_id),
        "source_stream": m.get("source_stream") or default_source(dead),
        "source_id": m.get("source_id"),
        "group": m.get("group"),
        "error": m.get("error"),
        "error_type": m.get("error_type"),
        "deliveries": int(deliveries) if deliveries.isdecimal() else None,
        "failed_at": _float(m.get("failed_at", "")),
        "traceback": m.get("traceback"),
        "fields": {
            as_text(k): as_text(v) for k, v in zip(original[::2], original[1::2], strict=False)
        },
    }


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead letters: original fields that match (`FieldMatch`), an error text (contained in
    the error or its type, any case), and a time range (when they were dead-lettered, epoch ms).

    Example:
        >>> DeadFilter.parse(["order=7"], error="timeout", since="1h").fields[0].value
        '7'
    """

    fields: tuple[FieldMatch, ...] = ()
    error: str | None = None
    since: str | None = None
    until: str | None = None

    @classmethod
    def parse(
        cls,
        where: Sequence[str] = (),
        error: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> DeadFilter:
        """A filter from what an operator typed; a ConfigError says what is wrong."""
        from .inspector import range_ids

        found = cls(tuple(parse_where(where)), error or None, since or None, until or None)
        range_ids(found.since, found.until)  # checks both now, before anything is read
        return found

    @property
    def empty(self) -> bool:
        """True when it matches every dead letter."""
        return not (self.fields or self.error or self.since or self.until)

    def bounds(self) -> tuple[str, str]:
        """The id range of the time range."""
        from .inspector import range_ids

        return range_ids(self.since, self.until)

    def matches(self, d: dict[str, Any]) -> bool:
        """Whether the dead letter `d` (as `dead_dict` gives it) passes."""
        if not all(f.matches(d["fields"]) for f in self.fields):
            return False
        if self.error:
            text = f"{d.get('error_type') or ''}: {d.get('error') or ''}".lower()
            return self.error.lower() in text
        return True

    def as_dict(self) -> dict[str, Any]:
        """What an audit record says of it."""
        where = [f"{f.field}{f.op}{f.value}" for f in self.fields]
        return {"where": where, "error": self.error, "since": self.since, "until": self.until}


async def find_dead(
    client: aioredis.Redis | RedisConnection,
    stream: str,
    where: DeadFilter | None = None,
    *,
    count: int = 100,
    after: str | None = None,
    scan_limit: int = SCAN_LIMIT,
) -> dict[str, Any]:
    """The oldest `count` dead letters of `stream` that pass `where`, from `after` on.

    Returns:
        `{"dead_stream", "total" (entries in it), "entries" (as `dead_dict`), "scanned",
        "next" (the cursor to pass as `after` for more; None when none are left)}`.

    Example:
        >>> page = await find_dead(conn, "orders", DeadFilter(error="timeout"))  # doctest: +SKIP
    """
    c: Any = client_of(client)
    dead = dead_letter_stream(stream)
    where = where or DeadFilter()
    out: dict[str, Any] = {"dead_stream": dead, "total": 0, "entries": [], "scanned": 0}
    out["next"] = None
    if not await check_stream(c, dead):
        return out
    out["total"] = int(await c.xlen(dead))
    lo, hi = where.bounds()
    if after:
        lo = after
    while out["scanned"] < scan_limit:
        page = min(_PAGE, scan_limit - out["scanned"])
        batch = await c.xrange(dead, lo, hi, count=page)
        for n, (entry_id, raw) in enumerate(batch):
            out["scanned"] += 1
            d = dead_dict(dead, entry_id, raw)
            if where.matches(d):
                out["entries"].append(d)
                if len(out["entries"]) >= count:
                    more = n + 1 < len(batch) or len(batch) == page
                    out["next"] = "(" + d["id"] if more else None
                    return out
        if len(batch) < page:
            out["next"] = None
            return out
        lo = out["next"] = "(" + as_text(batch[-1][0])
    return out


async def list_dead(
    client: aioredis.Redis | RedisConnection,
    stream: str,
    count: int = 100,
    *,
    where: DeadFilter | None = None,
) -> list[dict[str, Any]]:
    """The oldest `count` dead letters of `stream` (see `dead_letter_stream`) that pass `where`.

    Each is `{"stream", "id", "source_stream", "source_id", "group", "error", "error_type",
    "deliveries", "failed_at", "traceback", "fields"}`, `fields` being the original message.

    Example:
        >>> [d["error"] for d in await list_dead(conn.client, "orders")]  # doctest: +SKIP
        ['division by zero']
    """
    return list((await find_dead(client, stream, where, count=count))["entries"])


async def read_raw_dead(conn: RedisConnection, dead: str, entry_id: str) -> list[Any] | None:
    """One dead letter's fields exactly as Redis holds them (flat), None when it is not there."""
    found = await conn.script(RAW_RANGE_LUA)(keys=[dead], args=[entry_id, entry_id, 1, "fwd"])
    return list(found[0][1]) if found else None


async def show_dead(conn: RedisConnection, stream: str, entry_id: str) -> dict[str, Any] | None:
    """One dead letter decoded and raw: `dead_dict`'s keys plus `"message"` (the original
    message as the inspector shows it: decoded and raw) and `"raw"` (every field as stored,
    escaped, in order). None when there is no such entry.

    Example:
        >>> (await show_dead(conn, "orders", "1700000000000-0"))["message"]["raw"]  # doctest: +SKIP
        [['order', '7']]
    """
    from .ids import check_entry_id

    check_entry_id(entry_id)
    dead = dead_letter_stream(stream)
    if not await check_stream(conn, dead):
        return None
    flat = await read_raw_dead(conn, dead, entry_id)
    if flat is None:
        return None
    original, _ = split_dead(flat)
    d = dead_dict(dead, entry_id, flat)
    d["message"] = show_entry(entry_id, original)
    d["raw"] = [
        [escape_bytes(k, 200), escape_bytes(v)] for k, v in zip(flat[::2], flat[1::2], strict=False)
    ]
    return d
