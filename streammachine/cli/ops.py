"""CLI commands: health, storage and dead."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from ..codec import as_text
from .common import (
    JsonOut,
    TooDeep,
    check_name,
    command,
    dumps,
    fail,
    out,
    parse_json,
    with_redis,
)
from .progress import MIN_ENTRIES, interactive, progress_bar

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..state.storage import Storage

Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="STREAMMACHINE_STORAGE_NAMESPACE",
        help="Storage namespace (default: the app's, 'default').",
    ),
]
HEALTH_TIMEOUT_S = 2.0
MAX_TTL_S = 3_155_760_000.0  # 100 years: beyond, Redis refuses the expiry (storage.MAX_TTL_S)


class DefaultToList(TyperGroup):
    """`dead STREAM` means `dead list STREAM`; `dead replay STREAM` is a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        help_names = set(ctx.help_option_names)
        if args and args[0] not in self.commands and not help_names.intersection(args[:1]):
            args = ["list", *args]
        return super().parse_args(ctx, args)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _fmt_time(ts: float | None) -> str:
    import time

    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# --- health ----------------------------------------------------------------------------------


def _health(redis_url: str | None, json_out: bool) -> None:

    import anyio
    from redis.exceptions import ResponseError

    from ..admin.queries import list_instances, server_info
    from ..connection import RedisConnection
    from ..exceptions import StreamMachineError
    from ..urls import mask_url
    from .common import resolve_url

    try:
        url = resolve_url(redis_url)
    except StreamMachineError as exc:
        fail(str(exc))

    async def check() -> dict[str, Any]:
        conn = RedisConnection(url=url)
        try:
            with anyio.fail_after(HEALTH_TIMEOUT_S):
                info = await server_info(conn)
                try:
                    instances = await list_instances(conn)
                except ResponseError:  # e.g. an ACL without SCAN: Redis itself is fine
                    instances = []
            return {"healthy": True, "redis_url": mask_url(url), **info, "instances": instances}
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    try:
        from ..process.runner import run_loop

        report = run_loop(check)
    except Exception as exc:  # any failure to talk to Redis means "unhealthy"
        reason = str(exc) or f"no answer within {HEALTH_TIMEOUT_S:g} s"
        message = f"cannot reach Redis at {mask_url(url)}: {reason}"
        if json_out:
            out(dumps({"healthy": False, "redis_url": mask_url(url), "error": message}))
            raise SystemExit(1) from None
        fail(message)
    if json_out:
        out(dumps(report))
        return
    version = report["redis_version"] or "(in-process)"
    out(f"ok: Redis {version} at {report['redis_url']} answered in {report['latency_ms']} ms")
    for i in report["instances"]:
        age = "-" if i["age_s"] is None else f"{i['age_s']:.0f} s ago"
        out(f"instance {i['key']}: app={i['app']} host={i['host']} pid={i['pid']} seen={age}")


# --- storage ---------------------------------------------------------------------------------


def _storage(redis_url: str | None, namespace: str | None, fn: Any, *args: Any) -> Any:
    from ..state.values import check_namespace

    if namespace is not None:  # an explicit --namespace '' is a mistake, not "the default"
        check_namespace(namespace)

    async def call(conn: RedisConnection) -> Any:
        from ..state.storage import Storage

        store = Storage(namespace, redis=conn)
        return await fn(store, *args)

    return with_redis(redis_url, call)


_MISSING: Any = object()


async def _get(store: Storage, key: str) -> tuple[str, Any]:
    return store.namespace, await store.read(key, _MISSING)


async def _set(store: Storage, key: str, value: Any, ttl_s: float | None) -> None:
    await store.write(key, value, ttl_s=ttl_s)


async def _delete(store: Storage, key: str) -> tuple[str, bool]:
    return store.namespace, await store.delete(key)


async def _keys(store: Storage, pattern: str | None) -> tuple[str, list[str]]:
    return store.namespace, await store.keys(pattern)


async def _clear(store: Storage) -> tuple[str, int]:
    n = len(await store.keys())
    await store.clear()
    return store.namespace, n


