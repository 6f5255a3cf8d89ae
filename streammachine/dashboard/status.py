"""One read-only snapshot of everything the dashboard, `/metrics` and `top` show.

Streams and groups come from `streammachine.admin.queries`, instances from
`streammachine.admin.instances` and agents' paused state from `streammachine.admin.agents` (the
layer the CLI and MCP tools use); this module adds each group's oldest-pending age and paused
agents, the dead-letter summary, the delayed entries waiting per namespace and recent candles. A
snapshot is a handful of pipelined round trips whatever the number of streams.

Everything here comes from Redis and may have been written by anyone, so the snapshot is capped:
at most `MAX_AGENT_ROWS` agents of instances (later instances are left out and counted), names
as `streammachine.admin.instances` caps them, `MAX_CANDLE_SERIES` candle series whose symbols
are at most `MAX_SYMBOL_CHARS` long.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from .. import keys
from ..admin.agents import agent_rows, paused_agents
from ..admin.instances import read_instances
from ..admin.queries import list_streams
from ..codec import as_text
from ..state.windowing import read_windows

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["CANDLE_FIELDS", "collect_status", "unavailable"]

#: On Redis < 7 lag is counted inside Redis up to this; beyond it a group's lag is None.
LAG_SCAN_LIMIT = 10_000
#: Fields that mark an entry as a candle written by the OHLC consumer.
CANDLE_FIELDS = frozenset({"symbol", "interval_ms", "open", "high", "low", "close"})
#: The most agents (summed over instances) one snapshot lists.
MAX_AGENT_ROWS = 1000
#: Candle series kept, and the longest symbol shown.
MAX_CANDLE_SERIES = 100
MAX_SYMBOL_CHARS = 100


def _id_ms(entry_id: str) -> int:
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return 0


async def collect_status(
    client: aioredis.Redis,
    *,
    max_streams: int = 500,
    candle_entries: int = 2000,
    candles_per_series: int = 60,
) -> dict[str, Any]:
    """Instances, streams with their groups, dead letters and recent candles.

    Returns:
        `{"generated_at_ms", "redis": {"ok", "error"}, "instances", "instances_truncated",
        "bad_heartbeats", "agents" (as `admin.agents.list_agents`), "streams",
        "streams_truncated", "lag_scan_limit", "dead_letters", "scheduled", "candles"}`.
        `scheduled` is `{"count", "oldest_due_ms", "namespaces": [{"namespace", "count",
        "oldest_due_ms"}]}` (oldest = the soonest due time). Streams are as
        `inspect.list_streams` gives them (a group's `lag` is None when above `lag_scan_limit`
        on Redis < 7), plus `dead_letter` and `candles` flags, and each group gets
        `oldest_pending_age_s` (the time since its oldest pending entry was written) and
        `paused_agents` (`app/agent` of the paused agents that read it).
        `bad_heartbeats` counts the instance records left out because they are not valid
        heartbeats (see `admin.instances.read_instances`).

    Args:
        client: a bytes-returning redis-py asyncio client.
        max_streams: at most this many streams (by name); `streams_truncated` says when more exist.
        candle_entries: entries read from the end of each candle stream.
        candles_per_series: candles kept per (stream, symbol, interval).

    Example:
        >>> status = await collect_status(client)  # doctest: +SKIP
        >>> [s["stream"] for s in status["streams"]]  # doctest: +SKIP
        ['orders', 'orders:dead']
    """
    secs, micros = await client.time()
    now_ms = int(secs) * 1000 + int(micros) // 1000
    found, bad_heartbeats = await read_instances(client)
    instances, budget = [], MAX_AGENT_ROWS
    for inst in found:
        budget -= len(inst.get("agents") or [])
        if budget < 0:
            break
        instances.append(inst)
    agents = agent_rows(instances, await paused_agents(client))
    stopped: dict[tuple[Any, Any], list[str]] = {}
    for a in agents:
        if a["paused"]:
            stopped.setdefault((a["stream"], a["group"]), []).append(f"{a['app']}/{a['agent']}")
    streams = await list_streams(client, "*", max_streams + 1, lag_scan_limit=LAG_SCAN_LIMIT)
    truncated = len(streams) > max_streams
    streams = streams[:max_streams]
    for s in streams:
        s["dead_letter"] = s["stream"].endswith(keys.DEAD_SUFFIX)
        for g in s["groups"]:
            g["oldest_pending_age_s"] = _pending_age(g, now_ms)
            g["paused_agents"] = stopped.get((s["stream"], g["name"]), [])
    candle_streams = await _candle_streams(client, [s["stream"] for s in streams])
    for s in streams:
        s["candles"] = s["stream"] in candle_streams
    return {
        "generated_at_ms": now_ms,
        "redis": {"ok": True, "error": None},
        "instances": instances,
        "instances_truncated": len(found) - len(instances),
        "bad_heartbeats": len(bad_heartbeats),
        "agents": agents,
        "streams": streams,
        "streams_truncated": truncated,
        "lag_scan_limit": LAG_SCAN_LIMIT,
        "dead_letters": [
            {
                "stream": s["stream"][: -len(keys.DEAD_SUFFIX)],
                "dead_stream": s["stream"],
                "count": s["length"],
            }
            for s in streams
            if s["dead_letter"]
        ],
        "scheduled": await _scheduled(client),
        "tables": await _tables(client),
        "windows": await read_windows(client, count=False, limit=max_streams),
        "candles": await _candles(client, candle_streams, candle_entries, candles_per_series),
    }


async def _tables(client: aioredis.Redis) -> list[dict[str, Any]]:
    """The tables (`app.table`): name, shards holding keys, keys (at most 100 tables)."""
    from ..state.browse import find_tables, table_count

    found = list((await find_tables(client)).items())[:100]
    return [{"table": n, "shards": len(s), "keys": await table_count(client, n)} for n, s in found]


async def _scheduled(client: aioredis.Redis) -> dict[str, Any]:
    """The delayed entries waiting in each namespace (one sorted set per namespace)."""
    from ..schedule.backlog import read_scheduled

    return await read_scheduled(client)


def _pending_age(group: dict[str, Any], now_ms: int) -> float | None:
    """Seconds since the oldest pending entry was written (Redis clock, so no host skew)."""
    oldest = group.get("oldest_pending_id")
    if not oldest:
        return None
    written_ms = _id_ms(oldest)
    if written_ms > 10**12:
        return round(max(0.0, (now_ms - written_ms) / 1000), 3)
    # An id not made from a clock (e.g. "1-1"): the time since it was last delivered.
    idle_ms = group.get("oldest_pending_idle_ms")
    return None if idle_ms is None else round(idle_ms / 1000, 3)


async def _candle_streams(client: aioredis.Redis, names: list[str]) -> list[str]:
    """The streams whose newest entry has the candle fields."""
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xrevrange(name, count=1)
    replies = await pipe.execute(raise_on_error=False)
    found = []
    for name, reply in zip(names, replies, strict=True):
        fields = [] if not reply or isinstance(reply, Exception) else reply[0][1]
        if CANDLE_FIELDS.issubset(as_text(k) for k in fields):
            found.append(name)
    return found


async def _candles(
    client: aioredis.Redis, names: list[str], entries: int, per_series: int
) -> list[dict[str, Any]]:
    """The latest candles of each (stream, symbol, interval), oldest first."""
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xrevrange(name, count=entries)
    replies = await pipe.execute(raise_on_error=False)
    series: dict[tuple[str, str, int], dict[int, dict[str, float]]] = {}
    for name, reply in zip(names, replies, strict=True):
        if isinstance(reply, Exception):
            continue
        for entry_id, raw in reply:
            f = {as_text(k): as_text(v) for k, v in raw.items()}
            try:
                symbol = f["symbol"]
                interval = int(float(f["interval_ms"]))
                start = int(float(f.get("candle_start_ms") or _id_ms(as_text(entry_id))))
                candle = {k: float(f[k]) for k in ("open", "high", "low", "close")}
                candle["volume"] = float(f.get("volume") or 0.0)
            except (KeyError, ValueError, OverflowError):
                continue
            if not all(math.isfinite(v) for v in candle.values()):
                continue
            if len(symbol) > MAX_SYMBOL_CHARS:
                continue
            if (name, symbol, interval) not in series and len(series) >= MAX_CANDLE_SERIES:
                continue
            bucket = series.setdefault((name, symbol, interval), {})
            if start not in bucket and len(bucket) < per_series:
                bucket[start] = candle  # newest first, so the latest write of a candle wins
    return [
        {
            "stream": name,
            "symbol": symbol,
            "interval_ms": interval,
            "candles": [{"t": t, **bucket[t]} for t in sorted(bucket)],
        }
        for (name, symbol, interval), bucket in sorted(series.items())
    ]


def unavailable(error: str) -> dict[str, Any]:
    """The snapshot's shape when Redis cannot be read."""
    return {
        "generated_at_ms": int(time.time() * 1000),
        "redis": {"ok": False, "error": error},
        "instances": [],
        "instances_truncated": 0,
        "bad_heartbeats": 0,
        "agents": [],
        "streams": [],
        "streams_truncated": False,
        "lag_scan_limit": LAG_SCAN_LIMIT,
        "dead_letters": [],
        "scheduled": {"count": 0, "oldest_due_ms": None, "namespaces": []},
        "windows": [],
        "candles": [],
    }
