"""CLI command `scheduled`: the delayed entries waiting in Redis (and the `send --delay/--at`
helpers that `send` uses)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    JsonOut,
    check_name,
    command,
    dumps,
    fail,
    out,
    with_redis,
)

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


def due_from_flags(delay: str | None, at: str | None) -> int | None:
    """The due time (epoch ms) of `--delay 30s` or `--at ISO8601`, None without either."""
    from datetime import datetime

    from ..exceptions import ConfigError
    from ..schedule.timing import due_ms, parse_duration

    if delay is not None and at is not None:
        fail("give --delay or --at, not both", 2)
    try:
        if delay is not None:
            return due_ms(delay_s=parse_duration(delay))
        if at is not None:
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                fail(
                    f"--at {at!r} is not an ISO 8601 time: use e.g. 2030-01-01T09:00:00+00:00 "
                    "(without an offset it is local time)",
                    2,
                )
            return due_ms(at=when)
    except ConfigError as exc:
        fail(f"--delay: {exc}", 2)
    return None


async def send_later(
    conn: RedisConnection,
    stream: str,
    records: list[dict[Any, Any]],
    count: int,
    due: int,
    namespace: str | None,
) -> None:
    """Keep `records` (each `count` times) until `due`; print each schedule id."""
    from ..admin.queries import check_stream
    from ..schedule.delayed import Scheduler
    from ..state.values import check_namespace

    await check_stream(conn, stream)
    sched = Scheduler(conn, check_namespace(namespace or "default"))
    every = [records[n % len(records)] for n in range(len(records) * count)]
    for start in range(0, len(every), 1000):
        ids = await sched.schedule_many(stream, every[start : start + 1000], due)
        out("\n".join(ids))


def _when(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def register(app: typer.Typer) -> None:
    """Add `scheduled` to the CLI."""

    @command(app, "scheduled")
    def scheduled(
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
        from ..exceptions import ConfigError
        from ..state.values import check_namespace

        if stream is not None:
            check_name("stream name", stream)
        try:
            ns = check_namespace(namespace if namespace is not None else "default")
        except ConfigError as exc:
            fail(str(exc), 2)

        async def read(conn: RedisConnection) -> tuple[list[Any], dict[str, Any]]:
            from ..schedule.delayed import Scheduler

            sched = Scheduler(conn, ns)
            return await sched.entries(stream, count), await sched.summary()

        entries, summary = with_redis(redis_url, read)
        now_ms = int(time.time() * 1000)
        if json_out:
            for e in entries:
                d = e.as_dict()
                d |= {"due": _when(e.due_ms), "in_s": round((e.due_ms - now_ms) / 1000, 3)}
                out(dumps(d))
            return
        if not entries:
            what = f" for {stream}" if stream else ""
            out(f"nothing scheduled{what} in namespace {ns!r}")
            return
        for e in entries:
            fields = " ".join(
                f"{k.decode('utf-8', 'replace')}={v.decode('utf-8', 'replace')}"
                for k, v in e.fields
            )
            wait = (e.due_ms - now_ms) / 1000
            out(f"{e.id}  {e.stream}  {_when(e.due_ms)}  in {wait:.1f} s  {fields}")
        if summary["count"] > len(entries) and stream is None:
            out(f"... {summary['count'] - len(entries)} more (use --count)")
