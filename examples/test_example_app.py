"""Testing a StreamMachine app: the same test body on memory:// and on a real Redis.

Run: pytest examples/test_example_app.py   (the fixtures come from StreamMachine's pytest plugin)
"""

from __future__ import annotations

import pytest

from streammachine import App, Message
from streammachine.testing import TestApp

app = App(name="pipeline_under_test")


@app.agent("stage1", group="s1")
async def double(record: Message) -> None:
    await app.send("stage2", {"value": int(record.message["value"]) * 2})


@app.agent("stage2", group="s2", max_deliveries=2, retry_backoff_ms=10)
async def check(record: Message) -> None:
    if int(record.message["value"]) > 100:
        raise ValueError("too big")


@app.timer(60)
async def source() -> None:
    await app.send("stage1", {"value": 10})


async def pipeline_body(t: TestApp) -> None:
    await t.tick("source")  # run the timer once, now
    await t.send("stage1", {"value": 99})
    await t.run_until_idle(timeout_s=10)
    assert [m.message["value"] for m in await t.stream("stage2")] == ["20", "198"]
    dead = await t.dead_letters("stage2")
    assert [(m.message["value"], m.message["error"]) for m in dead] == [("198", "too big")]


@pytest.mark.anyio
async def test_pipeline_in_memory() -> None:
    async with TestApp(app) as t:
        await pipeline_body(t)


@pytest.mark.anyio
@pytest.mark.redis
async def test_pipeline_on_a_real_redis(redis_url: str) -> None:
    async with TestApp(app, url=redis_url) as t:
        await pipeline_body(t)
