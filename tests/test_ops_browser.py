"""The dashboard's operator actions as an operator uses them: Debian's Chromium (driven by
Playwright) unlocks actions with the operator token and clicks each one on a running app with a
real Redis, and Redis is checked after every click. Needs /usr/bin/chromium and playwright;
skipped with the reason when either is missing (as tests/test_browser.py)."""

from __future__ import annotations

import functools
import os
from typing import Any

import msgspec
import pytest
import redis as syncredis

from streammachine import App, Message, keys
from streammachine.admin.pending import RELEASED_CONSUMER
from streammachine.consume.deadletter import DEAD_LETTER_FIELDS
from streammachine.dashboard import serve_dashboard
from streammachine.presence.heartbeat import add_heartbeat
from streammachine.schedule.delayed import encode_entry
from streammachine.settings import Settings
from streammachine.testing import TestApp, free_port
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.util import eventually, in_ci, need_module

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not in_ci(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
)
TIMEOUT_MS = 20_000


def seed(r: syncredis.Redis) -> dict[str, Any]:
    """Dead letters of `pay`, three entries of `pay` held by a consumer whose process is gone,
    two delayed entries."""
    dead = []
    for n in (1, 2, 3):
        meta = {"error": f"order {n} failed", "error_type": "ValueError", "traceback": "tb"}
        meta |= {"deliveries": "5", "source_stream": "pay", "source_id": f"{n}-0", "group": "g"}
        meta["failed_at"] = "1700000000.5"
        data = msgspec.msgpack.encode({"n": n})
        flat = [
            "order",
            str(n),
            "data",
            data,
            *[x for k in DEAD_LETTER_FIELDS for x in (k, meta[k])],
        ]
        dead.append(r.execute_command("XADD", "pay:dead", "*", *flat).decode())
    r.xgroup_create("pay", "g", "$", mkstream=True)
    held = [r.xadd("pay", {"order": str(n)}).decode() for n in (7, 8, 9)]
    r.xreadgroup("g", "gone-1-x-0", {"pay": ">"})
    due = 32503680000000  # year 3000: only a promote delivers them
    for n, entry_id in enumerate(("a" * 24, "b" * 24)):
        r.zadd(keys.scheduled("default"), {encode_entry(entry_id, "later", ["n", str(n)]): due})
    return {"dead": dead, "held": held}