def _register_storage(app: typer.Typer) -> None:
    storage = typer.Typer(
        name="storage", help="Read and change the app's shared Storage.", no_args_is_help=True
    )
    app.add_typer(storage)

    @command(storage, "get")
    def get(
        key: str,
        namespace: Namespace = None,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Print a key's value (text as it is, anything else as JSON; NaN and ±infinity, which
        JSON cannot hold, as the strings "nan", "inf" and "-inf")."""
        check_name("storage key", key)
        ns, value = _storage(redis_url, namespace, _get, key)
        if value is _MISSING:
            fail(f"key {key!r} not found in storage namespace {ns!r}")
        out(dumps(value) if json_out or not isinstance(value, str) else value)

    @command(storage, "set")
    def set_(
        key: str,
        value: Annotated[
            str, typer.Argument(help="JSON when it parses (42, true, {...}), else text.")
        ],
        ttl: Annotated[
            float | None,
            typer.Option(
                "--ttl", min=0.001, max=MAX_TTL_S, help="Expire after SECONDS (at most 100 years)."
            ),
        ] = None,
        namespace: Namespace = None,
        redis_url: str | None = None,
    ) -> None:
        """Store a value (parsed as JSON when it parses, else kept as a string)."""
        import math

        check_name("storage key", key)
        if ttl is not None and not math.isfinite(ttl):
            fail(f"--ttl {ttl} is not a number of seconds: give e.g. --ttl 60", 2)
        try:
            parsed: Any = parse_json(value)
        except TooDeep as exc:
            fail(f"the value: {exc}", 2)
        except ValueError:
            parsed = value
        _storage(redis_url, namespace, _set, key, parsed, ttl)

    @command(storage, "delete")
    def delete(
        key: str,
        namespace: Namespace = None,
        redis_url: str | None = None,
    ) -> None:
        """Delete a key (exit 1 when it did not exist)."""
        check_name("storage key", key)
        ns, existed = _storage(redis_url, namespace, _delete, key)
        if not existed:
            fail(f"key {key!r} not found in storage namespace {ns!r}")

    @command(storage, "keys")
    def keys(
        pattern: Annotated[str | None, typer.Argument(help="Glob, e.g. 'user:*'.")] = None,
        namespace: Namespace = None,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """List the keys, sorted (all, or those matching PATTERN)."""
        if pattern is not None:
            check_name("pattern", pattern)
        ns, found = _storage(redis_url, namespace, _keys, pattern)
        for k in found:
            out(dumps({"namespace": ns, "key": k}) if json_out else k)

    @command(storage, "clear")
    def clear(
        yes: Annotated[bool, typer.Option("--yes", help="Really delete every key.")] = False,
        namespace: Namespace = None,
        redis_url: str | None = None,
    ) -> None:
        """Delete every key of the namespace (needs --yes)."""
        if not yes:
            fail("clear deletes every key of the storage namespace; add --yes to do it", 2)
        ns, n = _storage(redis_url, namespace, _clear)
        sys.stderr.write(f"cleared {_n(n, 'key')} from storage namespace {ns!r}\n")


# --- dead ------------------------------------------------------------------------------------


async def _dead_list(conn: RedisConnection, stream: str, count: int) -> tuple[int, list[Any]]:
    from ..admin.queries import check_stream, dead_letter_stream, list_dead

    dead = dead_letter_stream(stream)
    if not await check_stream(conn, dead):
        if dead != stream and not await check_stream(conn, stream):
            fail(f"neither {stream!r} nor {dead!r} exists: check the stream name")
        return 0, []
    total = int(await conn.client.xlen(dead))
    return total, await list_dead(conn, stream, count)


def _print_dead(stream: str, total: int, items: list[dict[str, Any]], json_out: bool) -> None:
    if json_out:
        for d in items:
            out(dumps(d))
        return
    from ..admin.queries import dead_letter_stream

    dead = dead_letter_stream(stream)
    sys.stderr.write(
        f"{dead}: {_n(total, 'dead letter')}"
        + (f", showing {len(items)}\n" if total > len(items) else "\n")
    )
    if not items:
        return
    if not sys.stdout.isatty():
        for d in items:
            out(
                f"{d['id']} source={d['source_stream']}/{d['source_id']} group={d['group']} "
                f"deliveries={d['deliveries']} failed_at={_fmt_time(d['failed_at'])} "
                f"{d['error_type']}: {d['error']}"
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=dead, title_justify="left")
    for col in ("id", "source id", "group", "deliveries", "failed at", "error"):
        table.add_column(col, overflow="fold")
    for d in items:
        table.add_row(
            d["id"], str(d["source_id"]), str(d["group"]), str(d["deliveries"]),
            _fmt_time(d["failed_at"]), f"{d['error_type']}: {d['error']}",
        )  # fmt: skip
    Console().print(table)


async def _replay_all_with_progress(conn: RedisConnection, stream: str) -> int:
    """`replay_dead(conn, stream)` page by page, so a terminal sees a progress bar: like it,
    it stops at the newest entry present at the start (re-failing messages cannot loop)."""
    from ..admin.queries import dead_letter_stream
    from ..admin.replay import replay_dead

    dead, page = dead_letter_stream(stream), 500
    total = int(await conn.client.xlen(dead))
    newest = await conn.client.xrevrange(dead, "+", "-", count=1)
    if not newest:
        return 0
    last, cursor, replayed = as_text(newest[0][0]), "-", 0
    with progress_bar(f"replaying {dead}", total, enabled=total >= MIN_ENTRIES) as advance:
        while True:
            batch = await conn.client.xrange(dead, cursor, last, count=page)
            ids = [as_text(i) for i, _ in batch or []]
            if ids:
                replayed += await replay_dead(conn, stream, ids)
                advance(len(ids))
            if len(ids) < page:
                return replayed
            cursor = "(" + ids[-1]


def _register_dead(app: typer.Typer) -> None:
    dead = typer.Typer(
        name="dead",
        cls=DefaultToList,
        no_args_is_help=True,
        help="List dead letters (`dead STREAM`) or send them back (`dead replay STREAM`).",
    )
    app.add_typer(dead)

    @command(dead, "list")
    def list_(
        stream: Annotated[str, typer.Argument(help="The stream, or its dead-letter stream.")],
        count: Annotated[
            int, typer.Option("--count", min=1, max=1_000_000, help="At most this many.")
        ] = 100,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """List the dead letters of STREAM (kept in STREAM:dead), oldest first."""
        check_name("stream name", stream)
        total, items = with_redis(redis_url, lambda c: _dead_list(c, stream, count))
        _print_dead(stream, total, items, json_out)

    @command(dead, "replay")
    def replay(
        stream: Annotated[str, typer.Argument(help="The stream, or its dead-letter stream.")],
        ids: Annotated[
            list[str] | None, typer.Option("--id", help="A dead letter's id (repeatable).")
        ] = None,
        all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
        redis_url: str | None = None,
    ) -> None:
        """Send dead letters back to their source stream (and delete them from STREAM:dead)."""
        from ..admin.queries import dead_letter_stream
        from ..admin.replay import replay_dead

        check_name("stream name", stream)
        if bool(ids) == all_:
            fail("say which dead letters to replay: --id ID (repeatable) or --all", 2)
        if all_ and interactive():
            n = with_redis(redis_url, lambda c: _replay_all_with_progress(c, stream))
        else:
            n = with_redis(redis_url, lambda c: replay_dead(c, stream, ids))
        out(f"replayed {_n(n, 'dead letter')} from {dead_letter_stream(stream)}")
        if ids and n < len(set(ids)):
            fail(f"{len(set(ids)) - n} of the given ids were not in {dead_letter_stream(stream)}")


def register(app: typer.Typer) -> None:
    """Add `health`, `storage` and `dead` to the CLI."""

    @command(app, "health")
    def health(
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Check Redis (PING, version) and list registered app instances; exit 1 if unhealthy.

        Usable as a Docker HEALTHCHECK: `streammachine health`.
        """
        _health(redis_url, json_out)

    _register_storage(app)
    _register_dead(app)
