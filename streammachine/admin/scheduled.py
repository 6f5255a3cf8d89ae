"""Delayed entries waiting in Redis (`send(..., delay_s=)`): list them — a member that does not
decode (written by hand, by another tool) is a bad row, never a crash — and act on one: promote it
(append it to its stream now, removing it in the same script) or cancel it.

The sorted set and its member format are `streammachine.schedule.delayed`'s
(`keys.scheduled(namespace)`, members written by `encode_entry`).

Example:
    >>> rows = (await list_scheduled(conn, "default"))["entries"]  # doctest: +SKIP
    >>> await promote_scheduled(conn, "default", [rows[0]["id"]])  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import keys
from ..codec import as_text
from ..exceptions import ConfigError
from ..schedule.delayed import decode_entry
from .audit import Actor, record_action
from .inspector import escape_bytes

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["cancel_scheduled", "list_scheduled", "promote_scheduled"]

_ID = re.compile(r"^[0-9a-f]{24}$")
#: Due times outside 1970..9999 are shown as bad rows (a datetime cannot hold them).
_MAX_DUE_MS = 253_402_300_799_999

# KEYS: [scheduled, stream]; ARGV: [member, maxlen, field, value, ...]. Appends, then removes:
# an append Redis refuses leaves the entry scheduled.
PROMOTE_LUA = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0, 'gone'} end
local maxlen, ok = tonumber(ARGV[2]), nil
if maxlen > 0 then
  ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 3))
elseif maxlen < 0 then
  ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', -maxlen, '*', unpack(ARGV, 3))
else
  ok = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
if type(ok) == 'table' and ok.err then return {0, ok.err} end
redis.call('ZREM', KEYS[1], ARGV[1])
return {1, ok}
"""


def _row(member: bytes, score: Any) -> dict[str, Any]:
    """One member as a row; a member that does not decode is a row with `bad` saying why."""
    try:
        due = float(score)
        if not 0 <= due <= _MAX_DUE_MS:
            raise ValueError(f"its due time {due!r} ms is outside the years 1970 to 9999")
        e = decode_entry(member, due)
        if not _ID.match(e.id):
            raise ValueError("it does not start with a schedule id")
        return e.as_dict() | {"stream": as_text(e.stream), "bad": None}
    except Exception as exc:  # any garbage: a bad row, not a crash
        reason = f"{type(exc).__name__}: {exc}"[:300]
        shown = escape_bytes(member, 200)
        bad = f"not a delayed entry StreamMachine can read ({reason}); member {shown}"
        row = {"id": escape_bytes(member[:24], 60), "stream": None, "due_ms": None}
        return row | {"fields": {}, "bad": bad}


async def list_scheduled(
    conn: RedisConnection,
    namespace: str = "default",
    *,
    stream: str | None = None,
    count: int = 100,
) -> dict[str, Any]:
    """What waits in `namespace`, soonest first: at most `count` rows (of `stream` only when given).

    Returns:
        `{"namespace", "total", "entries": [{"id", "stream", "due_ms", "fields", "bad"}]}`;
        `bad` is None for a good row and says why for a member that does not decode.
    """
    c = conn.client
    key = keys.scheduled(namespace)
    kind = as_text(await c.type(key))
    if kind == "none":
        return {"namespace": namespace, "total": 0, "entries": []}
    if kind != "zset":
        raise ConfigError(f"{key} holds a {kind}, not the sorted set of delayed entries")
    total = int(await c.zcard(key))
    rows: list[dict[str, Any]] = []
    start, page = 0, 1000
    while len(rows) < count and start < total:
        reply: Any = await c.zrange(key, start, start + page - 1, withscores=True)
        for member, score in reply:
            row = _row(member, score)
            if stream is None or row["stream"] == stream:
                rows.append(row)
                if len(rows) >= count:
                    break
        if len(reply) < page:
            break
        start += page
    return {"namespace": namespace, "total": total, "entries": rows}


