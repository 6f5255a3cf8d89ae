"""CLI command: `tail` (a stream's entries, as a reader or as a group's consumer, following)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import JsonOut, check_name, command, dumps, fail, out, until_signal, with_redis

if TYPE_CHECKING:
    from ..connection import RedisConnection


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


async def _tail_plain(
    conn: RedisConnection,
    stream: str,
    start: str | None,
    count: int | None,
    follow: bool,
    p: Printer,
) -> None:
    from ..admin.queries import check_stream, entry_dict, read_entries

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

    await until_signal(follow_loop)


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
    from ..admin.queries import check_stream, entry_dict

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

    await until_signal(follow_loop)


def register(app: typer.Typer) -> None:
    """Add `tail` to the CLI."""

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
