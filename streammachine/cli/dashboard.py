"""CLI commands: `dashboard` (the web dashboard, standalone) and `top` (the same in a terminal)."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import JsonOut, command, fail, out, resolve_url

if TYPE_CHECKING:
    from rich.console import Group

TOKEN_ENV = "STREAMMACHINE_DASHBOARD_TOKEN"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @command(app, "dashboard", log_level="info")
    def dashboard(
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 8000,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                envvar=TOKEN_ENV,
                show_envvar=True,
                help="Require 'Authorization: Bearer <token>' (or ?token=) on all but /healthz.",
            ),
        ] = None,
        redis_url: str | None = None,
    ) -> None:
        """Serve the web dashboard, /metrics, /healthz and /readyz, reading Redis only."""
        url = resolve_url(redis_url)
        import anyio

        from ..dashboard.server import run_dashboard_server

        async def main() -> bool:
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            stop.set()
                            return

                tg.start_soon(on_signal)
                served = await run_dashboard_server(url, host, port, stop, token or None)
                tg.cancel_scope.cancel()
            return served

        if not anyio.run(main):
            fail(f"cannot serve the dashboard on {host}:{port}; pick another --port")

    @command(app, "top")
    def top(
        once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
        interval: Annotated[
            float,
            typer.Option("--interval", min=0.1, max=3600, help="Seconds between refreshes."),
        ] = 1.0,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Live instances, agents, streams, groups, dead letters and timers (Ctrl-C exits)."""
        import math

        if not math.isfinite(interval):
            fail(f"--interval {interval} is not a number of seconds: give e.g. --interval 2", 2)
        if json_out and not once:
            fail("--json needs --once (a live view cannot be parsed)")
        url = resolve_url(redis_url)
        import anyio

        try:
            anyio.run(_top, url, once, json_out, interval)
        except KeyboardInterrupt:
            raise SystemExit(0) from None


async def _top(url: str, once: bool, json_out: bool, interval_s: float) -> None:
    import anyio
    from rich.console import Console
    from rich.live import Live

    from ..dashboard.status import collect_status
    from ..exceptions import REDIS_FAILURES
    from ..urls import create_client, mask_url

    client = create_client(url, max_connections=2)
    rates = _Rates()
    try:
        try:
            status = await collect_status(client)
        except REDIS_FAILURES as exc:
            fail(f"cannot read Redis at {mask_url(url)}: {exc}")
        if once:
            if json_out:
                out(json.dumps(status, ensure_ascii=False, sort_keys=True))
            else:
                Console().print(_render(status, rates))
            return
        with Live(_render(status, rates), refresh_per_second=4, screen=False) as live:
            while True:
                await anyio.sleep(interval_s)
                try:
                    status = await collect_status(client)
                except REDIS_FAILURES as exc:
                    from rich.text import Text

                    live.update(Text(f"cannot read Redis at {mask_url(url)}: {exc}", "red"))
                    continue
                live.update(_render(status, rates))
    finally:
        await client.aclose()


class _Rates:
    """Messages/s per agent from successive heartbeats of its instance (the instance's clock)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[float, float, float | None]] = {}

    def rate(self, inst: dict[str, Any], agent: dict[str, Any]) -> float | None:
        key = (str(inst.get("id")), str(agent.get("name")))
        processed = float((agent.get("stats") or {}).get("processed", 0))
        at = float(inst.get("heartbeat_at", 0))
        before = self.seen.get(key)
        if before is None:
            self.seen[key] = (processed, at, None)
            return None
        if at > before[1]:
            self.seen[key] = (processed, at, max(0.0, (processed - before[0]) / (at - before[1])))
        return self.seen[key][2]


def _duration(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _render(status: dict[str, Any], rates: _Rates) -> Group:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    # Data is wrapped in Text so a name like "[bold]x" is shown, never read as Rich markup.
    def t(value: Any) -> Text:
        return Text("—" if value is None else str(value))

    def n(value: Any) -> Text:
        return Text("—" if value is None else f"{value:,}", justify="right")

    def table(title: str, *columns: str) -> Table:
        tab = Table(title=title, title_justify="left", expand=False)
        for c in columns:
            tab.add_column(c, overflow="fold")
        return tab

    now_s = status["generated_at_ms"] / 1000
    instances = table("Instances", "App", "Instance", "Host", "PID", "Up", "Heartbeat", "State")
    agents = table(
        "Agents", "App", "Instance", "Agent", "Stream", "Group", "Processed", "Rate/s",
        "Failed", "Retried", "Dead", "Avg latency",
    )  # fmt: skip
    timers = table("Timers", "App", "Instance", "Timer", "Every", "Runs", "Failures")
    for inst in status["instances"]:
        where = f"{inst.get('host')}:{inst.get('pid')}"
        instances.add_row(
            t(inst.get("app")), t(inst.get("id")), t(inst.get("host")), n(inst.get("pid")),
            t(_duration(max(0.0, now_s - float(inst.get("started_at", now_s))))),
            t(_duration(inst.get("heartbeat_age_s")) + " ago"),
            Text("up", "green") if inst.get("fresh") else Text("late", "red"),
        )  # fmt: skip
        for a in inst.get("agents") or []:
            st = a.get("stats") or {}
            calls = sum(st.get("latency_buckets") or [])
            rate = rates.rate(inst, a)
            agents.add_row(
                t(inst.get("app")), t(where), t(a.get("name")), t(a.get("stream")),
                t(a.get("group")), n(st.get("processed")),
                t("…" if rate is None else f"{rate:,.1f}"), n(st.get("failed")),
                n(st.get("retried")), n(st.get("dead")),
                t(_duration(st["latency_s_total"] / calls) if calls else None),
            )  # fmt: skip
        for tm in inst.get("timers") or []:
            timers.add_row(
                t(inst.get("app")), t(where), t(tm.get("name")), t(_duration(tm.get("interval_s"))),
                n(tm.get("runs")), n(tm.get("failures")),
            )  # fmt: skip
    streams = table(
        "Streams", "Stream", "Length", "Group", "Consumers", "Pending", "Lag", "Oldest pending"
    )
    for s in status["streams"]:
        for i, g in enumerate(s["groups"] or [None]):
            many = f"> {status['lag_scan_limit']:,}"
            lag = None if g is None else many if g["lag"] is None else f"{g['lag']:,}"
            streams.add_row(
                t(s["stream"]) if i == 0 else Text(""), n(s["length"]) if i == 0 else Text(""),
                t(g and g["name"]), n(g and g["consumers"]), n(g and g["pending"]),
                Text(lag or "—", justify="right"),
                t(_duration(g and g["oldest_pending_age_s"])),
            )  # fmt: skip
    dead = table("Dead letters", "Stream", "Dead-letter stream", "Entries")
    for d in status["dead_letters"]:
        dead.add_row(t(d["stream"]), t(d["dead_stream"]), n(d["count"]))
    candles = table("Candles", "Stream", "Symbol", "Interval ms", "Candles", "Last close")
    for c in status["candles"]:
        last = c["candles"][-1]["close"] if c["candles"] else None
        candles.add_row(
            t(c["stream"]), t(c["symbol"]), n(c["interval_ms"]), n(len(c["candles"])), n(last)
        )
    parts: list[Any] = [instances, agents, streams]
    parts += [tab for tab in (dead, timers, candles) if tab.row_count]
    return Group(*parts)
