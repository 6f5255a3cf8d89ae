"""The running instances: the heartbeats every App writes (`streammachine.presence.heartbeat`), read
back, checked and capped — the one reader behind `health`, `top`, `agents`, the dashboard,
`/metrics` and the MCP tools.

Anything may sit under `streammachine:instances:` (another version, a hand-written key, another
tenant), so every record is untrusted: one that is not a JSON object of the `Heartbeat` schema, is
larger than `MAX_RECORD_BYTES`, has a name longer than `MAX_NAME_CHARS` or more than `MAX_AGENTS`
agents or `MAX_TIMERS` timers is skipped — everywhere alike — counted, and logged once. A
heartbeat's age comes from its key's remaining TTL, so no other host's clock matters.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .. import keys
from ..codec import as_text
from ..presence.heartbeat import Heartbeat
from .queries import MAX_NAME_CHARS, client_of

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..connection import RedisConnection

__all__ = [
    "MAX_AGENTS",
    "MAX_INSTANCES",
    "MAX_NAME_CHARS",
    "MAX_RECORD_BYTES",
    "check_heartbeat",
    "list_instances",
    "read_instances",
    "unowned_partitions",
]

log = logging.getLogger("streammachine.admin")

#: At most this many instance keys are read (sorted by key).
MAX_INSTANCES = 1000
#: A record larger than this is not read at all (its size is asked first).
MAX_RECORD_BYTES = 256 * 1024
#: The most agents and timers one record may list.
MAX_AGENTS = 100
MAX_TIMERS = 100
_HEARTBEAT_FIELDS = ("heartbeat_at", "heartbeat", "ts", "last_seen", "updated_at", "time")
_warned: set[str] = set()  # keys whose bad record was logged (once per key, bounded)


def _oversized(data: dict[str, Any]) -> str | None:
    """Why a record's names or lists are beyond the caps, or None."""
    for name in ("id", "app", "host", "version"):
        value = data.get(name)
        if isinstance(value, str) and len(value) > MAX_NAME_CHARS:
            return f"its {name} is {len(value)} characters long (at most {MAX_NAME_CHARS})"
    for what, limit in (("agents", MAX_AGENTS), ("timers", MAX_TIMERS)):
        items = data.get(what)
        if isinstance(items, list):
            if len(items) > limit:
                return f"it lists {len(items)} {what} (at most {limit})"
            for item in items:
                for k, v in item.items() if isinstance(item, dict) else ():
                    if isinstance(v, str) and len(v) > MAX_NAME_CHARS:
                        return f"an entry of {what} has a {k} of {len(v)} characters"
    return None


def check_heartbeat(found: dict[str, Any]) -> dict[str, Any] | str:
    """A record as read (`{"format": "json", "data": {...}}`) as a checked heartbeat (its fields
    with the schema's defaults filled in), or why it is not a valid one.

    Fields the schema does not know (a newer version's, such as an agent's `paused`) are kept.

    Example:
        >>> check_heartbeat({"format": "json", "data": {"agents": [1]}})  # doctest: +ELLIPSIS
        'Expected `object`, got `int` - at `$.agents[0]`'
    """
    if found.get("format") != "json":
        return "not a JSON object"
    data = found["data"]
    too_big = _oversized(data)
    if too_big:
        return too_big
    try:
        beat = msgspec.convert(data, Heartbeat)
    except msgspec.ValidationError as exc:
        return str(exc)
    checked = {k: v for k, v in msgspec.to_builtins(beat).items() if v is not None}
    for what in ("agents", "timers"):
        raw = data.get(what) or []
        checked[what] = [{**r, **c} for r, c in zip(raw, checked.get(what, []), strict=True)]
    for agent in checked["agents"]:
        if not isinstance(agent.get("paused", False), bool):
            del agent["paused"]  # only a bool is a state
    return {**data, **checked}


async def _read_raw(c: Any, limit: int) -> list[tuple[str, Any, Any, str | None]]:
    """`(key, value or None, pttl, why it was not read)` of the instance keys: the values of
    strings up to the size cap."""
    found: list[str] = []
    async for key in c.scan_iter(match=keys.INSTANCES + "*", count=1000):
        found.append(as_text(key))
        if len(found) >= limit:
            break
    if not found:
        return []
    found.sort()
    async with c.pipeline(transaction=False) as pipe:
        for key in found:
            pipe.type(key)
            pipe.pttl(key)
            pipe.strlen(key)
        replies = await pipe.execute(raise_on_error=False)
    small = [
        (k, kind, pttl, size)
        for k, kind, pttl, size in zip(
            found, replies[::3], replies[1::3], replies[2::3], strict=True
        )
    ]
    wanted = [
        k
        for k, kind, _, size in small
        if as_text(kind) == "string" and isinstance(size, int) and size <= MAX_RECORD_BYTES
    ]
    values: dict[str, Any] = {}
    if wanted:
        async with c.pipeline(transaction=False) as pipe:
            for key in wanted:
                pipe.get(key)
            for key, value in zip(wanted, await pipe.execute(raise_on_error=False), strict=True):
                values[key] = None if isinstance(value, Exception) else value
    out: list[tuple[str, Any, Any, str | None]] = []
    for key, kind, pttl, size in small:
        if as_text(kind) == "none":
            continue  # expired between SCAN and TYPE
        if as_text(kind) == "string" and isinstance(size, int) and size > MAX_RECORD_BYTES:
            out.append((key, None, pttl, f"it is {size} bytes (at most {MAX_RECORD_BYTES})"))
        else:
            out.append((key, values.get(key), pttl, None))
    return out


