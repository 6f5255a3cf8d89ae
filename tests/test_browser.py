"""The dashboard page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Needs /usr/bin/chromium (`apt-get install chromium`) and `playwright` from PyPI; Playwright's own
browser download is never used. Skipped with the reason when either is missing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import anyio
import pytest
import redis as syncredis

from streammachine import App, Message
from streammachine.dashboard import serve_dashboard
from streammachine.ohlc import format_candle_for_redis
from streammachine.presence.heartbeat import add_heartbeat
from streammachine.testing import TestApp, free_port
from tests.util import in_ci, need_module

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS_STREAM = "<script>alert(1)</script>"
XSS_SYMBOL = "<img src=x onerror=alert(2)>"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not in_ci(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
)


def seed(r: syncredis.Redis) -> None:
    """A stream named like markup with a group, a dead letter, and candles for two symbols."""
    r.xadd(XSS_STREAM, {"field": "<b>value</b>"})
    r.xgroup_create(XSS_STREAM, "<i>readers</i>", "0")
    r.xadd("orders:dead", {"error": "<svg onload=alert(3)>"})
    price = 100.0
    for minute in range(40):
        step = ((minute * 7919) % 11 - 5) / 2
        o, c = price, price + step
        candle = {"candle_start_ms": minute * 60_000, "open": o, "close": c}
        candle |= {"high": max(o, c) + 1, "low": min(o, c) - 1, "volume": 10, "trade_count": 4}
        candle["timestamp_ms"] = minute * 60_000 + 59_000
        r.xadd("candles_1m", format_candle_for_redis(candle, "AAPL", 60_000))
        if minute % 5 == 0:
            r.xadd("candles_5m", format_candle_for_redis(candle, XSS_SYMBOL, 300_000))
        price = c


async def test_page_renders_data_as_text_in_chromium(
    redis_url: str, redis_sync: syncredis.Redis, tmp_path: Path
) -> None:
    playwright_api = need_module(
        "playwright.async_api", reason="playwright is not installed (pip install playwright)"
    )
    seed(redis_sync)
    app = App(name="shop", redis_url=redis_url)

    @app.agent("orders", group="billing")
    async def bill(record: Message) -> None: ...

    await app.table("notes").set("<i>key</i>", "<b>value</b>")
    port = free_port()
    add_heartbeat(app, interval_s=0.2)
    app.background.append(
        functools.partial(serve_dashboard, redis_url, "127.0.0.1", port, token="tok")
    )
    dialogs: list[str] = []
    errors: list[str] = []
    async with TestApp(app, url=redis_url) as t, anyio.create_task_group() as tg:

        async def traffic() -> None:
            n = 0
            while True:
                n += 1
                await t.send("orders", {"n": n})
                await anyio.sleep(0.01 if n % 400 < 200 else 0.03)

        tg.start_soon(traffic)
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})

                async def on_dialog(dialog: object) -> None:
                    dialogs.append(dialog.message)  # type: ignore[attr-defined]
                    await dialog.dismiss()  # type: ignore[attr-defined]

                page.on("dialog", on_dialog)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(f"http://127.0.0.1:{port}/?token=tok")
                cell = page.locator("#streams td", has_text=XSS_STREAM)
                await cell.wait_for(state="visible", timeout=15_000)
                assert await cell.inner_text() == XSS_STREAM
                group = page.locator("#streams td", has_text="<i>readers</i>")
                assert await group.inner_text() == "<i>readers</i>"
                caption = page.locator("#candles figcaption", has_text=XSS_SYMBOL)
                await caption.wait_for(state="visible", timeout=15_000)
                assert await page.locator("#candles svg").count() == 2
                assert await page.locator("#candles svg rect").count() > 40
                # The State panel browses a table: its keys and values shown as text.
                browse = page.locator("#tables tr", has_text="notes").locator("button")
                await browse.wait_for(state="visible", timeout=15_000)
                await browse.click()
                key = page.locator("#table-keys td", has_text="<i>key</i>")
                await key.wait_for(state="visible", timeout=15_000)
                assert await key.inner_text() == "<i>key</i>"
                value = page.locator("#table-keys td", has_text="<b>value</b>")
                assert await value.inner_text() == '"<b>value</b>"'
                # Rates appear from the second heartbeat seen by the page on.
                rate = page.locator("#agents tbody tr td:nth-child(8)")
                # traffic flows, so the rate must become a positive number (not merely shown)
                await page.wait_for_function(
                    "() => { const td = document.querySelector("
                    "'#agents tbody tr td:nth-child(8)');"
                    " return td && parseFloat(td.textContent.replace(/,/g, '')) > 0; }",
                    timeout=60_000,
                )
                assert float((await rate.inner_text()).replace(",", "")) > 0
                # a few refreshes give the sparkline a shape: waited for, not slept
                polyline = page.locator("#agents svg polyline")
                await polyline.first.wait_for(state="attached", timeout=60_000)
                assert await page.locator("#agents svg polyline").count() == 1
                # Only the page's own scripts; nothing from the data became markup.
                sources = await page.eval_on_selector_all("script", "s => s.map(x => x.src)")
                assert [src.rsplit("/", 1)[1].split("?")[0] for src in sources] == [
                    "app.js",
                    "ops.js",
                    "state.js",
                ]
                assert await page.locator("img, i, b").count() == 0
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
            finally:
                await browser.close()
        tg.cancel_scope.cancel()
    assert dialogs == []
    assert errors == []


async def test_charts_have_data_on_first_load(redis_url: str, tmp_path: Path) -> None:
    """After the app has run a while, the page's first paint already draws a throughput chart
    per agent and a lag chart per group from the dashboard's history."""
    playwright_api = need_module(
        "playwright.async_api", reason="playwright is not installed (pip install playwright)"
    )
    import httpx2

    from tests.util import eventually

    app = App(name="shop", redis_url=redis_url)

    @app.agent("orders", group="billing", concurrency=2)
    async def bill(record: Message) -> None:
        await app.send("invoices", {"order": record.message["n"]})

    @app.agent("invoices", group="mailing")
    async def mail(record: Message) -> None:
        if int(record.message["order"]) % 50 == 0:
            raise ValueError("no address")

    port = free_port()
    add_heartbeat(app, interval_s=0.2)
    app.background.append(
        functools.partial(
            serve_dashboard, redis_url, "127.0.0.1", port, app=app, history_interval_s=0.25
        )
    )
    errors: list[str] = []
    base = f"http://127.0.0.1:{port}"
    async with (
        TestApp(app, url=redis_url) as t,
        anyio.create_task_group() as tg,
        httpx2.AsyncClient(base_url=base) as client,
    ):

        async def traffic() -> None:
            n = 0
            while True:
                n += 1
                await t.send("orders", {"n": n})
                await anyio.sleep(0.005 if n % 300 < 150 else 0.02)

        tg.start_soon(traffic)

        async def history_ready() -> bool:
            try:
                data = (await client.get("/api/history")).json()
            except httpx2.TransportError:
                return False
            agents = [a for a in data["agents"] if len(a["points"]) >= 8]
            groups = [g for g in data["groups"] if len(g["points"]) >= 8]
            return len(agents) == 2 and len(groups) == 2

        await eventually(history_ready, 60, "the dashboard to record a history")
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(base + "/")
                await page.wait_for_function(
                    "() => Number(document.body.dataset.historyLoads || 0) >= 1", timeout=15_000
                )
                first = await page.evaluate("() => ({...document.body.dataset})")
                assert int(first["firstAgentPoints"]) >= 8, first
                assert int(first["firstGroupPoints"]) >= 8, first
                charts = page.locator("#throughput figure.throughput")
                assert await charts.count() == 2
                captions = await page.locator("#throughput figcaption").all_inner_texts()
                assert any("bill" in c for c in captions) and any("mail" in c for c in captions)
                lag = page.locator("#lag figure.lag")
                assert await lag.count() == 2
                assert await page.locator("#lag polyline[data-series=pending]").count() == 2
                points = await page.locator("#throughput polyline").first.get_attribute("points")
                assert points is not None and len(points.split()) >= 8
                # The agent table's rate comes from the history too: no "…" on the first paint.
                rate = page.locator("#agents tbody tr td:nth-child(8)").first
                await rate.wait_for(state="visible", timeout=15_000)
                assert (await rate.inner_text()) not in ("…", "—")
                # And the charts keep moving: a later poll adds points.
                await page.wait_for_function(
                    "() => Number(document.body.dataset.historyLoads) >= 3", timeout=15_000
                )
                later = await page.locator("#throughput polyline").first.get_attribute("points")
                assert later is not None and len(later.split()) > len(points.split())
                await page.wait_for_function(
                    "() => !document.getElementById('dead-history').hidden", timeout=15_000
                )
                shot = os.environ.get("STREAMMACHINE_SCREENSHOT") or str(tmp_path / "charts.png")
                assert len(await page.screenshot(path=shot, full_page=True)) > 10_000
            finally:
                await browser.close()
        tg.cancel_scope.cancel()
    assert errors == []
