"""CLI commands: health and storage (dead letters: `dead`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    JsonOut,
    TooDeep,
    check_name,
    command,
    dumps,
    fail,
    out,
    parse_json,
    safe,
    with_redis,
)

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


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# --- health ----------------------------------------------------------------------------------


def _health(redis_url: str | None, json_out: bool) -> None:

    import anyio
    from redis.exceptions import ResponseError

    from ..admin.instances import read_instances
    from ..admin.queries import server_info
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
                    found, bad = await read_instances(conn)
                except ResponseError:  # e.g. an ACL without SCAN: Redis itself is fine
                    found, bad = [], []
            instances = [_instance(i) for i in found]
            report = {"healthy": True, "redis_url": mask_url(url), **info, "instances": instances}
            return report | {"skipped_records": len(bad)}
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
        out(
            f"instance {safe(i['key'])}: app={safe(i['app'])} host={safe(i['host'])} "
            f"pid={i['pid']} seen={age}" + ("" if i["fresh"] else " (late)")
        )
    if report["skipped_records"]:
        out(f"skipped {report['skipped_records']} instance records that are not valid heartbeats")


def _instance(i: dict[str, Any]) -> dict[str, Any]:
    """What `health` says of one instance (the record's names are capped by the reader)."""
    return {
        "key": i["key"],
        "id": i.get("id"),
        "app": i.get("app"),
        "host": i.get("host"),
        "pid": i.get("pid"),
        "version": i.get("version"),
        "age_s": i.get("heartbeat_age_s"),
        "fresh": i.get("fresh"),
        "agents": [a.get("name") for a in i.get("agents") or []],
    }


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
            out(dumps({"namespace": ns, "key": k}) if json_out else safe(k))

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


def register(app: typer.Typer) -> None:
    """Add `health` and `storage` to the CLI."""

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
