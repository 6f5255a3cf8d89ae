"""Pending entries (delivered to a consumer group, not acknowledged yet): who holds each, for how
long, how often it was delivered, and whether its owner's process is alive; and the two ways an
operator takes one away from its consumer — send it to the dead letters, or hand it back so the
group delivers it again.

Both take the entry from a consumer, so both fence that consumer in the same script
(`streammachine.admin.fence`). Handing back moves the entry to the consumer `RELEASED_CONSUMER`
(which belongs to no process) with a long idle time, so the next claim of a live consumer of the
group takes it — a delivery like any retry — without counting the hand-back as a delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import keys
from ..codec import as_text
from ..exceptions import ConfigError
from ..presence.liveness import is_live, live_prefixes
from .audit import Actor, record_action
from .deadletters import dead_letter_stream
from .fence import fenced_script
from .ids import check_entry_id
from .queries import check_stream

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["RELEASED_CONSUMER", "dead_letter_pending", "hand_back_pending", "list_pending"]

#: The consumer that holds entries handed back until a live consumer claims them.
RELEASED_CONSUMER = "streammachine-released"
#: The idle time a handed-back entry gets (ten years): past any agent's `claim_idle_ms`.
RELEASED_IDLE_MS = 10 * 365 * 86_400_000
MAX_GROUPS = 50

# KEYS: [stream, dead-letter stream, fence]; ARGV: [group, id, error, expected owner or ''].
DEAD_LETTER_LUA = fenced_script("""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return {0, 'not pending'} end
local owner, deliveries = p[1][2], p[1][4]
if ARGV[4] ~= '' and owner ~= ARGV[4] then return {0, 'now held by ' .. owner} end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local fields = {}
if #e > 0 then fields = e[1][2] end
local t = redis.call('TIME')
local meta = {'error', ARGV[3], 'error_type', 'OperatorDeadLetter', 'traceback', '',
  'deliveries', tostring(deliveries), 'source_stream', KEYS[1], 'source_id', ARGV[2],
  'group', ARGV[1], 'failed_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2]))}
for i = 1, #meta do fields[#fields + 1] = meta[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
fence(KEYS[3], owner)
return {1, owner}
""")

# KEYS: [stream, fence]; ARGV: [group, id, released consumer, idle ms, expected owner or ''].
HAND_BACK_LUA = fenced_script("""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return {0, 'not pending'} end
local owner, deliveries = p[1][2], p[1][4]
if ARGV[5] ~= '' and owner ~= ARGV[5] then return {0, 'now held by ' .. owner} end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4],
  'RETRYCOUNT', deliveries, 'JUSTID')
