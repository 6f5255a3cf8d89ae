"""CLI command group `scheduled`: the delayed entries waiting in Redis (`send --delay/--at`), listed
soonest first (`scheduled [STREAM]`; a member that does not decode is a bad row), and acted on:
`scheduled promote ID...` delivers now, `scheduled cancel ID... --yes` removes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import JsonOut, ListWhenEmpty, check_name, command, dumps, fail, out, safe, with_redis

if TYPE_CHECKING:
    from ..connection import RedisConnection

Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="STREAMMACHINE_STORAGE_NAMESPACE",
        help="The namespace whose apps move the entries (default: 'default').",
    ),
]
Ids = Annotated[list[str], typer.Argument(metavar="ID...", help="Schedule ids, as listed.")]


def _when(ms: int) -> str:
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def _namespace(namespace: str | None) -> str:
    from ..exceptions import ConfigError
    from ..state.values import check_namespace

    try:
        return check_namespace(namespace if namespace is not None else "default")
    except ConfigError as exc:
        fail(str(exc), 2)


def _ids(ids: list[str]) -> list[str]:
    import re

    for i in ids:
        if not re.fullmatch(r"[0-9a-f]{24}", i):
            fail(f"{i[:60]!r} is not a schedule id (24 hex digits, as `scheduled` prints them)", 2)
    return ids


def register(app: typer.Typer) -> None:
    """Add the `scheduled` group to the CLI."""
    group = typer.Typer(
        name="scheduled",
        cls=ListWhenEmpty,
        help="Delayed entries: list (`scheduled [STREAM]`), promote (deliver now), cancel.",
    )
    app.add_typer(group)

    @command(group, "list")
    def list_(
        stream: Annotated[
            str | None, typer.Argument(help="Only the entries for this stream.")
        ] = None,
        count: Annotated[
            int, typer.Option("--count", min=1, max=100_000, help="Show at most N.")
        ] = 100,
        namespace: Namespace = None,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """List the delayed entries waiting in Redis, soonest first (`send --delay/--at`).

        Examples: `scheduled`, `scheduled reminders --json`.
        """
        from ..admin.scheduled import list_scheduled

        if stream is not None:
            check_name("stream name", stream)
        ns = _namespace(namespace)

        async def read(conn: RedisConnection) -> dict[str, Any]:
            return await list_scheduled(conn, ns, stream=stream, count=count)

        found = with_redis(redis_url, read)
        entries, now_ms = found["entries"], int(time.time() * 1000)
        if json_out:
            for e in entries:
                if e["due_ms"] is not None:
                    e |= {
                        "due": _when(e["due_ms"]),
                        "in_s": round((e["due_ms"] - now_ms) / 1000, 3),
                    }
                out(dumps(e))
            return
        if not entries:
            what = f" for {safe(stream)}" if stream else ""
            out(f"nothing scheduled{what} in namespace {ns!r}")
            return
        for e in entries:
            if e["bad"]:
                out(f"{safe(e['id'])}  BAD  {safe(e['bad'])}")
                continue
            fields = " ".join(f"{safe(k)}={safe(v)}" for k, v in e["fields"].items())
            wait = (e["due_ms"] - now_ms) / 1000
            out(f"{e['id']}  {safe(e['stream'])}  {_when(e['due_ms'])}  in {wait:.1f} s  {fields}")
        if found["total"] > len(entries) and stream is None:
            out(f"... {found['total'] - len(entries)} more (use --count)")

    @command(group, "promote")
    def promote(ids: Ids, namespace: Namespace = None, redis_url: str | None = None) -> None:
        """Deliver delayed entries now (appended to their stream, removed from the schedule)."""
        from ..admin.audit import Actor
        from ..admin.scheduled import promote_scheduled

        wanted, ns = _ids(ids), _namespace(namespace)
        r = with_redis(redis_url, lambda c: promote_scheduled(c, ns, wanted, actor=Actor.cli()))
        for p in r["promoted"]:
            where = f"as {p['new_id']}" if p["new_id"] else "(due now: a running app moves it)"
            out(f"promoted {p['id']} to {safe(p['stream'])} {where}")
        if r["stayed"]:
            why = "; ".join(f"{s['id']} ({safe(s['reason'])})" for s in r["stayed"][:20])
            fail(f"{len(r['stayed'])} not promoted: {why}")

    @command(group, "cancel")
    def cancel(
        ids: Ids,
        yes: Annotated[bool, typer.Option("--yes", help="Really remove them.")] = False,
        namespace: Namespace = None,
        redis_url: str | None = None,
    ) -> None:
        """Remove delayed entries before they are due (needs --yes)."""
        from ..admin.audit import Actor
        from ..admin.scheduled import cancel_scheduled

        wanted, ns = _ids(ids), _namespace(namespace)
        if not yes:
            fail("cancel removes the entries for good: add --yes to do it", 2)
        r = with_redis(redis_url, lambda c: cancel_scheduled(c, ns, wanted, actor=Actor.cli()))
        for i in r["cancelled"]:
            out(f"cancelled {i}")
        if r["missing"]:
            fail(f"not scheduled in namespace {ns!r}: {', '.join(r['missing'][:20])}")
