"""The delayed-entry format: one sorted-set member per entry (`encode_entry`/`decode_entry`), the
commands that schedule one (`schedule_commands`), and the bounds a delayed entry must keep so the
mover (`streammachine.schedule.delayed`) can always deliver it (`MAX_DELAYED_FIELDS`)."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import keys
from ..exceptions import SerializationError

__all__ = [
    "MAX_DELAYED_FIELDS",
    "ScheduledEntry",
    "decode_entry",
    "encode_entry",
    "new_id",
    "schedule_commands",
]

#: Field names (each with its value) one delayed entry may hold. The mover appends an entry in a
#: Lua script, whose stack holds about 8000 values, so a larger entry could never be delivered:
#: a send with more fields is refused (send it now, or split it); an entry with more fields
#: found in Redis (written by hand) goes to the failed set.
MAX_DELAYED_FIELDS = 3000

_counter = itertools.count()
ID_LEN = 24


def new_id() -> str:
    """A new schedule id: 24 hex digits, time first (entries due at the same ms keep the order
    they were scheduled in)."""
    return f"{time.time_ns() + next(_counter) % 1000:016x}{secrets.token_hex(4)}"


def _b(item: Any) -> bytes:
    if type(item) is bytes:
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return str(item).encode()


def encode_entry(
    entry_id: str, stream: str, fields: Sequence[bytes | str], maxlen: int | None = None
) -> bytes:
    """One delayed entry as a sorted-set member: its id, `|`, then `<len>:<bytes>` for the
    stream, the maxlen (0 = none, > 0 approximate, < 0 exact) and each field name and value.

    Length-prefixed bytes keep binary values and field order exact, and a Lua script can read
    them with string.find/sub (fakeredis' Lua, behind `memory://`, has no cmsgpack).

    Raises:
        SerializationError: more than `MAX_DELAYED_FIELDS` fields, or none.

    Example:
        >>> encode_entry("0" * 24, "s", ["k", b"v"])[24:]
        b'|1:s1:01:k1:v'
    """
    pairs = len(fields) // 2
    if pairs > MAX_DELAYED_FIELDS:
        raise SerializationError(
            f"a delayed entry holds at most {MAX_DELAYED_FIELDS} fields, this one has {pairs}: "
            "send it now (without a delay), or split it into smaller entries"
        )
    if pairs < 1:
        raise SerializationError("a delayed entry needs at least one field")
    parts = [entry_id.encode(), b"|"]
    for item in (stream, str(maxlen or 0), *fields):
        raw = _b(item)
        parts.append(b"%d:" % len(raw))
        parts.append(raw)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ScheduledEntry:
    """A delayed entry waiting in Redis."""

    id: str
    stream: str
    due_ms: int
    fields: list[tuple[bytes, bytes]]
    maxlen: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: fields decoded as UTF-8 (bad bytes replaced)."""
        return {
            "id": self.id,
            "stream": self.stream,
            "due_ms": self.due_ms,
            "fields": {
                k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in self.fields
            },
        }


def decode_entry(member: bytes, score: float) -> ScheduledEntry:
    """A sorted-set member written by `encode_entry` (and its score) as a `ScheduledEntry`.

    Raises:
        ValueError: (or an IndexError/UnicodeDecodeError) the member is not one `encode_entry`
            writes, e.g. one written by hand.
    """
    if len(member) <= ID_LEN or member[ID_LEN : ID_LEN + 1] != b"|":
        raise ValueError("it does not start with a schedule id and '|'")
    items: list[bytes] = []
    pos, end = ID_LEN + 1, len(member)
    while pos < end:
        colon = member.index(b":", pos)
        n = int(member[pos:colon])
        if n < 0 or colon + 1 + n > end:
            raise ValueError(f"an item of {n} bytes runs past the member's end")
        items.append(member[colon + 1 : colon + 1 + n])
        pos = colon + 1 + n
    if len(items) < 2:
        raise ValueError("it has no stream name")
    flat = items[2:]
    return ScheduledEntry(
        id=member[:ID_LEN].decode(),
        stream=items[0].decode("utf-8", "replace"),
        due_ms=int(score),
        fields=list(zip(flat[::2], flat[1::2], strict=False)),
        maxlen=int(items[1]),
    )


def flat_fields(fields: Mapping[Any, Any] | Sequence[Any]) -> list[Any]:
    """`{k: v}` or `[k, v, ...]` as `[k, v, ...]`."""
    if isinstance(fields, Mapping):
        return [x for kv in fields.items() for x in kv]
    return list(fields)


def schedule_commands(
    namespace: str,
    stream: str,
    fields: Sequence[bytes | str],
    due: int,
    maxlen: int | None = None,
    entry_id: str | None = None,
) -> list[list[Any]]:
    """The Redis commands that schedule one entry (for a commit that writes them atomically).

    Args:
        namespace: the storage namespace whose movers move it.
        stream: where it goes when due.
        fields: `[k1, v1, k2, v2, ...]`, str or bytes (bytes kept exactly; at most
            `MAX_DELAYED_FIELDS` pairs).
        due: the due time, epoch ms.
        maxlen: trim `stream` when the entry is appended (> 0 approximately, < 0 exactly).
        entry_id: its schedule id (default: a new one).

    Returns:
        A list of commands, each a list of arguments; today one `ZADD` on
        `keys.scheduled(namespace)` (the only key touched).

    Example:
        >>> cmds = schedule_commands("default", "orders", ["id", "7"], 1700000000000)
        >>> cmds[0][0], cmds[0][1]
        ('ZADD', 'streammachine:sched:{default}')
    """
    member = encode_entry(entry_id or new_id(), stream, fields, maxlen)
    return [["ZADD", keys.scheduled(namespace), int(due), member]]
