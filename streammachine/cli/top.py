"""CLI command `top`: the dashboard in a terminal — instances, agents (with their paused state),
streams and groups, dead letters, timers, candles — refreshed live, or once.

It fits an 80-column terminal: short headers that never wrap, agents summed per app, and the
per-instance detail only with `--wide` (or on a terminal of at least `WIDE_COLUMNS`). Every name
from Redis is shown as text with its control characters escaped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import JsonOut, command, fail, out, resolve_url, safe

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table

#: A terminal at least this wide gets every column without --wide.
WIDE_COLUMNS = 140


def register(app: typer.Typer) -> None:
    """Add `top` to the CLI."""

    @command(app, "top")
    def top(
        once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
        interval: Annotated[
            float,
            typer.Option("--interval", min=0.1, max=3600, help="Seconds between refreshes."),
        ] = 1.0,
        wide: Annotated[
            bool, typer.Option("--wide", help="Every column (per instance), however wide.")
        ] = False,
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
            anyio.run(_top, url, once, json_out, interval, wide)
        except KeyboardInterrupt:
            raise SystemExit(0) from None


async def _top(url: str, once: bool, json_out: bool, interval_s: float, wide: bool) -> None:
    import anyio
    from rich.console import Console
    from rich.live import Live

    from ..connection import RedisConnection
    from ..dashboard.status import collect_status
    from ..exceptions import REDIS_FAILURES, StreamMachineError
    from ..urls import mask_url

    failures: tuple[type[BaseException], ...] = (*REDIS_FAILURES, StreamMachineError)
    conn = RedisConnection(url=url, max_connections=2)
    rates = _Rates()
    console = Console()
    wide = wide or console.width >= WIDE_COLUMNS
    try:
        try:
            status = await collect_status(conn.client)
        except failures as exc:
            fail(f"cannot read Redis at {mask_url(url)}: {exc}")
        if once:
            if json_out:
                out(json.dumps(status, ensure_ascii=False, sort_keys=True))
            else:
                console.print(_render(status, rates, wide))
            return
        with Live(_render(status, rates, wide), refresh_per_second=4, screen=False) as live:
            while True:
                await anyio.sleep(interval_s)
                try:
                    status = await collect_status(conn.client)
                except failures as exc:
                    from rich.text import Text

                    live.update(Text(safe(f"cannot read Redis at {mask_url(url)}: {exc}"), "red"))
                    continue
                live.update(_render(status, rates, wide))
    finally:
        await conn.close()


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


def _table(title: str, *columns: str) -> Table:
    """A table whose headers never wrap (each column at least as wide as its header); right-
    aligned columns are marked with a leading `>`."""
    from rich.table import Table

    tab = Table(title=title, title_justify="left", expand=False)
    for c in columns:
        right = c.startswith(">")
        name = c.lstrip(">")
        tab.add_column(
            name, overflow="fold", min_width=len(name), justify="right" if right else "left"
        )
    return tab


def _render(status: dict[str, Any], rates: _Rates, wide: bool) -> Group:
    from rich.console import Group
    from rich.text import Text

    # Data is wrapped in Text so a name like "[bold]x" is shown, never read as Rich markup, and
    # passed through `safe` so no control character reaches the terminal.
    def t(value: Any) -> Text:
        return Text("—" if value is None else safe(value))

    def n(value: Any) -> Text:
        return Text("—" if value is None else f"{value:,}")

    now_s = status["generated_at_ms"] / 1000
    instances = _table("Instances", "App", "Instance", "Host", ">PID", ">Up", ">Beat", "State")
    for inst in status["instances"]:
        instances.add_row(
            t(inst.get("app")), t(inst.get("id")), t(inst.get("host")), n(inst.get("pid")),
            t(_duration(max(0.0, now_s - float(inst.get("started_at", now_s))))),
            t(_duration(inst.get("heartbeat_age_s")) + " ago"),
            Text("up", "green") if inst.get("fresh") else Text("late", "red"),
        )  # fmt: skip
    paused = {(a["app"], a["agent"]) for a in status.get("agents") or [] if a.get("paused")}
    agents = _agents(status, rates, wide, paused, t, n)
    streams = _table("Streams", "Stream", ">Len", "Group", ">Pend", ">Lag", ">Oldest", "Paused")
    if wide:
        streams.add_column("Consumers", justify="right")
    for s in status["streams"]:
        for i, g in enumerate(s["groups"] or [None]):
            many = f"> {status['lag_scan_limit']:,}"
            lag = None if g is None else many if g["lag"] is None else f"{g['lag']:,}"
            row = [
                t(s["stream"]) if i == 0 else Text(""), n(s["length"]) if i == 0 else Text(""),
                t(g and g["name"]), n(g and g["pending"]), Text(lag or "—"),
                t(_duration(g and g["oldest_pending_age_s"])),
                Text(safe(", ".join(g.get("paused_agents") or [])) if g else "", "yellow"),
            ]  # fmt: skip
            streams.add_row(*row, *([n(g and g["consumers"])] if wide else []))
    dead = _table("Dead letters", "Stream", ">Entries")
    for d in status["dead_letters"]:
        dead.add_row(t(d["stream"]), n(d["count"]))
    timers = _table("Timers", "App", "Timer", ">Every", ">Runs", ">Fail")
    for inst in status["instances"]:
        for tm in inst.get("timers") or []:
            timers.add_row(
                t(inst.get("app")), t(tm.get("name")), t(_duration(tm.get("interval_s"))),
                n(tm.get("runs")), n(tm.get("failures")),
            )  # fmt: skip
    candles = _table("Candles", "Stream", "Symbol", ">Every", ">N", ">Close")
    for c in status["candles"]:
        last = c["candles"][-1]["close"] if c["candles"] else None
        every = _duration(c["interval_ms"] / 1000)
        candles.add_row(t(c["stream"]), t(c["symbol"]), t(every), n(len(c["candles"])), n(last))
    parts: list[Any] = [instances, agents, streams]
    parts += [tab for tab in (dead, timers, candles) if tab.row_count]
    if status.get("instances_truncated"):
        parts.append(Text(f"{status['instances_truncated']} more instances not shown", "yellow"))
    return Group(*parts)


def _agents(
    status: dict[str, Any], rates: _Rates, wide: bool, paused: set[tuple[Any, Any]], t: Any, n: Any
) -> Table:
    """Per instance with --wide; else summed per (app, agent), which fits 80 columns."""
    from rich.text import Text

    def state(app: Any, agent: Any) -> Text:
        return Text("paused", "yellow") if (app, agent) in paused else Text("run", "green")

    if wide:
        tab = _table(
            "Agents", "App", "Instance", "Agent", "Stream", "Group", ">Done", ">/s", ">Failed",
            ">Retried", ">Dead", ">Latency", "State",
        )  # fmt: skip
        for inst in status["instances"]:
            for a in inst.get("agents") or []:
                st = a.get("stats") or {}
                calls = sum(st.get("latency_buckets") or [])
                rate = rates.rate(inst, a)
                tab.add_row(
                    t(inst.get("app")), t(f"{inst.get('host')}:{inst.get('pid')}"),
                    t(a.get("name")), t(a.get("stream")), t(a.get("group")),
                    n(st.get("processed")), t("…" if rate is None else f"{rate:,.1f}"),
                    n(st.get("failed")), n(st.get("retried")), n(st.get("dead")),
                    t(_duration(st["latency_s_total"] / calls) if calls else None),
                    state(inst.get("app"), a.get("name")),
                )  # fmt: skip
        return tab
    tab = _table("Agents", "App", "Agent", ">Inst", ">Done", ">/s", ">Failed", ">Dead", "State")
    sums: dict[tuple[Any, Any], list[Any]] = {}
    for inst in status["instances"]:
        for a in inst.get("agents") or []:
            st = a.get("stats") or {}
            row = sums.setdefault((inst.get("app"), a.get("name")), [0, 0, None, 0, 0])
            rate = rates.rate(inst, a)
            row[0] += 1
            row[1] += int(st.get("processed") or 0)
            row[2] = row[2] if rate is None else (row[2] or 0.0) + rate
            row[3] += int(st.get("failed") or 0)
            row[4] += int(st.get("dead") or 0)
    for (app, agent), (inst_n, done, rate, failed, dead) in sorted(sums.items(), key=str):
        tab.add_row(
            t(app), t(agent), n(inst_n), n(done), t("…" if rate is None else f"{rate:,.1f}"),
            n(failed), n(dead), state(app, agent),
        )  # fmt: skip
    return tab
