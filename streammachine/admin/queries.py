"""Read-only views of streams and consumer groups: the queries behind `streammachine streams|tail`,
the dashboard and the MCP tools (dead letters are read by `streammachine.admin.deadletters`, the
running instances by `streammachine.admin.instances`).

Every function takes a redis-py asyncio client (`RedisConnection.client`) or a `RedisConnection`,
returns plain dicts with stable keys and str values (bytes decoded as UTF-8, bad bytes replaced),
and never prints. Describing many streams costs three pipelined round trips, not three per stream.

Lag (entries not yet delivered to a group): Redis 7 reports it in XINFO GROUPS. Redis 6.2 does not,
so it is counted here from the group's last-delivered id: exact when the group is caught up or has
read nothing of the current stream, else by counting at most `lag_scan_limit` entries after it
inside Redis (a Lua script: no entry crosses the wire); beyond that, and where scripts are not
allowed, `lag` is None, meaning "more than we counted".
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .. import keys
from ..codec import as_text, parse_entry_id
from ..connection import RedisConnection
from ..exceptions import ConfigError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "MAX_NAME_CHARS",
    "check_stream",
    "entry_dict",
    "list_consumers",
    "list_streams",
    "read_entries",
    "server_info",
    "stream_info",
]

# Counts the entries after the group's last-delivered id, capped, without sending them back.
#: The longest stream, group or app name the readers show; longer ones are left out.
MAX_NAME_CHARS = 1024
_PARTITION_RE = re.compile(r"(.+):p(\d+)")
_LAG_LUA = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])"


def client_of(client: aioredis.Redis | RedisConnection) -> Any:
    """The redis-py client of a RedisConnection, or the client itself (Any: redis-py's
    annotations mix sync and async return types; callers get typed dicts)."""
    return client.client if isinstance(client, RedisConnection) else client


_c = client_of


def _name(value: Any) -> str:
    """A key or group name as text; bytes that are not UTF-8 are shown escaped (`\\xff`), so
    such a name is listed, and distinguishable from its neighbours, instead of left out."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in (raw or {}).items()}


def entry_dict(stream: str, entry_id: Any, fields: Any) -> dict[str, Any]:
    """One stream entry as `{"stream", "id", "fields"}` with str keys and values."""
    return {"stream": stream, "id": as_text(entry_id), "fields": _fields(fields)}


async def server_info(client: aioredis.Redis | RedisConnection) -> dict[str, Any]:
    """PING the server and read its version: `{"redis_version", "latency_ms"}`.

    Example:
        >>> await server_info(conn.client)  # doctest: +SKIP
        {'redis_version': '7.2.4', 'latency_ms': 0.21}
    """
    c = _c(client)
    t0 = time.perf_counter()
    await c.ping()
    latency_ms = round((time.perf_counter() - t0) * 1000.0, 3)
    try:
        version: str | None = as_text((await c.info("server")).get("redis_version"))
    except ResponseError:  # memory:// (fakeredis) has no INFO
        version = None
    return {"redis_version": version, "latency_ms": latency_ms}


async def check_stream(client: aioredis.Redis | RedisConnection, stream: str) -> bool:
    """True when `stream` is a stream, False when the key does not exist.

    Raises:
        ConfigError: the key holds another type (it would fail with WRONGTYPE).

    Example:
        >>> await check_stream(conn.client, "orders")  # doctest: +SKIP
        True
    """
    kind = as_text(await _c(client).type(stream))
    if kind == "none":
        return False
    if kind != "stream":
        raise ConfigError(f"key {stream!r} holds a {kind}, not a stream: use another name")
    return True


