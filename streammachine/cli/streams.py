"""CLI commands: send, tail and streams (and `with_redis`, which the other command modules share)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
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
    from ..queries import check_stream

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


# --- tail ------------------------------------------------------------------------------------


class Printer:
    """Entries as JSON lines, a Rich table (terminal, not following) or plain `id k=v` lines."""

    def __init__(self, json_out: bool, follow: bool) -> None:
        self.json = json_out
        self.tty = sys.stdout.isatty()
        self.table = self.tty and not json_out and not follow

    def entries(self, entries: list[dict[str, Any]]) -> None:
        if self.json:
            for e in entries:
                out(dumps(e))
        elif self.table:
            self._table(entries)
        elif self.tty:
            from rich.console import Console
            from rich.markup import escape

            console = Console()
            for e in entries:
                fields = "  ".join(
                    f"[cyan]{escape(k)}[/]={escape(v)}" for k, v in e["fields"].items()
                )
                console.print(f"[dim]{e['id']}[/]  {fields}", soft_wrap=True, highlight=False)
        else:
            for e in entries:
                fields = " ".join(f"{k}={_one_line(v)}" for k, v in e["fields"].items())
                out(f"{e['id']} {fields}")

    def _table(self, entries: list[dict[str, Any]]) -> None:
        from rich.console import Console
        from rich.table import Table

        if not entries:
            return
        names = list(dict.fromkeys(k for e in entries for k in e["fields"]))
        table = Table(title=entries[0]["stream"], title_justify="left")
        table.add_column("id", style="dim", no_wrap=True)
        columns = names if len(names) <= 8 else ["fields"]
        for name in columns:
            table.add_column(name, overflow="fold")
        for e in entries:
            f = e["fields"]
            if len(names) <= 8:
                table.add_row(e["id"], *(f.get(n, "") for n in names))
            else:
                table.add_row(e["id"], "\n".join(f"{k}={v}" for k, v in f.items()))
        Console().print(table)


def _one_line(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


async def _until_signal(body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` until it returns or SIGINT/SIGTERM arrives (then stop quietly)."""
    import signal

    import anyio

    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await body()
        tg.cancel_scope.cancel()


async def _tail_plain(
    conn: RedisConnection,
    stream: str,
    start: str | None,
    count: int | None,
    follow: bool,
    p: Printer,
) -> None:
    from ..queries import check_stream, entry_dict, read_entries

    client: Any = conn.client
    exists = await check_stream(conn, stream)
    if not exists and not follow:
        fail(f"stream {stream!r} does not exist (use --follow to wait for it)")
    if not follow:
        p.entries(await read_entries(conn, stream, after=start, count=count or 10))
        return
    cursor = start if start not in (None, "$") else "0-0"
    if start in (None, "$") and exists:
        # Print the history and find where "new" starts in one transaction, so nothing slips
        # in between.
        async with client.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(stream)
            if start is None:
                pipe.xrevrange(stream, "+", "-", count=count or 10)
            info, *history = await pipe.execute()
        cursor = info["last-generated-id"].decode()
        for entries in history:
            p.entries([entry_dict(stream, i, f) for i, f in reversed(entries)])
    elif cursor in ("0", "-"):
        cursor = "0-0"

    async def follow_loop() -> None:
        nonlocal cursor
        while True:
            reply = await client.xread({stream: cursor}, count=count or 100, block=2000)
            for _, entries in reply or []:
                if entries:
                    p.entries([entry_dict(stream, i, f) for i, f in entries])
                    cursor = entries[-1][0].decode()

    await _until_signal(follow_loop)