async def test_each_dashboard_action_clicked_in_chromium_changes_redis(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    playwright_api = need_module(
        "playwright.async_api", reason="playwright is not installed (pip install playwright)"
    )
    seeded = seed(redis_sync)
    app = App(name="shop", redis_url=redis_url)

    @app.agent("orders", group="billing")
    async def bill(record: Message) -> None: ...

    port = free_port()
    add_heartbeat(app, interval_s=0.2)
    app.background.append(
        functools.partial(
            serve_dashboard, redis_url, "127.0.0.1", port, app=app,
            operator_token="op-secret", settings=Settings(),
        )
    )  # fmt: skip
    errors: list[str] = []
    dialogs: list[str] = []

    def where(f: Any, what: str) -> Any:
        return eventually(lambda: f(), 20, what)

    async with TestApp(app, url=redis_url), playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda d: dialogs.append(d.message))
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function(
                "() => document.getElementById('mode').textContent === 'locked'"
            )
            control = page.locator("#control button[data-agent=bill]")
            await control.wait_for(state="attached")
            assert await control.is_hidden(), "no action before the operator token"
            status = await page.evaluate(
                "fetch('api/actions/pause', {method: 'POST', headers: {'Content-Type': "
                "'application/json'}, body: JSON.stringify({app: 'shop', agent: 'bill'})})"
                ".then(r => r.status)"
            )
            assert status == 401 and redis_sync.exists(keys.paused("shop")) == 0

            # Unlock.
            await page.fill("#op-token", "op-secret")
            await page.click("#op-unlock")
            await page.wait_for_selector("body[data-operator='1']")

            # Pause, then resume, the agent everywhere.
            await page.locator("#control button[data-agent=bill]", has_text="Pause").click()
            await where(lambda: redis_sync.smembers(keys.paused("shop")) == {b"bill"}, "paused")
            await page.locator("#control button[data-agent=bill]", has_text="Resume").click()
            await where(lambda: not redis_sync.smembers(keys.paused("shop")), "resumed")

            # Dead letters: browse, filter, view decoded and raw, edit and retry.
            await (
                page.locator("#dead tbody tr", has_text="pay:dead").locator("button.browse").click()
            )
            rows = page.locator("#dead-list tr.dead-row")
            await page.wait_for_function(
                "() => document.querySelectorAll('#dead-list tr.dead-row').length === 3"
            )
            await page.fill("#dead-filter input[name=error]", "order 2")
            await page.locator("#dead-filter button[type=submit]").click()
            await page.wait_for_function(
                "() => document.querySelectorAll('#dead-list tr.dead-row').length === 1"
            )
            await page.fill("#dead-filter input[name=error]", "")
            await page.locator("#dead-filter button[type=submit]").click()
            await page.wait_for_function(
                "() => document.querySelectorAll('#dead-list tr.dead-row').length === 3"
            )
            await rows.first.locator("button", has_text="View").click()
            await page.wait_for_selector("#detail[open]")
            raw = await page.locator("#detail pre.raw").inner_text()
            assert raw.startswith("order 1\ndata \\x81") and "error_type ValueError" in raw
            assert (
                "msgpack" not in raw
                and '{"n":1}' in await page.locator("#detail code").inner_text()
            )
            await page.fill("#detail input[data-field=order]", "1-fixed")
            await page.click("#detail-retry")
            await page.wait_for_selector("#confirm[open]")
            assert "order = 1-fixed" in await page.locator("#confirm-body").inner_text()
            await page.click("#confirm-yes")
            await where(lambda: redis_sync.xlen("pay:dead") == 2, "the edited dead letter gone")
            newest = redis_sync.xrevrange("pay", count=1)[0][1]
            assert newest[b"order"] == b"1-fixed" and newest[b"data"] == msgspec.msgpack.encode(
                {"n": 1}
            )

            # Retry all that match a filter (a dry run first, shown in the confirmation).
            await page.fill("#dead-filter input[name=error]", "order 2")
            await page.click("#dead-retry-all")
            await page.wait_for_selector("#confirm[open]")
            assert seeded["dead"][1] in await page.locator("#confirm-body").inner_text()
            await page.click("#confirm-yes")
            await where(lambda: redis_sync.xlen("pay:dead") == 1, "the matching one sent back")
            assert redis_sync.xrevrange("pay", count=1)[0][1][b"order"] == b"2"

            # Purge the rest.
            await page.fill("#dead-filter input[name=error]", "")
            await page.click("#dead-purge-all")
            await page.wait_for_selector("#confirm[open]")
            await page.click("#confirm-yes")
            await where(lambda: redis_sync.xlen("pay:dead") == 0, "purged")

            # Pending entries of a consumer whose process is gone: hand one back, dead-letter one.
            group_row = page.locator("#streams tbody tr", has=page.locator("td", has_text="pay"))
            await group_row.locator("button", has_text="Pending").first.click()
            await page.wait_for_function(
                "() => document.querySelectorAll('#pending-list tr.pending-row').length === 3"
            )
            first = page.locator("#pending-list tr.pending-row").first
            assert "no" in await first.inner_text()
            await first.locator("button", has_text="Hand back").click()
            await page.wait_for_selector("#confirm[open]")
            await page.click("#confirm-yes")
            held = seeded["held"]
            fence = keys.fence("pay", "g")

            def owner(entry_id: str) -> bytes | None:
                found = redis_sync.xpending_range("pay", "g", entry_id, entry_id, 1)
                return found[0]["consumer"] if found else None

            await where(lambda: owner(held[0]) == RELEASED_CONSUMER.encode(), "handed back")
            assert redis_sync.hget(fence, "gone-1-x-0") == b"1"
            second = page.locator("#pending-list tr.pending-row", has_text=held[1])
            await second.locator("button", has_text="Dead-letter").click()
            await page.wait_for_selector("#confirm[open]")
            await page.click("#confirm-yes")
            await where(lambda: redis_sync.xlen("pay:dead") == 1, "dead-lettered")
            assert owner(held[1]) is None and redis_sync.hget(fence, "gone-1-x-0") == b"2"

            # Rewind the group to the start (the plan is shown first).
            await group_row.locator("button", has_text="Rewind").first.click()
            await page.wait_for_selector("#confirm[open] #confirm-input")
            await page.fill("#confirm-input", "0")
            await page.click("#confirm-yes")
            await page.wait_for_function(
                "() => document.getElementById('confirm').open && "
                "document.getElementById('confirm-text').textContent.includes('handled again')"
            )
            await page.click("#confirm-yes")
            await where(
                lambda: redis_sync.xinfo_groups("pay")[0]["last-delivered-id"] == b"0-0", "rewound"
            )

            # Delayed entries: promote one, cancel the other.
            await page.locator("#sched-form button[type=submit]").click()
            await page.wait_for_function(
                "() => document.querySelectorAll('#scheduled tr.sched-row').length === 2"
            )
            await (
                page.locator("#scheduled tr.sched-row", has_text="a" * 24)
                .locator("button", has_text="Promote")
                .click()
            )
            await where(lambda: redis_sync.exists("later") == 1, "promoted")
            assert [f for _, f in redis_sync.xrange("later")] == [{b"n": b"0"}]
            await page.wait_for_function(
                "() => document.querySelectorAll('#scheduled tr.sched-row').length === 1"
            )
            await (
                page.locator("#scheduled tr.sched-row").locator("button", has_text="Cancel").click()
            )
            await page.wait_for_selector("#confirm[open]")
            await page.click("#confirm-yes")
            await where(lambda: redis_sync.zcard(keys.scheduled("default")) == 0, "cancelled")

            # The inspector: a stream filtered by field, decoded and raw.
            await page.fill("#inspect-form input[name=stream]", "pay")
            await page.fill("#inspect-form input[name=where]", "order=9")
            await page.locator("#inspect-form button[type=submit]").click()
            entry = page.locator("#inspect-result details.entry")
            await entry.first.wait_for()
            assert await entry.count() == 1 and "order=9" in await entry.inner_text()

            # Every action is in the audit, from the dashboard.
            await page.wait_for_function(
                "() => document.querySelectorAll('#audit tr.audit-row').length >= 10"
            )
            audit = await page.locator("#audit").inner_text()
            for action in ("pause", "resume", "dead.edit_retry", "dead.retry", "dead.purge",
                           "pending.hand_back", "pending.dead_letter", "rewind",
                           "scheduled.promote", "scheduled.cancel"):  # fmt: skip
                assert action in audit, action
            assert "dashboard" in audit and "operator token from 127.0.0.1" in audit
        finally:
            await browser.close()
    assert dialogs == [], "confirmations are the page's own dialogs"
    # The one refusal the test asked for (the action without the token) is logged by Chromium.
    assert errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