async def _describe(
    c: Any, names: Sequence[str | bytes], lag_scan_limit: int
) -> list[dict[str, Any]]:
    """Describe streams in three pipelined round trips; keys that are not streams are left out.

    `names` are the names as Redis has them (bytes from SCAN): every query uses them, so a name
    that is not UTF-8 is described too, under its escaped text (see `_name`)."""
    async with c.pipeline(transaction=False) as pipe:
        for key in names:
            pipe.type(key)
            pipe.xinfo_stream(key)
        replies = await pipe.execute(raise_on_error=False)
    infos: list[dict[str, Any]] = []
    raw_keys: list[str | bytes] = []
    for key, kind, info in zip(names, replies[::2], replies[1::2], strict=True):
        if as_text(kind) != "stream" or isinstance(info, Exception):
            continue
        first, last = info.get("first-entry"), info.get("last-entry")
        raw_keys.append(key)
        infos.append(
            {
                "stream": _name(key),
                "length": int(info["length"]),
                "first_id": as_text(first[0]) if first else None,
                "last_id": as_text(last[0]) if last else None,
                "last_generated_id": as_text(info.get("last-generated-id", "0-0")),
                "groups": [],
                "_groups": int(info.get("groups", 0)),
            }
        )
    with_groups = [(i, k) for i, k in zip(infos, raw_keys, strict=True) if i.pop("_groups")]
    if not with_groups:
        return infos
    async with c.pipeline(transaction=False) as pipe:
        for _, key in with_groups:
            pipe.xinfo_groups(key)
        all_groups = await pipe.execute(raise_on_error=False)
    todo: list[tuple[dict[str, Any], str]] = []  # (group dict, what the next reply is for)
    async with c.pipeline(transaction=False) as pipe:
        for (info, key), groups in zip(with_groups, all_groups, strict=True):
            for g in [] if isinstance(groups, Exception) else groups:
                group = _group(info, g)
                info["groups"].append(group)
                if group["pending"]:
                    pipe.xpending_range(key, g["name"], "-", "+", 1)
                    todo.append((group, "oldest"))
                if group["lag"] is None:
                    pipe.eval(_LAG_LUA, 1, key, group["last_delivered_id"], lag_scan_limit + 1)
                    todo.append((group, "lag"))
                part = _PARTITION_RE.fullmatch(info["stream"])
                if (
                    part is not None
                ):  # a partition: who owns it (see streammachine.consume.partitions)
                    pipe.get(keys.partition_lease(part[1], group["name"], int(part[2])))
                    todo.append((group, "owner"))
        replies = await pipe.execute(raise_on_error=False) if todo else []
    for (group, what), reply in zip(todo, replies, strict=True):
        if isinstance(reply, Exception):
            continue
        if what == "oldest" and reply:
            group["oldest_pending_id"] = as_text(reply[0]["message_id"])
            group["oldest_pending_idle_ms"] = int(reply[0]["time_since_delivered"])
        elif what == "lag" and int(reply) <= lag_scan_limit:
            group["lag"] = int(reply)
        elif what == "owner" and reply:
            group["owner"] = as_text(reply).split("/")[0]
    return infos


def _group(info: dict[str, Any], g: dict[str, Any]) -> dict[str, Any]:
    last_delivered = as_text(g.get("last-delivered-id", "0-0"))
    lag = g.get("lag")  # Redis >= 7; None there when it cannot tell
    group: dict[str, Any] = {
        "name": _name(g["name"]),
        "consumers": int(g.get("consumers", 0)),
        "pending": int(g.get("pending", 0)),
        "last_delivered_id": last_delivered,
        "lag": None if lag is None else int(lag),
        "oldest_pending_id": None,
        "oldest_pending_idle_ms": None,
        "owner": None,  # a partition's owning process (`<host>-<pid>-<random>`)
    }
    if group["lag"] is None:
        # Exact without a scan: caught up, or nothing of the current stream read yet.
        if not info["length"] or parse_entry_id(last_delivered) >= parse_entry_id(info["last_id"]):
            group["lag"] = 0
        elif parse_entry_id(last_delivered) < parse_entry_id(info["first_id"]):
            group["lag"] = info["length"]
    return group


