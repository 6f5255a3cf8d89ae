"""Event-time windows (state/windows.py, state/windowing.py, `App.window`): each kind's closed
windows equal a pandas reference computed from the inputs, late entries are counted and kept in
`<stream>:late`, both emit modes, and under SIGKILL and SIGSTOP through the real CLI each closed
window is emitted exactly once."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as syncredis
from hypothesis import given, settings
from hypothesis import strategies as st

from streammachine import App, keys
from streammachine import windows as w
from streammachine.exceptions import ConfigError
from tests.util import eventually, wait_sync
from tests.windows_reference import (
    GAP_MS,
    GRACE_MS,
    SENTINEL,
    SIZE_MS,
    STEP_MS,
    inputs,
    parse_bars,
    reference,
    same,
)

KINDS = {
    "tumbling": w.tumbling(SIZE_MS / 1000),
    "hopping": w.hopping(SIZE_MS / 1000, STEP_MS / 1000),
    "sliding": w.sliding(SIZE_MS / 1000),
    "session": w.session(gap=GAP_MS / 1000),
}
AGGS = {
    "n": w.count(), "qty": w.sum("qty"), "hi": w.max("px"), "lo": w.min("px"),
    "avg": w.mean("px"), "open": w.first("px"), "close": w.last("px"),
}  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def as_record(row: dict[str, Any]) -> dict[str, str]:
    return {k: str(row[k]) for k in ("sym", "ts", "qty", "px")}


def closed_by_engine(
    kind: str, rows: list[dict[str, Any]], cuts: list[int], track: bool = False
) -> Any:
    """Feed `rows` to an Engine in batches cut at `cuts`, saving and loading every key between
    batches (as the agent does through Redis); the closed rows and the late flags."""
    engine = w.Engine(KINDS[kind], AGGS, GRACE_MS, track=track)
    closed, late = [], []
    bounds = [0, *sorted(set(cuts)), len(rows)]
    for a, b in itertools.pairwise(bounds):
        for row in rows[a:b]:
            late.append(not engine.add(row["sym"], row["ts"], as_record(row)))
        closed += engine.close()
        saved = {k: engine.dump(k) for k in engine.keys}
        engine.keys.clear()
        for k, raw in saved.items():
            assert raw is not None
            engine.load(k, raw)
    return closed, late


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_closes_the_windows_pandas_computes(kind: str) -> None:
    rows = inputs(1500, 7, seed=1, late_every=97)
    closed, late = closed_by_engine(kind, rows, cuts=list(range(0, len(rows), 50)))
    want = reference(kind, rows)
    got = {(r.key, r.start, r.end): r.values for r in closed if r.key != SENTINEL}
    assert len(got) == len([r for r in closed if r.key != SENTINEL]), "a window closed twice"
    assert got.keys() == want.keys()
    assert all(same(got[k], want[k]) for k in want)
    assert late == [r["late"] for r in rows]
    assert sum(late) == 15


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(list(KINDS)),
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(0, 300), max_size=30),
    track=st.booleans(),
)
def test_batching_does_not_change_what_closes_or_what_is_late(
    kind: str, seed: int, cuts: list[int], track: bool
) -> None:
    rows = inputs(300, 3, seed=seed, late_every=41)
    closed, late = closed_by_engine(kind, rows, cuts, track)
    got = {(r.key, r.start, r.end): r.values for r in closed if r.key != SENTINEL}
    want = reference(kind, rows)
    assert got.keys() == want.keys()
    assert all(same(got[k], want[k]) for k in want)
    assert late == [r["late"] for r in rows]


def test_a_user_function_aggregates_the_window_entries_in_event_time_order() -> None:
    engine = w.Engine(w.session(5), {"syms": w.reduce(lambda rs: [r["v"] for r in rs])}, 2000)
    for t, v in ((1000, "b"), (0, "a"), (3000, "c"), (20_000, "z")):
        engine.add("k", t, {"v": v})
    assert [(r.start, r.end, r.values) for r in engine.close()] == [
        (0, 3000, {"syms": ["a", "b", "c"]})
    ]


def test_bad_settings_fail_at_registration_with_one_line() -> None:
    app = App(name="bad", redis_url="memory://")
    with pytest.raises(ConfigError, match="positive number of seconds"):
        w.tumbling(0)
    with pytest.raises(ConfigError, match="must not exceed"):
        w.hopping(5, 10)
    with pytest.raises(ConfigError, match="emit="):
        app.window("s", kind=w.tumbling(1), agg={"n": w.count()}, emit="always")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="agg="):
        app.window("s", kind=w.tumbling(1), agg=[w.count()])


# --- on a real Redis, in process ------------------------------------------------------------


def window_app(url: str, kind: str, emit: str = "close") -> App:
    app = App(name="win", redis_url=url)
    app.window(
        "trades", "bars", kind=KINDS[kind], key="sym", time="ts", agg=AGGS,
        grace_s=GRACE_MS / 1000, emit=emit, to="bars", count=40, lease_ms=2000,  # type: ignore[arg-type]
    )  # fmt: skip
    return app


def handled(r: syncredis.Redis) -> bool:
    """Every entry of `trades` delivered to and acked by group `bars`."""
    try:
        [group] = r.xinfo_groups("trades")
    except (syncredis.ResponseError, ValueError):
        return False
    last = r.xrevrange("trades", count=1)
    return bool(last) and group["last-delivered-id"] == last[0][0] and group["pending"] == 0


def send_rows(r: syncredis.Redis, rows: list[dict[str, Any]]) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for row in rows:
        pipe.xadd("trades", as_record(row))  # type: ignore[arg-type]
    return [i.decode() for i in pipe.execute()]


async def run_until(app: App, cond: Any, what: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(app.run)
        try:
            await eventually(cond, timeout_s=60, what=what)
        finally:
            await app.shutdown()


@pytest.mark.parametrize("kind", list(KINDS))
async def test_closed_windows_reach_the_output_once_and_late_entries_the_late_stream(
    kind: str, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    rows = inputs(800, 5, seed=3, late_every=53)
    ids = send_rows(redis_sync, rows)
    want = reference(kind, rows)
    app = window_app(redis_url, kind)
    await run_until(app, lambda: handled(redis_sync)
                    and redis_sync.xlen("bars") >= len(want), "every window")  # fmt: skip
    got = parse_bars(redis_sync.xrange("bars"))
    assert len(got) == len(dict(got)) == len(want), "each closed window once"
    assert all(same(v, want[k]) for k, v in got)
    late = redis_sync.xrange("trades:late")
    late_ids = [f[b"late_of"].decode() for _, f in late]
    assert late_ids == [i for i, row in zip(ids, rows, strict=True) if row["late"]]
    assert all(f[b"window"] == b"bars" and b"sym" in f for _, f in late)
    state = redis_sync.hgetall(keys.window("trades", "bars", "bars"))
    assert int(state[b"~late"]) == len(late_ids) == 15


async def test_emit_update_writes_each_changed_window_its_current_value(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    rows = inputs(400, 3, seed=5)
    send_rows(redis_sync, rows)
    want = reference("tumbling", rows)
    app = window_app(redis_url, "tumbling", emit="update")
    await run_until(app, lambda: handled(redis_sync)
                    and redis_sync.exists(keys.window("trades", "bars", "bars")), "all handled")  # fmt: skip
    got = parse_bars(redis_sync.xrange("bars"))
    last: dict[Any, Any] = {}
    for k, v in got:
        if k in last:
            assert v["n"] > last[k]["n"], "an update follows the window's growth"
        last[k] = v
    assert len(got) > len(last), "windows were updated more than once"
    assert {k: v for k, v in last.items() if k[0] != SENTINEL}.keys() == want.keys()
    assert all(same(last[k], want[k]) for k in want), "the last update is the final value"


async def test_read_windows_shows_open_windows_watermark_and_late(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    rows = inputs(200, 4, seed=7, late_every=50)
    send_rows(redis_sync, rows)
    app = window_app(redis_url, "tumbling")
    await run_until(app, lambda: handled(redis_sync)
                    and redis_sync.xlen("bars") > 0, "handled")  # fmt: skip
    await app.redis.connect()
    [info] = await w.read_windows(app.redis.client)
    await app.aclose()
    assert info["name"] == "bars" and info["stream"] == "trades" and info["late"] == 3
    assert info["open_windows"] == 1  # the sentinel's
    assert info["watermark_ms"] == rows[-1]["ts"] - GRACE_MS
    assert info["kind"] == "tumbling(10)"


def doc_block(heading: str) -> str:
    """The first python block after `heading` in docs/windows.md."""
    text = (ROOT / "docs" / "windows.md").read_text()
    rest = text[text.index(heading) :]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start : rest.index("```", start)]


async def test_the_docs_time_series_example_works(
    redis_url: str, redis_sync: syncredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    scope: dict[str, Any] = {}
    exec(compile(doc_block("## Time Series example"), "docs/windows.md", "exec"), scope)
    app: App = scope["app"]
    base = 1_700_000_000_000
    for i in range(40):  # two sensors, one reading every 20 s; s1 runs hot at the end
        for sensor in ("s1", "s2"):
            value = 95 if sensor == "s1" and i > 30 else 20 + i % 7
            redis_sync.xadd("{sensors}:readings",
                            {"sensor": sensor, "ts": base + i * 20_000, "value": value})  # fmt: skip
    stats, alerts = "{sensors}:stats_5m", "{sensors}:alerts"
    await run_until(app, lambda: redis_sync.xlen(alerts) > 0, "an alert")
    rows = [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis_sync.xrange(stats)]
    first = next(r for r in rows if r["key"] == "s2")
    assert int(first["end"]) - int(first["start"]) == 300_000
    assert all(r["key"] in ("s1", "s2") for r in rows)
    assert {f[b"sensor"] for _, f in redis_sync.xrange(alerts)} == {b"s1"}


async def test_a_decorated_function_aggregates_each_session(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="clicks", redis_url=redis_url)

    @app.window("clicks", "sessions", kind=w.session(gap=1800), key="user", to="visits")
    def pages(entries: list[dict[str, str]]) -> list[str]:
        return [e["page"] for e in entries]

    for ms, user, page in ((1000, "u", "a"), (2000, "u", "b"), (4_000_000, "u", "c")):
        redis_sync.xadd("clicks", {"user": user, "page": page}, id=f"{ms}-0")
    await run_until(app, lambda: redis_sync.xlen("visits") > 0, "a session")
    [(_, fields)] = redis_sync.xrange("visits")
    assert json.loads(fields[b"value"]) == ["a", "b"]
    assert (fields[b"start"], fields[b"end"]) == (b"1000", b"2000")


def cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "streammachine", *args, "--redis-url", url]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


async def test_cli_mcp_and_metrics_show_open_windows_watermark_and_late(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from mcp import Client

    from streammachine.dashboard.metrics import render_metrics
    from streammachine.dashboard.status import collect_status
    from streammachine.mcp_server import create_server

    rows = inputs(200, 4, seed=7, late_every=50)
    send_rows(redis_sync, rows)
    app = window_app(redis_url, "session")
    await run_until(app, lambda: handled(redis_sync) and redis_sync.xlen("bars") > 0, "handled")
    watermark = rows[-1]["ts"] - GRACE_MS

    done = cli("windows", "--json", url=redis_url)
    assert done.returncode == 0, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (row["name"], row["stream"], row["kind"], row["to"]) == (
        "bars", "trades", "session(gap=3)", "bars"
    )  # fmt: skip
    assert (row["open_windows"], row["watermark_ms"], row["late"]) == (1, watermark, 3)
    text = cli("windows", url=redis_url)
    assert text.returncode == 0 and "late=3" in text.stdout and "open=1" in text.stdout

    async with Client(create_server(redis_url, read_only=True)) as client:
        result = await client.call_tool("windows_list", {})
    assert not result.is_error, result.content
    data: Any = result.structured_content
    [tool_row] = data["windows"]
    assert (tool_row["late"], tool_row["watermark_ms"], tool_row["open_keys"]) == (3, watermark, 1)

    await app.redis.connect()
    body, _ = render_metrics(await collect_status(app.redis.client))
    await app.aclose()
    metrics = body.decode()
    assert 'streammachine_window_late_entries_total{stream="trades",window="bars"} 3.0' in metrics
    assert 'streammachine_window_watermark_lag_seconds{stream="trades",window="bars"}' in metrics
    assert 'streammachine_window_open_keys{stream="trades",window="bars"} 1.0' in metrics
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = await anyio.run_process([promtool, "check", "metrics"], input=body, check=False)
        problems = (check.stdout + check.stderr).decode()
        assert check.returncode == 0 and not problems.strip(), problems


def test_cli_windows_says_so_when_there_are_none(redis_url: str) -> None:
    done = cli("windows", url=redis_url)
    assert done.returncode == 0 and "no window agent" in done.stdout


async def test_unreadable_window_state_consumes_nothing_and_says_why(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_sync.hset(keys.window("trades", "bars", "bars"), "k:S1", b"\xc1garbage")
    send_rows(redis_sync, inputs(10, 1, seed=1))
    app = window_app(redis_url, "tumbling")
    await run_until(app, lambda: "cannot be read" in caplog.text, "the error logged")
    assert "delete that key to start the windows over" in caplog.text
    assert redis_sync.xlen("bars") == 0
    assert not handled(redis_sync)


# --- under faults, through the real CLI -----------------------------------------------------


def owner_pid(r: syncredis.Redis) -> int | None:
    value = r.get(keys.exclusive_lease("trades", "bars"))
    if not value:
        return None
    return int(value.decode().split("/")[0].rsplit("-", 2)[1])


@pytest.mark.parametrize("kind", ["tumbling", "session"])
def test_each_closed_window_is_emitted_once_under_kills_and_freezes(
    kind: str, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    r = redis_sync
    rows = inputs(3000, 6, seed=11, late_every=211)
    ids = send_rows(r, rows)
    want = reference(kind, rows)
    env = {**os.environ, "REDIS_URL": redis_url, "WIN_KIND": kind, "WIN_COUNT": "20",
           "WIN_DELAY_S": "0.001", "WIN_LEASE_MS": "1500",
           "PYTHONPATH": os.pathsep.join([str(APPS), str(ROOT)])}  # fmt: skip
    for k in ("STREAMMACHINE_CLAIM_IDLE_MS", "STREAMMACHINE_BLOCK_MS"):
        env.pop(k, None)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; explains a failure
    cmd = [sys.executable, "-m", "streammachine", "run", "window_app:app", "--workers", "2",
           "--log-format", "json"]  # fmt: skip
    runner = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    owners: list[int] = []

    def progressed(fraction: float) -> bool:
        if runner.poll() is not None:
            log.seek(0)
            raise AssertionError(f"runner exited: {log.read().decode()[-3000:]}")
        return r.xlen("bars") >= fraction * len(want)

    try:
        for fraction in (0.15, 0.3, 0.45):
            wait_sync(lambda f=fraction: progressed(f), 120, f"{fraction:.0%} of the windows")
            pid = wait_sync(lambda: owner_pid(r), 30, "an owner")
            owners.append(pid)
            os.kill(pid, signal.SIGKILL)
        wait_sync(lambda: progressed(0.6), 120, "60% of the windows")
        pid = wait_sync(lambda: owner_pid(r), 30, "an owner")
        os.kill(pid, signal.SIGSTOP)
        try:
            # The fault itself: frozen past the lease and claim_idle_ms, another process owns it.
            wait_sync(lambda: owner_pid(r) not in (None, pid), 60, "a new owner")
            before = r.xlen("bars")
            wait_sync(lambda: r.xlen("bars") > before, 60, "progress while frozen")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_sync(lambda: handled(r) and progressed(1.0), 180, "every window")
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()
        log.close()
    assert len(set(owners)) == 3, "each kill took the stream from its owner"
    got = parse_bars(r.xrange("bars"))
    dupes = len(got) - len(dict(got))
    assert dupes == 0, f"{dupes} windows emitted twice"
    assert dict(got).keys() == want.keys()
    assert all(same(v, want[k]) for k, v in got)
    late = [f[b"late_of"].decode() for _, f in r.xrange("trades:late")]
    assert late == [i for i, row in zip(ids, rows, strict=True) if row["late"]]
    assert json.loads(r.hget(keys.window("trades", "bars", "bars"), "~meta"))["name"] == "bars"
