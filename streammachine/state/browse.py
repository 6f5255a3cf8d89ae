"""Tables and windows as readers see them (the CLI, MCP, the dashboard, /metrics): found in
Redis by name, without the app that declares them, so every shard of a partitioned table (every
partition of a window agent) is read together.

Table values are decoded as `Storage` values are (ints from decimal text, the rest msgpack: a
Struct reads back as a dict); a value that is neither is shown as an error string, not raised.
Open windows are decoded by the window engine itself, with the aggregates named in the agent's
`~meta` (a `reduce(fn)` value needs the app's function: it reads back as None).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from typing import Any

from .. import keys
from ..exceptions import SerializationError
from . import aggregates
from .values import decode_value
from .windowing import read_windows
from .windows import Engine, Kind

__all__ = [
    "find_tables",
    "table_count",
    "table_get",
    "table_items",
    "table_keys",
    "table_page",
    "table_summaries",
    "window_open",
    "window_summaries",
]

_TTL = ":ttl:"
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})
_PARTITION_TAG = re.compile(r"\{.*:p\d+\}:")


def _split(key: bytes) -> tuple[str, str] | None:
    """(table name, shard hash) of a table hash or one of its TTL keys; None for anything else."""
    text = key.decode(errors="replace")
    shard = text.split(_TTL, 1)[0]
    name = keys.table_of(shard)
    return None if name is None else (name, shard)


async def find_tables(client: Any) -> dict[str, list[str]]:
    """Every table in Redis: name → its shard hashes (sorted)."""
    found: dict[str, set[str]] = {}
    async for key in client.scan_iter(match=keys.TABLES_MATCH, count=1000):
        parts = _split(key)
        if parts is not None:
            found.setdefault(parts[0], set()).add(parts[1])
    return {name: sorted(shards) for name, shards in sorted(found.items())}


async def _shards(client: Any, name: str) -> list[str]:
    return (await find_tables(client)).get(name, [])


def _decode(key: str, raw: bytes) -> Any:
    try:
        return decode_value(key, raw)
    except SerializationError as exc:
        return f"<unreadable: {exc}>"


#: Where a key's value is: (the hash, its field) or (its TTL key, None).
_Place = tuple[str | bytes, bytes | None]


async def _locate(client: Any, shards: list[str], prefix: str = "") -> dict[str, _Place]:
    """key → where its value is, for the keys starting with `prefix` of these shards."""
    where: dict[str, _Place] = {}
    match = prefix.translate(_GLOB) + "*"
    for shard in shards:
        async for f, _ in client.hscan_iter(shard, match=match, count=1000):
            where.setdefault(f.decode(errors="replace"), (shard, f))
        head = shard + _TTL
        async for k in client.scan_iter(match=head.translate(_GLOB) + match, count=1000):
            where.setdefault(k.decode(errors="replace")[len(head) :], (k, None))
    return where


async def table_get(client: Any, name: str, key: str) -> tuple[bool, Any]:
    """(found, value) of `key` in table `name`, whichever shard holds it."""
    for shard in await _shards(client, name):
        raw = await client.hget(shard, key)
        if raw is None:
            raw = await client.get(shard + _TTL + key)
        if raw is not None:
            return True, _decode(key, raw)
    return False, None


async def table_keys(client: Any, name: str) -> list[str]:
    """The keys of table `name`, sorted."""
    return sorted(await _locate(client, await _shards(client, name)))


async def table_count(client: Any, name: str) -> int:
    """How many keys table `name` holds."""
    return len(await _locate(client, await _shards(client, name)))


async def table_items(client: Any, name: str, limit: int = 100) -> list[tuple[str, Any]]:
    """Up to `limit` (key, value) pairs of table `name`, sorted by key."""
    page = await table_page(client, name, limit=limit)
    return [(row["key"], row["value"]) for row in page["keys"]]


async def table_page(
    client: Any, name: str, *, prefix: str = "", after: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """One page of table `name`: its keys starting with `prefix`, sorted, the first `limit`
    after `after`, with their values (and, for a table with a TTL, the ms left).

    Returns:
        `{"table", "prefix", "matching" (keys with the prefix), "keys": [{"key", "value",
        "expires_in_ms"}], "next"}`; `next` is the `after` of the next page (None: the last).
    """
    where = await _locate(client, await _shards(client, name), prefix)
    names = sorted(k for k in where if after is None or k > after)
    page = names[:limit]
    pipe = client.pipeline(transaction=False)
    for k in page:
        at, field = where[k]
        if field is None:
            pipe.get(at)
            pipe.pttl(at)
        else:
            pipe.hget(at, field)
    replies = iter(await pipe.execute(raise_on_error=False) if page else [])
    rows = []
    for k in page:
        raw = next(replies)
        left = next(replies) if where[k][1] is None else None
        if raw is None or isinstance(raw, Exception):
            continue  # expired or deleted since the scan
        ttl = left if isinstance(left, int) and left >= 0 else None
        rows.append({"key": k, "value": _decode(k, raw), "expires_in_ms": ttl})
    more = len(names) > limit
    return {
        "table": name, "prefix": prefix, "matching": len(where), "keys": rows,
        "next": page[-1] if more and page else None,
    }  # fmt: skip


async def table_summaries(
    client: Any, declared: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every table in Redis, and every table `declared` (name → `Table`, an app's tables):
    name, shards holding keys, partitioned or not, keys, keys kept with a TTL, the TTL (ms; known
    only for a declared table), the stream it lives with, and whether the app declares it."""
    found = await find_tables(client)
    declared = declared or {}
    rows = []
    for name in sorted(set(found) | set(declared)):
        shards = found.get(name, [])
        where = await _locate(client, shards)
        table = declared.get(name)
        rows.append({
            "table": name, "declared": table is not None, "shards": len(shards),
            "partitioned": (table.partitions > 0) if table is not None
            else any(_PARTITION_TAG.search(s) for s in shards),
            "keys": len(where), "ttl_keys": sum(1 for at, f in where.values() if f is None),
            "ttl_ms": getattr(table, "ttl_ms", None),
            "stream": getattr(table, "stream", None),
        })  # fmt: skip
    return rows


