"""The `make run` demo: orders flow through a two-stage pipeline on an in-process Redis.

An order timer produces orders; `price` prices them (its output is committed atomically with its
ack); `ship` ships them, asking for a retry now and then, and dead-letters orders that have no
address after 3 deliveries. With `--dashboard` it first prints the dashboard's address; on a
terminal it then shows a live panel (rates, lag, retries, dead letters), and when its output is
piped a report line every 2 s instead.

Run: REDIS_URL=memory:// streammachine run examples/demo.py:app --dashboard
"""

import importlib.util
import logging
import random
import sys
import time
from collections import deque
from typing import Any

import anyio

from streammachine import App, Message, Retry
from streammachine.admin.queries import list_streams

app = App(name="demo")
app.produces("orders")
app.produces("priced")
# The page needs the dashboard extra (starlette, uvicorn); without it the demo runs without it.
HAS_DASHBOARD = all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn"))
if app.dashboard_enabled and not HAS_DASHBOARD:
    app.dashboard_enabled = False
#: A live panel on a terminal; one line per report when the output goes to a pipe or a file.
LIVE = sys.stdout.isatty()
shipped = {"orders": 0, "revenue": 0.0, "retries": 0}


@app.on_startup
async def hello() -> None:
    if app.dashboard_enabled:
        print(f"open http://{app.dashboard_host}:{app.dashboard_port}", flush=True)
    elif not HAS_DASHBOARD:
        print("no dashboard: pip install 'streammachine[dashboard]' to get one", flush=True)


@app.timer(0.2)
async def new_orders() -> None:
    for _ in range(random.randint(1, 5)):
        order = {"item": random.choice(["tea", "cake", "jam"]), "qty": random.randint(1, 4)}
        order["address"] = (
            "" if random.random() < 0.02 else random.choice(["Leeds", "York", "Bath"])
        )
        await app.send("orders", order)


@app.agent("orders", group="pricing", concurrency=2)
async def price(record: Message) -> None:
    order = record.message
    unit = {"tea": 3.5, "cake": 4.25, "jam": 6.0}[order["item"]]
    await app.send("priced", {**order, "total": round(unit * int(order["qty"]), 2)})


@app.agent("priced", group="shipping", retry_backoff_ms=200, max_deliveries=3)
async def ship(record: Message) -> None:
    if not record.message.get("address", "x"):
        raise ValueError("no delivery address")  # fails 3 times, then goes to priced:dead
    if random.random() < 0.05:
        shipped["retries"] += 1
        raise Retry(0.2)  # courier busy: the entry stays pending and comes back in 0.2 s
    shipped["orders"] += 1
    shipped["revenue"] += float(record.message["total"])


async def figures() -> dict[str, Any]:
    """Per agent: processed, retried, dead, and its group's lag and pending (from Redis)."""
    streams = {s["stream"]: s for s in await list_streams(app.redis.client)}
    rows = []
    for agent in app.agents:
        cfg = agent.config
        group = next(
            (g for g in streams.get(cfg.stream, {}).get("groups", []) if g["name"] == cfg.group),
            {},
        )
        rows.append(
            {
                "agent": agent.name,
                "where": f"{cfg.stream}/{cfg.group}",
                "processed": agent.stats.processed,
                "retried": agent.stats.retried,
                "dead": agent.stats.dead,
                "lag": group.get("lag"),
                "pending": group.get("pending", 0),
            }
        )
    dead = sum(s["length"] for name, s in streams.items() if name.endswith(":dead"))
    return {"agents": rows, "dead_letters": dead}


@app.timer(2)
async def report() -> None:
    if LIVE:
        return  # the live panel shows it
    f = await figures()
    lag = sum(r["lag"] or 0 for r in f["agents"])
    print(
        f"shipped {shipped['orders']:5d} orders, revenue {shipped['revenue']:9.2f}, "
        f"retried {shipped['retries']:3d}, dead letters {f['dead_letters']:3d}, lag {lag:4d} "
        "| Ctrl-C to stop",
        flush=True,
    )


async def live_panel(stop: anyio.Event) -> None:
    """Redraw a Rich panel twice a second until the app stops."""
    from rich.live import Live
    from rich.table import Table

    seen: dict[str, deque[tuple[int, float]]] = {}  # the last ~5 s of (processed, time)

    async def render() -> Table:
        f = await figures()
        now = time.monotonic()
        where = f" · open http://{app.dashboard_host}:{app.dashboard_port}"
        table = Table(
            title=f"demo{where if app.dashboard_enabled else ''} · Ctrl-C to stop",
            caption=f"shipped {shipped['orders']:,} orders · revenue {shipped['revenue']:,.2f}"
            f" · dead letters {f['dead_letters']:,}",
            title_justify="left",
        )
        for col in ("agent", "stream/group", "processed", "rate/s", "lag", "pending"):
            table.add_column(col, justify="left" if col in ("agent", "stream/group") else "right")
        table.add_column("retried", justify="right")
        table.add_column("dead", justify="right")
        for r in f["agents"]:
            samples = seen.setdefault(r["agent"], deque(maxlen=10))
            samples.append((r["processed"], now))
            n0, t0 = samples[0]
            rate = (r["processed"] - n0) / (now - t0) if now > t0 else 0.0
            lag = "—" if r["lag"] is None else f"{r['lag']:,}"
            table.add_row(
                r["agent"], r["where"], f"{r['processed']:,}", f"{rate:,.1f}", lag,
                f"{r['pending']:,}", f"{r['retried']:,}", f"{r['dead']:,}",
            )  # fmt: skip
        return table

    # The panel counts retries and dead letters; their log lines would only scroll it away.
    logging.getLogger("streammachine.consume.agent").setLevel(logging.CRITICAL)
    with Live(await render(), refresh_per_second=4) as live:
        while not stop.is_set():
            with anyio.move_on_after(0.5):
                await stop.wait()
            live.update(await render())


if LIVE:
    app.background.append(live_panel)

if __name__ == "__main__":
    app.start()
