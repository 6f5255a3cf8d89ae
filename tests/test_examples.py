"""Every example runs on memory:// (no server), driven like a user's test would drive it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streammachine.process.importer import import_app
from streammachine.testing import TestApp

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def run_example(name: str, ticks: int = 2) -> TestApp:
    app = import_app(f"{EXAMPLES / name}.py:app")
    async with TestApp(app) as t:
        for _ in range(ticks):
            for timer in app.timers:
                await t.tick(timer.name)
        await t.run_until_idle(timeout_s=10)
        return t


async def test_basic(capsys: pytest.CaptureFixture[str]) -> None:
    t = await run_example("basic")
    assert capsys.readouterr().out.count("Processing: {'task_id': '123'") == 2
    assert [m.message for m in await t.stream("results")] == [
        {"task_id": "123", "status": "done"}
    ] * 2


async def test_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    await run_example("pipeline")
    assert capsys.readouterr().out.count("Final result: 20") == 2


async def test_fanout(capsys: pytest.CaptureFixture[str]) -> None:
    await run_example("fanout")
    out = capsys.readouterr().out
    assert out.count("Analytics:") == 2 and out.count("Audit log:") == 2


async def test_stateful(capsys: pytest.CaptureFixture[str]) -> None:
    t = await run_example("stateful", ticks=3)
    assert await t.storage.read("orders_sent") == 3
    spend = t.app.tables["spend"]
    assert [(await spend.get(u)).total for u in ("ann", "bob", "cy")] == [3.0, 1.0, 2.0]
    assert (await spend.get("cy")).orders == 1
    assert "cy: 1 orders, 2.00 spent" in capsys.readouterr().out


async def test_health(capsys: pytest.CaptureFixture[str]) -> None:
    await run_example("health", ticks=1)
    assert "'status': 'healthy'" in capsys.readouterr().out


async def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    t = await run_example("demo", ticks=3)
    assert len(await t.stream("priced")) == len(await t.stream("orders")) > 0
    assert "shipped" in capsys.readouterr().out


async def test_timeseries(capsys: pytest.CaptureFixture[str]) -> None:
    t = await run_example("timeseries", ticks=3)
    assert len(await t.stream("ticks")) == 30
    out = capsys.readouterr().out
    assert "Rolling mean:" in out and "over 30 ticks" in out
