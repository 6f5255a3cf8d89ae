"""CLI commands: `send` (now, or delayed with --delay/--at) and `streams`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

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


def _records_from_file(path: str) -> list[dict[Any, Any]]:
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
    return records


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
    conn: RedisConnection, stream: str, records: list[dict[Any, Any]], count: int
) -> None:
    from ..admin.queries import check_stream

    await check_stream(conn, stream)
    total = len(records) * count
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
            async with conn.client.pipeline(transaction=False) as pipe:
                for n in range(start, stop):
                    pipe.xadd(stream, records[n % len(records)])
                ids = await pipe.execute()
            out("\n".join(as_text(i) for i in ids))
            if progress is not None and task is not None:
                progress.advance(task, stop - start)
    finally:
        if progress is not None:
            progress.stop()


# --- streams ---------------------------------------------------------------------------------


def _print_streams(infos: list[dict[str, Any]], json_out: bool) -> None:
    if json_out:
        for info in infos:
            out(dumps(info))
        return
    if not sys.stdout.isatty():
        for info in infos:
            out(
                f"{info['stream']} length={info['length']} first={info['first_id']} "
                f"last={info['last_id']} groups={len(info['groups'])}"
            )
            for g in info["groups"]:
                owner = f" owner={g['owner']}" if g.get("owner") else ""
                out(
                    f"  group {g['name']} consumers={g['consumers']} pending={g['pending']} "
                    f"lag={_na(g['lag'])} oldest_pending_idle_ms={_na(g['oldest_pending_idle_ms'])}"
                    f"{owner}"
                )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("stream", "length", "first id", "last id", "group"):
        table.add_column(col, justify="right" if col == "length" else "left", overflow="fold")
    for col in ("consumers", "pending", "lag", "oldest pending", "owner"):
        table.add_column(col, justify="right")
    for info in infos:
        head = [
            info["stream"],
            str(info["length"]),
            info["first_id"] or "-",
            info["last_id"] or "-",
        ]
        if not info["groups"]:
            table.add_row(*head, "-", "", "", "", "", "")
        for n, g in enumerate(info["groups"]):
            idle = g["oldest_pending_idle_ms"]
            table.add_row(
                *(head if n == 0 else ["", "", "", ""]),
                g["name"], str(g["consumers"]), str(g["pending"]),
                _na(g["lag"], "many"), "-" if idle is None else f"{idle / 1000:.1f} s idle",
                g.get("owner") or "",
            )  # fmt: skip
    Console().print(table)


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
        if file is not None:
            records = _records_from_file(file)
        elif pairs or json_obj is not None:
            records = [_records_from_args(pairs or [], json_obj)]
        else:
            fail("nothing to send: give FIELD=VALUE pairs, --json OBJECT or --file PATH", 2)
        if records and due is not None:
            with_redis(
                redis_url, lambda conn: send_later(conn, stream, records, count, due, namespace)
            )
        elif records:
            with_redis(redis_url, lambda conn: _send_all(conn, stream, records, count))

    @command(app, "streams")
    def streams(
        pattern: Annotated[str, typer.Argument(help="Glob of stream names.")] = "*",
        limit: Annotated[
            int, typer.Option("--limit", min=1, max=1_000_000, help="At most this many.")
        ] = 1000,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """List streams with their groups: consumers, pending, lag, oldest pending entry.

        Uses SCAN (never KEYS), so it is safe on a busy server.
        """
        from ..admin.queries import list_streams

        check_name("pattern", pattern)
        infos = with_redis(redis_url, lambda c: list_streams(c, pattern, limit))
        _print_streams(infos, json_out)