# -- windows ----------------------------------------------------------------------------------

_KIND = re.compile(r"^(tumbling|hopping|sliding|session)\((?:gap=)?([^,()]+)(?:, ([^,()]+))?\)$")
_AGG = re.compile(r"^(\w+)\((.*)\)$")
#: The aggregates of one field, by the name their repr starts with (`count()` has none).
_AGGS: dict[str, Callable[[str], aggregates.Aggregate]] = {
    "sum": aggregates.sum_, "min": aggregates.min_, "max": aggregates.max_,
    "mean": aggregates.mean, "first": aggregates.first, "last": aggregates.last,
}  # fmt: skip
_META, _KEY = "~meta", "k:"


class _Unknown(aggregates.Aggregate):
    """An aggregate known only by name (`reduce(fn)`: the function is the app's): its state
    is kept as stored, its value is None."""

    name = "unknown"

    def merge(self, a: Any, b: Any) -> Any:
        return a + b if isinstance(a, list) and isinstance(b, list) else a

    def result(self, state: Any) -> Any:
        return None


def _kind(text: Any) -> Kind | None:
    """The `Kind` of `str(kind)` as `~meta` stores it ("tumbling(60)", "session(gap=5)")."""
    m = _KIND.match(text) if isinstance(text, str) else None
    if m is None:
        return None
    try:
        size = round(float(m[2]) * 1000)
        step = round(float(m[3]) * 1000) if m[3] else size if m[1] == "tumbling" else 0
    except ValueError:
        return None
    return Kind(m[1], size, step) if size > 0 else None  # type: ignore[arg-type]


def _aggregate(text: Any) -> aggregates.Aggregate:
    m = _AGG.match(text) if isinstance(text, str) else None
    if m is not None and m[1] == "count" and m[2] == "":
        return aggregates.count()
    make = _AGGS.get(m[1]) if m else None
    if m is None or make is None:
        return _Unknown()
    try:
        field = ast.literal_eval(m[2])
    except (ValueError, SyntaxError):
        return _Unknown()
    return make(field) if isinstance(field, str) else _Unknown()


def _meta(raw: Any) -> dict[str, Any]:
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