def _parse(key: str, raw: Any, pttl_ms: Any, now: float) -> tuple[dict[str, Any] | str, Any]:
    """The checked record of one key (or why not) and its age in seconds."""
    try:
        data = json.loads(raw) if isinstance(raw, bytes | str) else None
    except (ValueError, RecursionError):
        data = None
    record = check_heartbeat(
        {"format": "json", "data": data} if isinstance(data, dict) else {"format": None}
    )
    if isinstance(record, str):
        return record, None
    beat = next((record[k] for k in _HEARTBEAT_FIELDS if k in record), None)
    try:
        ts: float | None = float(beat) if beat is not None else None
    except (TypeError, ValueError):
        ts = None
    if ts is not None and ts > 1e11:  # milliseconds
        ts /= 1000.0
    age_s = None if ts is None else max(0.0, now - ts)
    ttl_s = record.get("ttl_s")
    if isinstance(ttl_s, int | float) and isinstance(pttl_ms, int) and pttl_ms >= 0:
        # A heartbeat that refreshes the key's TTL: its age needs no other host's clock.
        age_s = max(0.0, float(ttl_s) - pttl_ms / 1000.0)
    return record, None if age_s is None else round(age_s, 3)


async def read_instances(
    client: aioredis.Redis | RedisConnection, limit: int = MAX_INSTANCES
) -> tuple[list[dict[str, Any]], list[str]]:
    """The valid instance records, sorted by app and id, and the keys of the records skipped.

    Each record is the heartbeat's fields plus `key`, `heartbeat_age_s` (None when it cannot be
    told) and `fresh` (it beat within three intervals; a late one has a blocked loop or a hung
    connection, a dead one ages out).

    Example:
        >>> good, bad = await read_instances(client)  # doctest: +SKIP
        >>> bad  # doctest: +SKIP
        ['streammachine:instances:junk']
    """
    out: list[dict[str, Any]] = []
    bad: list[str] = []
    now = time.time()
    for key, raw, pttl, why in await _read_raw(client_of(client), limit):
        record, age = (why, None) if why else _parse(key, raw, pttl, now)
        if isinstance(record, str):
            bad.append(key)
            if key not in _warned:
                if len(_warned) > 10_000:
                    _warned.clear()
                _warned.add(key)
                log.warning("skipping the instance record %s: %s", key[:200], record[:300])
            continue
        if not isinstance(record.get("id"), str):
            record["id"] = key[len(keys.INSTANCES) :]
        interval = record.get("interval_s") or 2.0
        record |= {
            "key": key,
            "heartbeat_age_s": age,
            "fresh": age is None or age <= 3 * interval + 1,
        }
        out.append(record)
    out.sort(key=lambda r: (str(r.get("app") or ""), str(r.get("id") or "")))
    return out, bad


async def list_instances(
    client: aioredis.Redis | RedisConnection, limit: int = MAX_INSTANCES
) -> list[dict[str, Any]]:
    """Every running instance's checked heartbeat (see `read_instances`; invalid ones left out).

    Example:
        >>> [i["app"] for i in await list_instances(conn)]  # doctest: +SKIP
        ['orders']
    """
    return (await read_instances(client, limit))[0]


#: At most this many partitioned (or exclusive) agents are checked for owners, each with at most
#: `MAX_OWNED_PARTITIONS` partitions (a heartbeat claiming more is reported, not read).
MAX_OWNED = 50
MAX_OWNED_PARTITIONS = 1024


async def unowned_partitions(
    client: aioredis.Redis | RedisConnection, instances: list[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """For readiness: the partitioned and exclusive agents the running `instances` report, each
    with partitions no live process owns (`"ticks/prices: 3, 5"`), and what was read back from
    the ownership keys and ignored (`Ownership.problems`). A paused agent owes no owner.

    Example:
        >>> await unowned_partitions(conn, await list_instances(conn))  # doctest: +SKIP
        (['ticks/prices: 3'], [])
    """
    from ..consume.ownership import ownership

    wanted: dict[tuple[str, str], int | None] = {}
    paused: dict[tuple[str, str], bool] = {}
    for instance in instances:
        for agent in instance.get("agents") or []:
            if not (agent.get("partitions") or agent.get("exclusive")):
                continue
            where = (str(agent.get("stream")), str(agent.get("group")))
            wanted.setdefault(where, agent.get("partitions") or None)
            paused[where] = paused.get(where, True) and bool(agent.get("paused"))
    unowned: list[str] = []
    problems: list[str] = []
    for (stream, group), partitions in list(wanted.items())[:MAX_OWNED]:
        if paused[(stream, group)]:
            continue
        if partitions is not None and not 0 < partitions <= MAX_OWNED_PARTITIONS:
            problems.append(f"{stream}/{group}: a heartbeat reports {partitions} partitions")
            continue
        found = await ownership(client_of(client), stream, group, partitions)
        problems += found.problems
        if found.unowned:
            which = ", ".join(str(i) for i in found.unowned)
            unowned.append(f"{stream}/{group}: {which}")
    return unowned, problems
