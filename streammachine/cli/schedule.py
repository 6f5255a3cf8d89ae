"""The `send --delay/--at` helpers that `send` uses (the `scheduled` command group, listing and
acting on what waits, is in `cli/scheduled.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    fail,
    out,
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
    if delay is not None:
        try:
            return due_ms(delay_s=parse_duration(delay))
        except ConfigError as exc:
            fail(f"--delay {delay[:40]!r}: {str(exc).replace('delay_s', 'the delay')}", 2)
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            fail(
                f"--at {at[:60]!r} is not an ISO 8601 time: use e.g. 2030-01-01T09:00:00+00:00 "
                "(without an offset it is local time)",
                2,
            )
        try:
            return due_ms(at=when)
        except ConfigError:
            fail(f"--at {at[:60]!r}: give a time from 1970 on and at most 10 years ahead", 2)
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