async def _tail_group(
    conn: RedisConnection,
    stream: str,
    group: str,
    consumer: str,
    start: str | None,
    count: int | None,
    follow: bool,
    ack: bool,
    p: Printer,
) -> None:
    from ..queries import check_stream, entry_dict

    client: Any = conn.client
    if not await check_stream(conn, stream):
        fail(f"stream {stream!r} does not exist, so it has no group {group!r}")
    # Escaped, not decoded: another group's name may not be UTF-8, and must not stop this one.
    groups = [
        g["name"].decode("utf-8", "backslashreplace") for g in await client.xinfo_groups(stream)
    ]
    if group not in groups:
        have = f" (it has: {', '.join(groups)})" if groups else " (it has none)"
        fail(
            f"stream {stream!r} has no consumer group {group!r}{have}; tail creates nothing: "
            "start the app, or create it with XGROUP CREATE"
        )
    cursor = ">" if start in (None, "$", ">") else start

    async def read(block_ms: int | None) -> None:
        nonlocal cursor
        reply = await client.xreadgroup(
            group,
            consumer,
            {stream: cursor},
            count=count or (100 if follow else 10),
            block=block_ms,
        )
        raw = [e for _, batch in reply or [] for e in batch]
        if cursor != ">":  # reading this consumer's pending history: move on, then to new ones
            cursor = raw[-1][0].decode() if raw else ">"
        # Fields are None for an entry deleted since it was delivered: nothing to show, but
        # --ack still clears it from the pending list.
        p.entries([entry_dict(stream, i, f) for i, f in raw if f is not None])
        if ack and raw:
            await client.xack(stream, group, *[i for i, _ in raw])

    if not follow:
        await read(None)
        return

    async def follow_loop() -> None:
        while True:
            await read(2000 if cursor == ">" else None)

    await _until_signal(follow_loop)


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
                out(
                    f"  group {g['name']} consumers={g['consumers']} pending={g['pending']} "
                    f"lag={_na(g['lag'])} oldest_pending_idle_ms={_na(g['oldest_pending_idle_ms'])}"
                )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("stream", "length", "first id", "last id", "group"):
        table.add_column(col, justify="right" if col == "length" else "left", overflow="fold")
    for col in ("consumers", "pending", "lag", "oldest pending"):
        table.add_column(col, justify="right")
    for info in infos:
        head = [
            info["stream"],
            str(info["length"]),
            info["first_id"] or "-",
            info["last_id"] or "-",
        ]
        if not info["groups"]:
            table.add_row(*head, "-", "", "", "", "")
        for n, g in enumerate(info["groups"]):
            idle = g["oldest_pending_idle_ms"]
            table.add_row(
                *(head if n == 0 else ["", "", "", ""]),
                g["name"], str(g["consumers"]), str(g["pending"]),
                _na(g["lag"], "many"), "-" if idle is None else f"{idle / 1000:.1f} s idle",
            )  # fmt: skip
    Console().print(table)


def _na(value: Any, none: str = "-") -> str:
    return none if value is None else str(value)


def register(app: typer.Typer) -> None:
    """Add `send`, `tail` and `streams` to the CLI."""

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

    @command(app, "tail")
    def tail(
        stream: Annotated[str, typer.Argument(help="The stream to read.")],
        start: Annotated[
            str | None,
            typer.Option(
                "--from", metavar="ID|0|$", help="Read after this id (0 = the start, $ = new only)."
            ),
        ] = None,
        count: Annotated[
            int | None,
            typer.Option(
                "--count",
                min=1,
                max=1_000_000,
                help="Entries to show (default 10; per read with -f).",
            ),
        ] = None,
        follow: Annotated[
            bool, typer.Option("--follow", "-f", help="Wait for new entries until Ctrl-C.")
        ] = False,
        group: Annotated[
            str | None, typer.Option("--group", help="Read as a consumer of this group.")
        ] = None,
        consumer: Annotated[
            str | None, typer.Option("--consumer", help="Consumer name (default tail-<host>).")
        ] = None,
        ack: Annotated[bool, typer.Option("--ack", help="Acknowledge what was read.")] = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Print a stream's entries: the last 10, those after --from, or new ones with -f.

        With --group it reads as that group's consumer (XREADGROUP; the group must exist), so
        what it reads is delivered to it, and acks only with --ack.
        """
        import re
        import signal
        import socket

        check_name("stream name", stream)
        if group is not None:
            check_name("group name", group)
        if consumer is not None:
            check_name("consumer name", consumer)
        if group is None and (consumer is not None or ack):
            fail("--consumer and --ack need --group", 2)
        if start is not None and not re.fullmatch(r"\$|>|-|\d+(-\d+)?", start):
            fail(f"--from {start!r} is not a stream id: use 0, $ or an id like 1700000000000-0", 2)
        p = Printer(json_out, follow)
        name = consumer or f"tail-{socket.gethostname()}"

        def interrupted(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupted)
        try:
            if group is None:
                with_redis(redis_url, lambda c: _tail_plain(c, stream, start, count, follow, p))
            else:
                with_redis(
                    redis_url,
                    lambda c: _tail_group(c, stream, group, name, start, count, follow, ack, p),
                )
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM is how a follow ends: exit 0

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
        from ..queries import list_streams

        check_name("pattern", pattern)
        infos = with_redis(redis_url, lambda c: list_streams(c, pattern, limit))
        _print_streams(infos, json_out)