fence(KEYS[2], owner)
return {1, owner}
""")


async def list_pending(
    conn: RedisConnection,
    stream: str,
    group: str | None = None,
    *,
    consumer: str | None = None,
    count: int = 100,
    min_idle_ms: int | None = None,
) -> dict[str, Any]:
    """Per group: the pending count, each consumer's share and whether its process is alive,
    and the oldest `count` pending entries (of `consumer` only, idle at least `min_idle_ms`).

    Returns:
        `{"stream", "exists", "groups": [{"group", "pending", "consumers": [{"name", "pending",
        "alive"}], "entries": [{"id", "consumer", "idle_ms", "deliveries", "alive"}]}]}`.
        `alive` is whether the consumer's process has a fresh heartbeat (see
        `streammachine.presence.liveness`).

    Example:
        >>> (await list_pending(conn, "orders", "billing"))["groups"][0]["pending"]  # doctest: +SKIP
        3
    """
    c = conn.client
    if not await check_stream(conn, stream):
        return {"stream": stream, "exists": False, "groups": []}
    names = [group] if group else [as_text(g["name"]) for g in await c.xinfo_groups(stream)]
    live = await live_prefixes(conn)
    groups = []
    for name in names[:MAX_GROUPS]:
        summary = await c.xpending(stream, name)
        rows = await c.xpending_range(
            stream, name, min="-", max="+", count=count, consumername=consumer, idle=min_idle_ms
        )
        groups.append(
            {
                "group": name,
                "pending": int(summary["pending"]),
                "consumers": [
                    {
                        "name": as_text(x["name"]),
                        "pending": int(x["pending"]),
                        "alive": is_live(as_text(x["name"]), live),
                    }
                    for x in summary["consumers"]
                ],
                "entries": [
                    {
                        "id": as_text(r["message_id"]),
                        "consumer": as_text(r["consumer"]),
                        "idle_ms": int(r["time_since_delivered"]),
                        "deliveries": int(r["times_delivered"]),
                        "alive": is_live(as_text(r["consumer"]), live),
                    }
                    for r in rows
                ],
            }
        )
    return {"stream": stream, "exists": True, "groups": groups}


async def _take(
    conn: RedisConnection,
    stream: str,
    group: str,
    ids: Sequence[str],
    run: Any,
) -> dict[str, Any]:
    """Apply `run(entry_id)` to each id; `{"done": [{"id", "consumer"}], "stayed": [{"id",
    "reason"}]}`."""
    wanted = list(dict.fromkeys(check_entry_id(i) for i in ids))
    if not wanted:
        raise ConfigError("say which pending entries: give at least one id")
    if not await check_stream(conn, stream):
        raise ConfigError(f"stream {stream!r} does not exist")
    groups = {as_text(g["name"]) for g in await conn.client.xinfo_groups(stream)}
    if group not in groups:
        raise ConfigError(f"stream {stream!r} has no group {group!r}: see `streammachine streams`")
    done, stayed = [], []
    for entry_id in wanted:
        ok, answer = await run(entry_id)
        if int(ok):
            done.append({"id": entry_id, "consumer": as_text(answer)})
        else:
            reason = as_text(answer)
            if reason == "not pending":
                reason = f"it is not pending in group {group!r} (acked, or a wrong id)"
            stayed.append({"id": entry_id, "reason": reason})
    return {"stream": stream, "group": group, "done": done, "stayed": stayed}


async def dead_letter_pending(
    conn: RedisConnection,
    stream: str,
    group: str,
    ids: Sequence[str],
    *,
    consumer: str | None = None,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Move pending entries to the stream's dead letters (their fields as stored, then the
    dead-letter fields: error `dead-lettered by an operator`, error type `OperatorDeadLetter`)
    and acknowledge them; each one's consumer is fenced in the same script. With `consumer`,
    only while that consumer holds the entry.

    Example:
        >>> await dead_letter_pending(conn, "orders", "billing", ["1700000000000-0"])  # doctest: +SKIP
        {'stream': 'orders', 'group': 'billing', 'done': [...], 'stayed': []}
    """
    actor = actor or Actor("api", "python")
    dead = dead_letter_stream(stream)
    fence_key = keys.fence(stream, group)
    if not conn.same_slot([stream, dead, fence_key]):
        raise ConfigError(
            f"on a Redis Cluster {stream!r} and {dead!r} must share a slot to dead-letter "
            "atomically: name the stream with a hash tag, e.g. {orders}"
        )
    error = f"dead-lettered by an operator ({actor.interface}: {actor.who})"
    script = conn.script(DEAD_LETTER_LUA)

    async def run(entry_id: str) -> Any:
        args = [group, entry_id, error, consumer or ""]
        return await script(keys=[stream, dead, fence_key], args=args)

    result = await _take(conn, stream, group, ids, run)
    if result["done"]:
        detail = {"ids": [d["id"] for d in result["done"]][:50], "group": group}
        await record_action(
            conn, actor, "pending.dead_letter", f"{stream}/{group}", len(result["done"]), detail
        )
    return result


async def hand_back_pending(
    conn: RedisConnection,
    stream: str,
    group: str,
    ids: Sequence[str],
    *,
    consumer: str | None = None,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Take pending entries from their consumers so the group delivers them again (to the next
    live consumer that claims; see the module docstring); each one's consumer is fenced in the
    same script. With `consumer`, only while that consumer holds the entry.

    Example:
        >>> await hand_back_pending(conn, "orders", "billing", ["1700000000000-0"])  # doctest: +SKIP
    """
    actor = actor or Actor("api", "python")
    fence_key = keys.fence(stream, group)
    script = conn.script(HAND_BACK_LUA)

    async def run(entry_id: str) -> Any:
        args: list[str | int] = [
            group,
            entry_id,
            RELEASED_CONSUMER,
            RELEASED_IDLE_MS,
            consumer or "",
        ]
        return await script(keys=[stream, fence_key], args=args)

    result = await _take(conn, stream, group, ids, run)
    if result["done"]:
        detail = {"ids": [d["id"] for d in result["done"]][:50], "group": group}
        await record_action(
            conn, actor, "pending.hand_back", f"{stream}/{group}", len(result["done"]), detail
        )
    return result
