"""Tables as readers see them (the CLI, MCP, the dashboard, /metrics): found in Redis by name,
without the app that declares them, so every shard of a partitioned table is read together.

Values are decoded as `Storage` values are (ints from decimal text, the rest msgpack: a Struct
reads back as a dict); a value that is neither is shown as an error string, not raised.
"""

from __future__ import annotations

from typing import Any

from .. import keys
from ..exceptions import SerializationError
from .values import decode_value

__all__ = ["find_tables", "table_count", "table_get", "table_items", "table_keys"]

_TTL = ":ttl:"


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
    found: set[str] = set()
    for shard in await _shards(client, name):
        found.update([f.decode(errors="replace") async for f, _ in client.hscan_iter(shard)])
        prefix = shard + _TTL
        async for k in client.scan_iter(match=prefix + "*", count=1000):
            found.add(k.decode(errors="replace")[len(prefix) :])
    return sorted(found)


async def table_count(client: Any, name: str) -> int:
    """How many keys table `name` holds."""
    return len(await table_keys(client, name))


async def table_items(client: Any, name: str, limit: int = 100) -> list[tuple[str, Any]]:
    """Up to `limit` (key, value) pairs of table `name`, sorted by key."""
    items: list[tuple[str, Any]] = []
    for key in (await table_keys(client, name))[:limit]:
        found, value = await table_get(client, name, key)
        if found:
            items.append((key, value))
    return items
