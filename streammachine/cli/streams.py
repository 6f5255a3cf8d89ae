"""CLI commands: `send` (now, or delayed with --delay/--at) and `streams`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import keys
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

SEND_BATCH = 1000
_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


# --- send ------------------------------------------------------------------------------------


def _as_record(obj: Any, where: str) -> dict[Any, Any]:
    from ..codec import encode_fields

    if not isinstance(obj, dict):
        kind = _JSON_TYPES.get(type(obj), "a number")
        fail(f'{where} is {kind}, not a JSON object: give one object like {{"id": 1}}', 2)
    try:
        return encode_fields(obj)
    except ValueError as exc:
        fail(f"{where}: {exc}", 2)


def _records_from_file(path: str) -> tuple[list[dict[Any, Any]], str]:
    """The file's records, and a digest of its bytes (names the file's progress marker)."""
    import hashlib
    import json

    if not path:
        fail("--file is empty: give a path, or - for stdin", 2)
    name = "stdin" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        fail(f"cannot read {name}: {exc.strerror or exc}", 2)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        fail(
            f"line {line} of {name} is not UTF-8 text ({exc.reason}); convert the file to UTF-8", 2
        )
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = parse_json(line)
        except TooDeep as exc:
            fail(f"line {n} of {name}: {exc}", 2)
        except ValueError as exc:
            reason = (
                f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
            )
            fail(f"line {n} of {name} is not valid JSON: {reason}", 2)
        records.append(_as_record(obj, f"line {n} of {name}"))
    return records, hashlib.sha256(data).hexdigest()[:32]


def _records_from_args(pairs: list[str], json_obj: str | None) -> dict[Any, Any]:
    obj: dict[str, Any] = {}
    if json_obj is not None:
        try:
            parsed = parse_json(json_obj)
        except TooDeep as exc:
            fail(f"--json: {exc}", 2)
        except ValueError as exc:
            fail(f"--json is not valid JSON: {exc}", 2)
        if not isinstance(parsed, dict):
            _as_record(parsed, "--json")
        obj.update(parsed)
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            fail(f"{pair!r} is not FIELD=VALUE (for example user=42)", 2)
        obj[field] = value
    return _as_record(obj, "the entry")


async def _send_all(
    conn: RedisConnection,
    stream: str,
    records: list[dict[Any, Any]],
    count: int,
    source: str | None = None,
) -> None:
    """Append `count` rounds of `records`, printing each new id. Every write is idempotent: a
    pipeline whose reply was lost is sent again and writes nothing twice (`produce.Producer`).
    With `source` (a file's digest) the lines are numbered and a progress marker per file and
    stream remembers how far a run got, so re-running an interrupted `send --file` skips what it
    wrote; a run that finishes removes its marker (sending the file again sends it again)."""
    from ..admin.queries import check_stream
    from ..produce import Producer, send_lines

    await check_stream(conn, stream)
    total = len(records) * count
    producer = Producer(conn, "cli")
    skipped = 0
    progress = None
    if total >= 10 * SEND_BATCH and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        progress = Progress(console=Console(stderr=True), transient=True)
        progress.start()
    task = progress.add_task(f"sending to {stream}", total=total) if progress else None
    try:
        for start in range(0, total, SEND_BATCH):
            stop = min(total, start + SEND_BATCH)
            flat = [_flat(records[n % len(records)]) for n in range(start, stop)]
            if source is None:
                ids = await producer.write(stream, flat, maxlen=None)
            else:
                numbered = list(zip(range(start + 1, stop + 1), flat, strict=True))
                ids = await send_lines(conn, stream, numbered, source)
            skipped += sum(1 for i in ids if not i)
            written = [i for i in ids if i]
            if written:
                out("\n".join(written))
            if progress is not None and task is not None:
                progress.advance(task, stop - start)
    finally:
        if progress is not None:
            progress.stop()
    if source is not None:
        await conn.client.delete(keys.progress(stream, source))
    if skipped:
        print(
            f"skipped {skipped} line(s) an interrupted earlier run of this file had written",
            file=sys.stderr,
        )


def _flat(record: dict[Any, Any]) -> list[Any]:
    return [x for pair in record.items() for x in pair]


# --- streams ---------------------------------------------------------------------------------


def _print_streams(infos: list[dict[str, Any]], json_out: bool, wide: bool = False) -> None:
    if json_out:
        for info in infos:
            out(dumps(info))
        return
    if not sys.stdout.isatty():
        for info in infos:
            out(
                f"{safe(info['stream'])} length={info['length']} first={info['first_id']} "
                f"last={info['last_id']} groups={len(info['groups'])}"
            )
            for g in info["groups"]:
                owner = f" owner={safe(g['owner'])}" if g.get("owner") else ""
                stopped = g.get("paused_agents") or []
                paused = f" paused={safe(','.join(stopped))}" if stopped else ""
                out(
                    f"  group {safe(g['name'])} consumers={g['consumers']} pending={g['pending']} "
                    f"lag={_na(g['lag'])} oldest_pending_idle_ms={_na(g['oldest_pending_idle_ms'])}"
                    f"{owner}{paused}"
                )
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Short headers that never wrap, so the table fits 80 columns; --wide adds the rest.
    columns = ["Stream", ">Len", "Group", ">Cons", ">Pend", ">Lag", ">Idle", "Paused"]
    if wide:
        columns[2:2] = ["First id", "Last id"]
        columns.append("Owner")
    table = Table()
    for col in columns:
        name = col.lstrip(">")
        table.add_column(
            name, overflow="fold", min_width=len(name), justify="right" if col[0] == ">" else "left"
        )
    for info in infos:
        head = [Text(safe(info["stream"])), Text(str(info["length"]))]
        if wide:
            head += [Text(info["first_id"] or "-"), Text(info["last_id"] or "-")]
        blank = [Text("")] * len(head)
        for n, g in enumerate(info["groups"] or [None]):
            if g is None:
                table.add_row(*head, Text("-"), *([Text("")] * (len(columns) - len(head) - 1)))
                continue
            idle = g["oldest_pending_idle_ms"]
            row = [
                Text(safe(g["name"])), Text(str(g["consumers"])), Text(str(g["pending"])),
                Text(_na(g["lag"], "many")), Text("-" if idle is None else f"{idle / 1000:.1f} s"),
                Text(safe(", ".join(g.get("paused_agents") or [])), "yellow"),
            ]  # fmt: skip
            if wide:
                row.append(Text(safe(g.get("owner") or "")))
            table.add_row(*(head if n == 0 else blank), *row)
    Console().print(table)


async def _with_paused(conn: Any, infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`infos` with each group's `paused_agents` (`app/agent` of the paused agents reading it)."""
    from ..admin.agents import list_agents

    stopped: dict[tuple[Any, Any], list[str]] = {}
    for a in await list_agents(conn):
        if a["paused"]:
            stopped.setdefault((a["stream"], a["group"]), []).append(f"{a['app']}/{a['agent']}")
    for info in infos:
        for g in info["groups"]:
            g["paused_agents"] = stopped.get((info["stream"], g["name"]), [])
    return infos


def _na(value: Any, none: str = "-") -> str:
    return none if value is None else str(value)


def register(app: typer.Typer) -> None:
    """Add `send` and `streams` to the CLI."""

    @command(app, "send")
    def send(
        stream: Annotated[str, typer.Argument(help="The stream to append to.")],
        pairs: Annotated[
            list[str] | None,
            typer.Argument(metavar="[FIELD=VALUE]...", help="Fields of the entry."),
        ] = None,
        json_obj: Annotated[
            str | None, typer.Option("--json", metavar="OBJECT", help="The entry as a JSON object.")
        ] = None,
        file: Annotated[
            str | None,
            typer.Option("--file", metavar="PATH|-", help="One entry per JSON line (- = stdin)."),
        ] = None,
        count: Annotated[
            int, typer.Option("--count", min=1, max=10_000_000, help="Send the entry N times.")
        ] = 1,
        delay: Annotated[
            str | None,
            typer.Option("--delay", metavar="DURATION", help="Append it later, e.g. 30s, 5m, 2h."),
        ] = None,
        at: Annotated[
            str | None,
            typer.Option("--at", metavar="ISO8601", help="Append it at this time."),
        ] = None,
        namespace: Annotated[
            str | None,
            typer.Option(
                "--namespace",
                envvar="STREAMMACHINE_STORAGE_NAMESPACE",
                help="With --delay/--at: the namespace whose apps move it (default 'default').",
            ),
        ] = None,
        redis_url: str | None = None,
    ) -> None:
        """Append entries to a stream and print each new id.

        With --delay or --at the entries wait in Redis until due (a running app of the
        namespace appends them) and their schedule ids are printed; see `scheduled`.

        Examples: `send orders id=7 total=9.5`, `send orders --json '{"id": 7}'`,
        `send orders --file orders.jsonl`, `send reminders user=7 --delay 30m`.
        """
        check_name("stream name", stream)
        from .schedule import due_from_flags, send_later

        due = due_from_flags(delay, at)
        if file is not None and (pairs or json_obj is not None):
            fail("give FIELD=VALUE pairs and/or --json, or --file, not both", 2)
        source = None
        if file is not None:
            records, digest = _records_from_file(file)
            source = f"{digest}:{count}"
        elif pairs or json_obj is not None:
            records = [_records_from_args(pairs or [], json_obj)]
        else:
            fail("nothing to send: give FIELD=VALUE pairs, --json OBJECT or --file PATH", 2)
        if records and due is not None:
            with_redis(
                redis_url, lambda conn: send_later(conn, stream, records, count, due, namespace)
            )
        elif records:
            with_redis(redis_url, lambda conn: _send_all(conn, stream, records, count, source))

    @command(app, "streams")
    def streams(
        pattern: Annotated[str, typer.Argument(help="Glob of stream names.")] = "*",
        limit: Annotated[
            int, typer.Option("--limit", min=1, max=1_000_000, help="At most this many.")
        ] = 1000,
        wide: Annotated[bool, typer.Option("--wide", help="Every column, however wide.")] = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """List streams with their groups: consumers, pending, lag, oldest pending, paused agents.

        Uses SCAN (never KEYS), so it is safe on a busy server.
        """
        from ..admin.queries import list_streams

        check_name("pattern", pattern)

        async def read(conn: RedisConnection) -> list[dict[str, Any]]:
            return await _with_paused(conn, await list_streams(conn, pattern, limit))

        _print_streams(with_redis(redis_url, read), json_out, wide)