async def stream_info(
    client: aioredis.Redis | RedisConnection, stream: str, *, lag_scan_limit: int = 10_000
) -> dict[str, Any] | None:
    """Length, first/last id and per-group figures of one stream; None when the key is missing.

    Returns:
        `{"stream", "length", "first_id", "last_id", "last_generated_id", "groups": [{"name",
        "consumers", "pending", "last_delivered_id", "lag", "oldest_pending_id",
        "oldest_pending_idle_ms"}]}`. `lag` is None when it is more than `lag_scan_limit` on
        Redis 6.2 (see the module docstring); `oldest_pending_idle_ms` is the time since the
        lowest pending id was last delivered.

    Raises:
        ConfigError: the key exists and is not a stream.

    Example:
        >>> info = await stream_info(conn.client, "orders")  # doctest: +SKIP
        >>> info["groups"][0]["lag"]  # doctest: +SKIP
        0
    """
    c = _c(client)
    if not await check_stream(c, stream):
        return None
    found = await _describe(c, [stream], lag_scan_limit)
    return found[0] if found else None


async def list_streams(
    client: aioredis.Redis | RedisConnection,
    pattern: str = "*",
    limit: int = 1000,
    *,
    lag_scan_limit: int = 10_000,
) -> list[dict[str, Any]]:
    """Every stream whose name matches the glob `pattern` (SCAN TYPE stream, never KEYS), sorted
    by name, at most `limit` of them, each described as by `stream_info`.

    Example:
        >>> [s["stream"] for s in await list_streams(conn.client, "orders*")]  # doctest: +SKIP
        ['orders', 'orders:dead']
    """
    c = _c(client)
    names: dict[str, str | bytes] = {}  # shown name -> the key as Redis has it
    async for key in c.scan_iter(match=pattern, count=1000, _type="stream"):
        if len(key) > MAX_NAME_CHARS:  # someone's huge key name: left out, as everywhere
            continue
        names[_name(key)] = key
        if len(names) >= limit:
            break
    ordered = [names[n] for n in sorted(names)]
    out: list[dict[str, Any]] = []
    for start in range(0, len(ordered), 200):
        out += await _describe(c, ordered[start : start + 200], lag_scan_limit)
    return out


async def list_consumers(
    client: aioredis.Redis | RedisConnection, stream: str, group: str
) -> list[dict[str, Any]]:
    """The consumers of `group`: `[{"name", "pending", "idle_ms"}]`.

    Example:
        >>> await list_consumers(conn.client, "orders", "billing")  # doctest: +SKIP
        [{'name': 'host-42-bill-0', 'pending': 3, 'idle_ms': 120}]
    """
    reply = await _c(client).xinfo_consumers(stream, group)
    return [
        {"name": as_text(r["name"]), "pending": int(r["pending"]), "idle_ms": int(r["idle"])}
        for r in reply
    ]


async def read_entries(
    client: aioredis.Redis | RedisConnection,
    stream: str,
    *,
    after: str | None = None,
    count: int = 10,
) -> list[dict[str, Any]]:
    """Entries of `stream` as `{"stream", "id", "fields"}`, oldest first: the last `count`, or
    the first `count` after id `after` (exclusive; "0" reads from the start, "$" reads nothing).

    Example:
        >>> await read_entries(conn.client, "orders", count=1)  # doctest: +SKIP
        [{'stream': 'orders', 'id': '1700000000000-0', 'fields': {'id': '7'}}]
    """
    c = _c(client)
    if after is None:
        entries = list(reversed(await c.xrevrange(stream, "+", "-", count=count)))
    elif after == "$":
        entries = []
    elif after in ("0", "0-0", "-"):
        entries = await c.xrange(stream, "-", "+", count=count)
    else:
        entries = await c.xrange(stream, f"({after}", "+", count=count)
    return [entry_dict(stream, i, f) for i, f in entries]