def _check_ids(ids: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        raise ConfigError("say which delayed entries: give at least one schedule id")
    for i in wanted:
        if not isinstance(i, str) or not _ID.match(i):
            raise ConfigError(
                f"{str(i)[:60]!r} is not a schedule id (24 hex digits, as `scheduled` prints them)"
            )
    return wanted


def _raw_stream(member: bytes) -> bytes:
    """The stream name a member holds, as its bytes (`decode_entry` gives it as text)."""
    colon = member.index(b":", 25)
    return member[colon + 1 : colon + 1 + int(member[25:colon])]


async def _find(conn: RedisConnection, key: str, entry_id: str) -> bytes | None:
    """The member whose schedule id is `entry_id` (ids are unique), or None."""
    async for member in conn.client.zscan_iter(key, match=f"{entry_id}|*", count=1000):
        raw = member[0] if isinstance(member, tuple) else member
        return bytes(raw)
    return None


async def promote_scheduled(
    conn: RedisConnection,
    namespace: str,
    ids: Sequence[str],
    *,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Deliver delayed entries now: each is appended to its stream and removed from the schedule
    in one script. On a Redis Cluster, where the stream may live on another node, it is made due
    now instead and a running app's mover appends it.

    Returns:
        `{"namespace", "promoted": [{"id", "stream", "new_id"}], "stayed": [{"id", "reason"}]}`.
    """
    wanted = _check_ids(ids)
    key = keys.scheduled(namespace)
    out: dict[str, Any] = {"namespace": namespace, "promoted": [], "stayed": []}
    for entry_id in wanted:
        member = await _find(conn, key, entry_id)
        if member is None:
            out["stayed"].append({"id": entry_id, "reason": "no such delayed entry (delivered?)"})
            continue
        try:
            e = decode_entry(member, 0)
        except Exception as exc:  # a member that does not decode cannot be delivered
            out["stayed"].append({"id": entry_id, "reason": f"it does not decode ({exc})"})
            continue
        fields = [x for kv in e.fields for x in kv]
        stream_key = _raw_stream(member)
        if not conn.same_slot([key, e.stream]):
            await conn.client.zadd(key, {member: 0}, xx=True)
            out["promoted"].append({"id": entry_id, "stream": e.stream, "new_id": None})
            continue
        try:
            ok, answer = await conn.script(PROMOTE_LUA)(
                keys=[key, stream_key], args=[member, e.maxlen, *fields]
            )
        except Exception as exc:  # e.g. too many fields for one script call
            out["stayed"].append({"id": entry_id, "reason": str(exc)[:300]})
            continue
        if int(ok):
            out["promoted"].append({"id": entry_id, "stream": e.stream, "new_id": as_text(answer)})
        else:
            reason = "delivered meanwhile" if as_text(answer) == "gone" else as_text(answer)
            out["stayed"].append({"id": entry_id, "reason": reason})
    if out["promoted"]:
        done = [p["id"] for p in out["promoted"]]
        await record_action(
            conn, actor or Actor("api", "python"), "scheduled.promote", namespace, len(done),
            {"ids": done[:50]},
        )  # fmt: skip
    return out


async def cancel_scheduled(
    conn: RedisConnection,
    namespace: str,
    ids: Sequence[str],
    *,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Remove delayed entries before they are due.

    Returns:
        `{"namespace", "cancelled": [ids], "missing": [ids]}`.
    """
    wanted = _check_ids(ids)
    key = keys.scheduled(namespace)
    out: dict[str, Any] = {"namespace": namespace, "cancelled": [], "missing": []}
    for entry_id in wanted:
        member = await _find(conn, key, entry_id)
        removed = member is not None and bool(await conn.client.zrem(key, member))
        out["cancelled" if removed else "missing"].append(entry_id)
    if out["cancelled"]:
        await record_action(
            conn, actor or Actor("api", "python"), "scheduled.cancel", namespace,
            len(out["cancelled"]), {"ids": out["cancelled"][:50]},
        )  # fmt: skip
    return out
