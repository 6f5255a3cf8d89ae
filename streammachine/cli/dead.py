"""CLI command group `dead`: list dead letters with filters, show one, send them back (one, several,
or all that match, with a dry run), edit one and send it back, purge them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import DefaultToList, JsonOut, check_name, command, dumps, fail, out, safe, with_redis
from .progress import MIN_ENTRIES, interactive, progress_bar

if TYPE_CHECKING:
    from ..admin.deadletters import DeadFilter
    from ..admin.replay import RetryReport
    from ..connection import RedisConnection

#: Ids a message lists at most (the rest: "and N more"; --json lists every one).
SHOWN_IDS = 20

Stream = Annotated[str, typer.Argument(help="The stream, or its dead-letter stream.")]
Ids = Annotated[list[str] | None, typer.Option("--id", help="A dead letter's id (repeatable).")]
Where = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        metavar="FIELD=VALUE|FIELD~TEXT",
        help="Only those whose original field equals VALUE (=) or contains TEXT (~); repeatable.",
    ),
]
Error = Annotated[
    str | None, typer.Option("--error", metavar="TEXT", help="Only those whose error has TEXT.")
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since", metavar="TIME", help="Dead-lettered at or after TIME (ISO 8601, 10m, 2h, an id)."
    ),
]
Until = Annotated[
    str | None, typer.Option("--until", metavar="TIME", help="Dead-lettered at or before TIME.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only print what would be done.")]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _when(ts: float | None) -> str:
    import time

    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "-"


def _filter(
    where: list[str] | None, error: str | None, since: str | None, until: str | None
) -> DeadFilter:
    from ..admin.deadletters import DeadFilter
    from ..exceptions import ConfigError

    try:
        return DeadFilter.parse(where or [], error, since, until)
    except ConfigError as exc:
        fail(str(exc), 2)


def _ids(ids: list[str] | None) -> list[str] | None:
    from ..admin.ids import check_entry_id
    from ..exceptions import ConfigError

    if not ids:
        return None
    try:
        return [check_entry_id(i, "--id") for i in ids]
    except ConfigError as exc:
        fail(str(exc), 2)


def _selection(ids: list[str] | None, all_: bool, where: DeadFilter, verb: str) -> list[str] | None:
    """The ids given, or None for "all that match"; exactly one way of saying which."""
    checked = _ids(ids)
    ways = sum((bool(checked), all_, not where.empty))
    if ways == 0:
        fail(f"say which dead letters to {verb}: --id ID (repeatable) or --all, or a filter "
             "(--where, --error, --since, --until)", 2)  # fmt: skip
    if checked and (all_ or not where.empty):
        fail("give --id, or --all and/or a filter, not both", 2)
    return checked


def _listed(ids: list[str]) -> str:
    shown = ", ".join(safe(i) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


async def _list(
    conn: RedisConnection, stream: str, where: DeadFilter, count: int
) -> dict[str, Any]:
    from ..admin.deadletters import dead_letter_stream, find_dead
    from ..admin.queries import check_stream

    dead = dead_letter_stream(stream)
    if (
        not await check_stream(conn, dead)
        and dead != stream
        and not await check_stream(conn, stream)
    ):
        fail(f"neither {stream!r} nor {dead!r} exists: check the stream name")
    return await find_dead(conn, stream, where, count=count)


def _print_list(page: dict[str, Any], json_out: bool, filtered: bool) -> None:
    items, total, dead = page["entries"], page["total"], page["dead_stream"]
    if json_out:
        for d in items:
            out(dumps(d))
        return
    what = f", {len(items)} matching" if filtered else ""
    more = f", showing {len(items)}" if not filtered and total > len(items) else ""
    sys.stderr.write(f"{safe(dead)}: {_n(total, 'dead letter')}{what}{more}\n")
    if not items:
        return
    if not sys.stdout.isatty():
        for d in items:
            out(
                f"{d['id']} source={safe(d['source_stream'])}/{safe(d['source_id'])} "
                f"group={safe(d['group'])} deliveries={d['deliveries']} "
                f"failed_at={_when(d['failed_at'])} {safe(d['error_type'])}: {safe(d['error'])}"
            )
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(safe(dead)), title_justify="left")
    for col in ("id", "group", "tries", "failed at", "error"):
        table.add_column(col, overflow="fold", justify="right" if col == "tries" else "left")
    for d in items:
        table.add_row(
            Text(d["id"]), Text(safe(d["group"])), Text(str(d["deliveries"])),
            Text(_when(d["failed_at"])), Text(f"{safe(d['error_type'])}: {safe(d['error'])}"),
        )  # fmt: skip
    Console().print(table)


def _print_show(d: dict[str, Any]) -> None:
    out(f"dead letter {d['id']} of {safe(d['stream'])}")
    out(f"  from      {safe(d['source_stream'])} {safe(d['source_id'])} (group {safe(d['group'])})")
    out(f"  failed    {_when(d['failed_at'])} after {d['deliveries']} deliveries")
    out(f"  error     {safe(d['error_type'])}: {safe(d['error'])}")
    msg = d["message"]
    out("message (decoded):")
    for name, text in msg["fields"].items():
        extra = msg["decoded"].get(name, {})
        packed = extra.get("json", extra.get("msgpack"))
        kind = "json" if "json" in extra else "msgpack" if "msgpack" in extra else None
        shown = dumps(packed) if kind else text
        out(f"  {safe(name)} = {safe(shown)}" + (f"  ({kind})" if kind else ""))
    out("raw (as stored, escaped):")
    for k, v in d["raw"]:
        out(f"  {k} {v}")
    if d.get("traceback"):
        out("traceback:")
        for line in str(d["traceback"]).splitlines():
            out("  " + safe(line))


def _print_retry(report: RetryReport, json_out: bool) -> None:
    dead = safe(report.dead_stream)
    if json_out:
        for r in report.replayed:
            out(dumps(r | {"status": "would replay" if report.dry_run else "replayed"}))
        for r in report.stayed:
            out(dumps(r | {"status": "stayed"}))
    elif report.dry_run:
        out(f"would replay {_n(len(report.replayed), 'dead letter')} from {dead}")
        for r in report.replayed:
            fields = " ".join(f"{safe(k)}={safe(v)}" for k, v in r["fields"].items())
            out(f"{r['id']} -> {safe(r['source_stream'])} {fields}")
    else:
        done = report.replayed
        line = f"replayed {_n(len(done), 'dead letter')} from {dead}"
        if done and len(done) <= SHOWN_IDS:
            line += ": " + ", ".join(f"{r['id']} -> {safe(r['source_stream'])}" for r in done)
        out(line)
    if report.stayed:
        reasons = "; ".join(
            f"{safe(s['id'])} ({safe(s['reason'])})" for s in report.stayed[:SHOWN_IDS]
        )
        more = len(report.stayed) - SHOWN_IDS
        fail(
            f"{_n(len(report.stayed), 'dead letter')} stayed in {dead}: {reasons}"
            + (f" and {more} more (see --json)" if more > 0 else "")
        )


def register(app: typer.Typer) -> None:
    """Add the `dead` group to the CLI."""
    dead = typer.Typer(
        name="dead",
        cls=DefaultToList,
        no_args_is_help=True,
        help="Dead letters: list (`dead STREAM`), show, replay, edit, purge.",
    )
    app.add_typer(dead)

    @command(dead, "list")
    def list_(
        stream: Stream,
        count: Annotated[
            int, typer.Option("--count", min=1, max=1_000_000, help="At most this many.")
        ] = 100,
        where: Where = None,
        error: Error = None,
        since: Since = None,
        until: Until = None,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """List the dead letters of STREAM (kept in STREAM:dead), oldest first, filtered."""
        check_name("stream name", stream)
        filt = _filter(where, error, since, until)
        page = with_redis(redis_url, lambda c: _list(c, stream, filt, count))
        _print_list(page, json_out, not filt.empty)

    @command(dead, "show")
    def show(
        stream: Stream,
        entry_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's id.")],
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Show one dead letter: why it failed, the message decoded, every field as stored."""
        from ..admin.deadletters import dead_letter_stream, show_dead

        check_name("stream name", stream)
        (entry_id,) = _ids([entry_id]) or [""]
        found = with_redis(redis_url, lambda c: show_dead(c, stream, entry_id))
        if found is None:
            fail(f"no dead letter {entry_id} in {dead_letter_stream(stream)!r}")
        out(dumps(found)) if json_out else _print_show(found)

    @command(dead, "replay")
    def replay(
        stream: Stream,
        ids: Ids = None,
        all_: Annotated[
            bool, typer.Option("--all", help="Every dead letter (that matches).")
        ] = False,
        where: Where = None,
        error: Error = None,
        since: Since = None,
        until: Until = None,
        dry_run: DryRun = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Send dead letters back to their source stream (and delete them from STREAM:dead).

        Each goes back by itself: one that Redis refuses stays, and the message says which
        stayed and why (exit 1).
        """
        from ..admin.audit import Actor
        from ..admin.replay import retry_dead

        check_name("stream name", stream)
        filt = _filter(where, error, since, until)
        wanted = _selection(ids, all_, filt, "replay")
        bar = interactive(json_out) and not dry_run

        async def run(conn: RedisConnection) -> RetryReport:
            from ..admin.deadletters import dead_letter_stream

            total = None
            if bar:
                total = (
                    len(wanted)
                    if wanted
                    else int(await conn.client.xlen(dead_letter_stream(stream)) or 0)
                )
            with progress_bar(
                f"replaying {dead_letter_stream(stream)}",
                total,
                enabled=bar and (total or 0) >= MIN_ENTRIES,
            ) as advance:
                return await retry_dead(
                    conn,
                    stream,
                    wanted,
                    where=filt,
                    dry_run=dry_run,
                    actor=Actor.cli(),
                    progress=advance,
                )

        _print_retry(with_redis(redis_url, run), json_out)

    @command(dead, "edit")
    def edit(
        stream: Stream,
        entry_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's id.")],
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", metavar="FIELD=VALUE", help="Set or add a field (repeatable)."),
        ] = None,
        unset: Annotated[
            list[str] | None, typer.Option("--unset", metavar="FIELD", help="Remove a field.")
        ] = None,
        dry_run: DryRun = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Change a dead letter's fields and send it back (the dead letter is deleted with it)."""
        from ..admin.audit import Actor
        from ..admin.replay import edit_and_retry
        from ..exceptions import ConfigError

        check_name("stream name", stream)
        (entry_id,) = _ids([entry_id]) or [""]
        changes: dict[str, str] = {}
        for pair in set_ or []:
            name, eq, value = pair.partition("=")
            if not eq or not name:
                fail(f"--set {pair[:60]!r} is not FIELD=VALUE", 2)
            changes[name] = value
        if not changes and not unset:
            fail("say what to change: --set FIELD=VALUE or --unset FIELD", 2)

        async def run(conn: RedisConnection) -> RetryReport:
            try:
                return await edit_and_retry(
                    conn, stream, entry_id, changes, unset or [], dry_run=dry_run, actor=Actor.cli()
                )
            except ConfigError as exc:
                fail(str(exc), 2)

        _print_retry(with_redis(redis_url, run), json_out)

    @command(dead, "purge")
    def purge(
        stream: Stream,
        ids: Ids = None,
        all_: Annotated[
            bool, typer.Option("--all", help="Every dead letter (that matches).")
        ] = False,
        where: Where = None,
        error: Error = None,
        since: Since = None,
        until: Until = None,
        dry_run: DryRun = False,
        yes: Annotated[bool, typer.Option("--yes", help="Really delete them.")] = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Delete dead letters for good (needs --yes; --dry-run lists them)."""
        from ..admin.audit import Actor
        from ..admin.replay import purge_dead

        check_name("stream name", stream)
        filt = _filter(where, error, since, until)
        wanted = _selection(ids, all_, filt, "purge")
        if not yes and not dry_run:
            fail("purge deletes dead letters for good: see them with --dry-run, then add --yes", 2)
        report = with_redis(
            redis_url,
            lambda c: purge_dead(c, stream, wanted, where=filt, dry_run=dry_run, actor=Actor.cli()),
        )
        dead = safe(report.dead_stream)
        if json_out:
            out(dumps(report.as_dict()))
        elif dry_run:
            out(f"would purge {_n(len(report.deleted), 'dead letter')} from {dead}")
            for i in report.deleted:
                out(i)
        else:
            out(f"purged {_n(len(report.deleted), 'dead letter')} from {dead}")
        if report.missing:
            fail(f"{_n(len(report.missing), 'id')} not in {dead}: {_listed(report.missing)}")
