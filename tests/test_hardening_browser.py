"""Malformed instance records (issue 19) and the dashboard page in a real headless Chromium: the
page keeps working, shows the real instance only, and raises no script error. Skipped like
test_browser.py when Chromium or Playwright is missing."""

from __future__ import annotations

import functools
import json
import os

import httpx2
import pytest
import redis as syncredis

from streammachine import App, Message, keys
from streammachine.dashboard import serve_dashboard
from streammachine.presence.heartbeat import add_heartbeat
from streammachine.testing import TestApp, free_port
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.util import eventually, in_ci, need_module

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not in_ci(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
)

BAD = {
    "buckets": json.dumps({"id": "bad-1", "latency_buckets_s": ["x"], "agents": []}),
    "agents": json.dumps({"id": "bad-2", "app": "ghost", "agents": [1]}),
    "timers": json.dumps({"id": "bad-3", "app": "ghost", "agents": {}, "timers": [None]}),
    "stats": json.dumps({"id": "bad-4", "app": "ghost", "agents": [{"stats": [1]}]}),
    "text": "not json at all",
    "list": "[1, 2]",
}


async def test_page_survives_malformed_heartbeats_in_chromium(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    playwright_api = need_module(
        "playwright.async_api", reason="playwright is not installed (pip install playwright)"
    )
    for name, raw in BAD.items():
        redis_sync.set(keys.INSTANCES + name, raw, px=60_000)
    app = App(name="shop", redis_url=redis_url)

    @app.agent("orders", group="billing")
    async def bill(record: Message) -> None: ...

    port = free_port()
    add_heartbeat(app, interval_s=0.2)
    app.background.append(functools.partial(serve_dashboard, redis_url, "127.0.0.1", port))
    errors: list[str] = []
    async with TestApp(app, url=redis_url):
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                polls: list[str] = []
                page.on("response", lambda r: polls.append(r.url) if "/api/" in r.url else None)
                await page.goto(f"http://127.0.0.1:{port}/")
                cell = page.locator("#instances td", has_text="shop")
                await cell.wait_for(state="visible", timeout=15_000)
                seen = len(polls)
                # a few refreshes with the bad records present: counted, not slept
                await eventually(lambda: len(polls) >= seen + 3, 60, "three more refreshes")
                rows = await page.locator("#instances tbody tr").all_inner_texts()
                assert len(rows) == 1 and "shop" in rows[0], rows
                assert await page.locator("#instances", has_text="ghost").count() == 0
            finally:
                await browser.close()
        async with httpx2.AsyncClient() as client:
            status = (await client.get(f"http://127.0.0.1:{port}/api/status")).json()
        assert status["bad_heartbeats"] == len(BAD)
    assert errors == []
