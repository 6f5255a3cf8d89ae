"""CLI command group `table`: list the tables in Redis, read one key, show a table's keys and
values (every shard of a partitioned table together)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import JsonOut, check_name, command, dumps, fail, out, safe, with_redis

if TYPE_CHECKING:
    from ..connection import RedisConnection


def register(app: typer.Typer) -> None:
    """Add `table list|get|show` to the CLI."""
    group = typer.Typer(name="table", help="Read the app's tables.", no_args_is_help=True)
    app.add_typer(group)

    @command(group, "list")
    def list_(json_out: JsonOut = False, redis_url: str | None = None) -> None:
        """List the tables: name, shards, keys."""
        from ..state.browse import find_tables, table_count

        async def read(conn: RedisConnection) -> list[dict[str, Any]]:
            client = conn.client
            found = await find_tables(client)
            return [
                {"table": n, "shards": len(s), "keys": await table_count(client, n)}
                for n, s in found.items()
            ]

        for row in with_redis(redis_url, read):
            line = f"{safe(row['table'])}  shards={row['shards']}  keys={row['keys']}"
            out(dumps(row) if json_out else line)

    @command(group, "get")
    def get(name: str, key: str, json_out: JsonOut = False, redis_url: str | None = None) -> None:
        """Print one key's value (as JSON; exit 1 when it is missing)."""
        from ..state.browse import table_get

        check_name("table name", name)
        check_name("key", key)
        found, value = with_redis(redis_url, lambda c: table_get(c.client, name, key))
        if not found:
            fail(f"key {key!r} not found in table {name!r} (see: streammachine table show {name})")
        out(dumps({"table": name, "key": key, "value": value}) if json_out else dumps(value))

    @command(group, "show")
    def show(
        name: str,
        key: Annotated[str | None, typer.Argument(help="Only this key.")] = None,
        limit: Annotated[int, typer.Option(min=1, help="At most this many keys.")] = 100,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Print a table's keys and values, sorted by key."""
        from ..state.browse import table_get, table_items

        check_name("table name", name)

        async def read(conn: RedisConnection) -> list[tuple[str, Any]]:
            if key is not None:
                found, value = await table_get(conn.client, name, key)
                return [(key, value)] if found else []
            return await table_items(conn.client, name, limit)

        items = with_redis(redis_url, read)
        if not items:
            fail(f"table {name!r} has no keys here (see: streammachine table list)")
        for k, v in items:
            out(
                dumps({"table": name, "key": k, "value": v})
                if json_out
                else f"{safe(k)}  {dumps(v)}"
            )