async def window_summaries(client: Any, now_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Every window agent on this Redis, its partitions (streams) together: kind, size, step and
    grace (ms), emit, output stream and how many entries it holds (`emitted`), aggregates, and
    per partition the newest event time, watermark, watermark lag (`now_ms` - watermark), open
    windows and late entries; with the totals. Built on `windowing.read_windows`."""
    rows = await read_windows(client, limit=limit)
    pipe = client.pipeline(transaction=False)
    for r in rows:
        pipe.hget(r["key"], _META)
    metas = [_meta(m) for m in await pipe.execute(raise_on_error=False)] if rows else []
    agents: dict[str, dict[str, Any]] = {}
    for r, meta in zip(rows, metas, strict=True):
        name = r["name"] or r["key"]
        kind = _kind(r["kind"])
        grace = meta.get("grace_ms") if isinstance(meta.get("grace_ms"), int) else None
        aggs: dict[Any, Any] = meta["aggs"] if isinstance(meta.get("aggs"), dict) else {}
        agent = agents.setdefault(name, {
            "name": name, "group": r["group"], "kind": r["kind"],
            "size_ms": kind and kind.size_ms, "step_ms": kind and kind.step_ms,
            "grace_ms": grace, "emit": r["emit"], "to": r["to"],
            "aggs": {str(k): str(v) for k, v in aggs.items()}, "emitted": None,
            "open_windows": 0, "late": 0, "partitions": [],
        })  # fmt: skip
        wm = r["watermark_ms"]
        agent["partitions"].append({
            "stream": r["stream"], "key": r["key"], "open_keys": r["open_keys"],
            "open_windows": r["open_windows"], "max_event_ms": r["max_event_ms"],
            "watermark_ms": wm, "watermark_lag_ms": None if wm is None else now_ms - wm,
            "late": r["late"],
        })  # fmt: skip
        agent["open_windows"] += r["open_windows"] or 0
        agent["late"] += r["late"]
    found = [a for a in agents.values() if isinstance(a["to"], str)]
    if found:
        pipe = client.pipeline(transaction=False)
        for a in found:
            pipe.xlen(a["to"])
        for a, n in zip(found, await pipe.execute(raise_on_error=False), strict=True):
            a["emitted"] = n if isinstance(n, int) else None
    return sorted(agents.values(), key=lambda a: str(a["name"]))


async def window_open(
    client: Any, name: str, *, key: str | None = None, limit: int = 100
) -> dict[str, Any] | None:
    """The open windows of window agent `name` (every partition), with their current values, as
    the engine computes them, sorted by (key, start, partition); only `key`'s when given; at
    most `limit`. None when no window agent `name` has state here.

    Returns:
        `{"name", "kind", "open_windows" (all matching), "windows": [{"stream", "key", "start",
        "end", "values"}], "truncated", "errors"}`; `errors` names the unreadable states.
    """
    hashes = [r for r in await read_windows(client, count=False) if (r["name"] or r["key"]) == name]
    if not hashes:
        return None
    windows: list[dict[str, Any]] = []
    errors: list[str] = []
    for r in hashes:
        if key is None:
            raw: dict[bytes, bytes] = await client.hgetall(r["key"])
        else:
            fields = [_META, _KEY + key]
            got = await client.hmget(r["key"], fields)
            raw = {f.encode(): v for f, v in zip(fields, got, strict=True) if v is not None}
        meta = _meta(raw.get(_META.encode()))
        kind = _kind(meta.get("kind"))
        aggs: dict[Any, Any] = meta["aggs"] if isinstance(meta.get("aggs"), dict) else {}
        if kind is None:
            errors.append(f"{r['key']}: its ~meta names no window kind")
            continue
        engine = Engine(kind, {str(n): _aggregate(a) for n, a in aggs.items()}, track=True)
        for f, v in raw.items():
            field = f.decode("utf-8", "replace")
            if not field.startswith(_KEY):
                continue
            k = field[len(_KEY) :]
            try:
                engine.load(k, v)
                engine.touched.update((k, s) for s in _starts(kind, engine.keys[k]))
                for row in engine.updates():
                    values = {n: _plain(x) for n, x in row.values.items()}
                    windows.append({"stream": r["stream"], "key": row.key, "start": row.start,
                                    "end": row.end, "values": values})  # fmt: skip
            except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
                errors.append(f"{r['key']} key {k!r}: {exc}")
            engine.keys.pop(k, None)  # one key at a time: memory stays one key's windows
    windows.sort(key=lambda w: (w["key"], w["start"], str(w["stream"])))
    return {
        "name": name, "kind": hashes[0]["kind"], "key": key, "open_windows": len(windows),
        "windows": windows[:limit], "truncated": len(windows) > limit, "errors": errors[:20],
    }  # fmt: skip


def _starts(kind: Kind, windows: Any) -> list[Any]:
    """The `start` each open window of a key is known by in the engine (see `Engine.keys`)."""
    if kind.kind in ("tumbling", "hopping"):
        return list(windows)
    if kind.kind == "session":
        return [s[0] for s in windows]
    return list(windows[1])


def _plain(value: Any) -> Any:
    """A value as JSON can carry it (a float that is not finite becomes text)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    return value
