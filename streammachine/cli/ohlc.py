"""`streammachine ohlc STREAM`: candles from a tick stream's history, and live with --follow."""

from __future__ import annotations

import sys
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
from .progress import MIN_ENTRIES, interactive, progress_bar

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..ohlc import FastOHLC

CHUNK = 10_000


def _rows(agg: FastOHLC, symbol: str | None) -> list[dict[str, str]]:
    from ..ohlc import format_candle_for_redis

    return [
        format_candle_for_redis(c, s, iv)
        for iv in agg.intervals
        for s in agg.symbols()
        if symbol is None or s == symbol
        for c in agg.get_candles(s, iv)
    ]


def _table(rows: list[dict[str, str]], title: str) -> Any:
    from rich.table import Table

    from ..ohlc import interval_name

    table = Table(title=title)
    for col in ("symbol", "interval", "start", "open", "high", "low", "close", "volume", "trades"):
        table.add_column(col, justify="left" if col in ("symbol", "interval", "start") else "right")
    import time

    for r in rows[-200:]:
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(r["candle_start_ms"]) / 1000))
        table.add_row(
            r["symbol"], interval_name(int(r["interval_ms"])), start, r["open"], r["high"],
            r["low"], r["close"], r["volume"], r["trade_count"],
        )  # fmt: skip
    return table


def register(app: typer.Typer) -> None:
    """Add the `ohlc` command to the CLI."""

    @command(app, "ohlc")
    def ohlc(
        stream: Annotated[str, typer.Argument(help="The tick stream.")],
        interval: Annotated[
            list[str] | None,
            typer.Option("--interval", "-i", help="Candle length: 1m, 5m, 90s, 1h (repeatable)."),
        ] = None,
        symbol: Annotated[str | None, typer.Option("--symbol", help="Only this symbol.")] = None,
        from_id: Annotated[str, typer.Option("--from", help="Start at this entry id.")] = "0",
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep going live.")] = False,
        emit: Annotated[
            str | None,
            typer.Option("--emit", help="Also write completed candles to <PREFIX>_<interval>."),
        ] = None,
        price_field: Annotated[str, typer.Option("--price-field")] = "price",
        volume_field: Annotated[str, typer.Option("--volume-field")] = "volume",
        symbol_field: Annotated[str, typer.Option("--symbol-field")] = "symbol",
        timestamp_field: Annotated[
            str | None, typer.Option("--timestamp-field", help="Tick time in ms (default: id).")
        ] = None,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Compute OHLC candles from a tick stream: its history, then live with --follow."""
        check_name("stream name", stream)
        if emit is not None:
            check_name("--emit prefix", emit)
        from ..exceptions import ConfigError
        from ..ohlc import FastOHLC, parse_interval

        try:
            agg = FastOHLC([parse_interval(i) for i in interval or ["1m"]])
        except ConfigError as exc:
            fail(str(exc), 2)
        fields: dict[str, Any] = {
            "price_field": price_field,
            "volume_field": volume_field,
            "symbol_field": symbol_field,
            "timestamp_field": timestamp_field,
        }

        async def write(conn: RedisConnection, completed: list[tuple[str, int, Any]]) -> None:
            from ..ohlc import format_candle_for_redis, interval_name

            async with conn.client.pipeline(transaction=False) as pipe:
                for s, iv, c in completed:
                    name = f"{emit}_{interval_name(iv)}"
                    pipe.xadd(name, format_candle_for_redis(c, s, iv))  # type: ignore[arg-type]
                await pipe.execute()

        def mine(completed: list[tuple[str, int, Any]]) -> list[tuple[str, int, Any]]:
            return [t for t in completed if symbol is None or t[0] == symbol]

        async def history(conn: RedisConnection) -> str:
            from ..admin.queries import check_stream

            if not await check_stream(conn, stream) and not follow:
                fail(f"no stream named {stream!r} (see: streammachine streams)")
            start, last = ("-" if from_id in ("0", "-") else from_id), from_id
            length = int(await conn.client.xlen(stream))
            # The whole stream when read from its start; from an id, how much is left is unknown.
            total = length if start == "-" else None
            show = interactive(json_out) and length >= MIN_ENTRIES
            with progress_bar(f"reading {stream}", total, enabled=show) as advance:
                while True:
                    entries: Any = await conn.client.xrange(stream, min=start, count=CHUNK)
                    if entries:
                        agg.process_stream_batch([(stream, entries)], **fields)
                        last = entries[-1][0].decode()
                        start = "(" + last
                        advance(len(entries))
                    if len(entries) < CHUNK:
                        return last

        def show(rows: list[dict[str, str]], title: str) -> None:
            if json_out or not sys.stdout.isatty():
                for r in rows:
                    out(dumps(r) if json_out else " ".join(f"{k}={v}" for k, v in r.items()))
            else:
                from rich.console import Console

                Console().print(_table(rows, title))

        async def main(conn: RedisConnection) -> None:
            last = await history(conn)
            if not follow:
                show(_rows(agg, symbol), f"{stream}: {agg.tick_count} ticks")
                if emit:
                    await write(conn, mine(agg.flush_completed()))
                return
            await live(conn, last)

        async def live(conn: RedisConnection, last: str) -> None:
            from ..ohlc import format_candle_for_redis
            from .common import until_signal

            interactive = sys.stdout.isatty() and not json_out
            recent: list[dict[str, str]] = []

            async def loop() -> None:
                nonlocal last
                view = None
                if interactive:
                    from rich.live import Live

                    view = Live(_table(_rows(agg, symbol), stream), refresh_per_second=2)
                    view.start()
                try:
                    while True:
                        completed = mine(agg.flush_completed())
                        if completed:
                            if emit:
                                await write(conn, completed)
                            rows = [format_candle_for_redis(c, s, iv) for s, iv, c in completed]
                            recent[:] = (recent + rows)[-200:]
                            if view is None:
                                show(rows, stream)
                        if view is not None:
                            title = f"{stream}: {agg.tick_count} ticks (live)"
                            view.update(_table(recent + _rows(agg, symbol), title))
                        reply: Any = await conn.client.xread(
                            {stream: last}, count=CHUNK, block=1000
                        )
                        for _, entries in reply or []:
                            agg.process_stream_batch([(stream, entries)], **fields)
                            last = entries[-1][0].decode()
                finally:
                    if view is not None:
                        view.stop()

            await until_signal(loop)

        with_redis(redis_url, main)
