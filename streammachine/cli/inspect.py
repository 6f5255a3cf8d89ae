"""CLI command `inspect`: browse a stream by id or time range, each entry decoded (text, JSON,
msgpack) and, with --raw, as stored; filtered by field; bounded."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import JsonOut, check_name, command, dumps, fail, out, safe, with_redis


def _entry(e: dict[str, Any], raw: bool) -> None:
    fields = " ".join(f"{safe(k)}={safe(v)}" for k, v in e["fields"].items())
    out(f"{e['id']}  {fields}" + ("  (more fields not shown)" if e["fields_cut"] else ""))
    for name, d in e["decoded"].items():
        kind = "json" if "json" in d else "msgpack" if "msgpack" in d else None
        if kind:
            out(f"    {safe(name)} ({kind}): {safe(dumps(d[kind]))}")
    if "value" in e:
        shown = (
            dumps(e["value"]) if e["value"] is not None else f"does not fit: {e['schema_error']}"
        )
        out(f"    schema: {safe(shown)}")
    if raw:
        for k, v in e["raw"]:
            out(f"    raw {k} {v}")


def register(app: typer.Typer) -> None:
    """Add `inspect` to the CLI."""

    @command(app, "inspect")
    def inspect(
        stream: Annotated[str, typer.Argument(help="The stream to browse.")],
        start: Annotated[
            str | None,
            typer.Option(
                "--from", metavar="ID|TIME", help="From this id, time (ISO 8601) or duration ago."
            ),
        ] = None,
        end: Annotated[
            str | None, typer.Option("--to", metavar="ID|TIME", help="Up to this id or time.")
        ] = None,
        where: Annotated[
            list[str] | None,
            typer.Option(
                "--where",
                metavar="FIELD=VALUE|FIELD~TEXT",
                help="Only entries whose field equals VALUE (=) or contains TEXT (~); repeatable.",
            ),
        ] = None,
        count: Annotated[
            int, typer.Option("--count", min=1, max=1000, help="At most this many entries.")
        ] = 20,
        scan: Annotated[
            int,
            typer.Option("--scan", min=1, max=1_000_000, help="Read at most this many entries."),
        ] = 10_000,
        newest: Annotated[bool, typer.Option("--newest", help="Newest first.")] = False,
        raw: Annotated[bool, typer.Option("--raw", help="Also every field as stored.")] = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Browse a stream without consuming it: entries decoded and raw, filtered by field.

        From an id or a time (`--from 10m`, `--from 2030-01-01T09:00:00Z`); JSON and msgpack
        values are decoded too.

        Prints where to go on (`--from '(ID'`) when more entries may match.
        """
        from ..admin.inspector import inspect_stream, parse_where, range_ids
        from ..exceptions import ConfigError

        check_name("stream name", stream)
        try:
            parse_where(where or [])
            range_ids(start, end)
        except ConfigError as exc:
            fail(str(exc), 2)
        page = with_redis(
            redis_url,
            lambda c: inspect_stream(
                c, stream, start=start, end=end, where=where or [], count=count,
                newest_first=newest, scan_limit=scan,
            ),
        )  # fmt: skip
        if not page["exists"]:
            fail(f"stream {stream!r} does not exist")
        if json_out:
            for e in page["entries"]:
                out(dumps(e))
        else:
            for e in page["entries"]:
                _entry(e, raw)
        note = f"{len(page['entries'])} shown, {page['scanned']} read"
        if page["next"]:
            flag = "--to" if newest else "--from"
            note += f"; more may match: {flag} '{page['next']}'"
        sys.stderr.write(note + "\n")
