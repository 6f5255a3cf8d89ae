"""The instance registry, the dashboard's HTTP endpoints, /metrics and the CLI (`dashboard`, `top`),
all against a real Redis with a real App running in the test's loop."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import redis as syncredis
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import streammachine
from streammachine import App, Message, keys
from streammachine.cli import app as cli
from streammachine.dashboard import create_dashboard, list_instances, serve_dashboard
from streammachine.ohlc import format_candle_for_redis
from streammachine.presence.heartbeat import add_heartbeat, heartbeat
from streammachine.testing import RedisServer, TestApp, free_port
from tests.util import Lines, eventually, wait_sync

XSS = "<script>alert(1)</script>"


def make_shop(url: str) -> App:
    """An app with one agent (a message with `bad` fails and is dead-lettered) and a timer."""
    app = App(name="shop", redis_url=url)

    @app.agent("orders", group="billing", max_deliveries=1, retry_backoff_ms=10)
    async def bill(record: Message) -> None:
        if record.message.get("bad"):
            raise ValueError("bad order")

    @app.timer(60)
    async def report() -> None: ...

    add_heartbeat(app, interval_s=0.05)
    return app


@contextlib.asynccontextmanager
async def dashboard(url: str, token: str | None = None) -> AsyncIterator[httpx2.AsyncClient]:
    """The Starlette app in this loop, driven through httpx2's ASGI transport."""
    dash = create_dashboard(url, token=token)
    transport = httpx2.ASGITransport(app=dash)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://dash") as client:
            yield client
    finally:
        await dash.state.backend.aclose()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


async def scrape(client: httpx2.AsyncClient, name: str, **labels: str) -> float | None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return metric(response.text, name, **labels)


# --- the registry -----------------------------------------------------------------------------


async def test_heartbeat_registers_the_app_and_removes_it_on_clean_stop(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = make_shop(redis_url)
    add_heartbeat(app, interval_s=0.05)  # replaces the heartbeat, never a second registration
    async with TestApp(app, url=redis_url):
        found = await eventually(lambda: list_instances(app.redis.client), what="registration")
        (inst,) = found
        assert inst["app"] == "shop"
        assert inst["pid"] == os.getpid()
        assert inst["host"] == socket.gethostname()
        assert inst["version"] == streammachine.__version__
        assert inst["fresh"] is True
        assert inst["id"].startswith(f"{socket.gethostname()}-{os.getpid()}-")
        (agent,) = inst["agents"]
        assert agent["name"] == "bill"
        assert (agent["stream"], agent["group"], agent["concurrency"]) == ("orders", "billing", 1)
        assert agent["stats"]["processed"] == 0
        key = keys.INSTANCES + inst["id"]
        assert 0 < redis_sync.pttl(key) <= 15_000
        await app.send("orders", {"n": 1})
        await eventually(
            lambda: _processed(app),
            what="the processed count to reach the registry",
        )
    assert redis_sync.exists(key) == 0


async def _processed(app: App) -> bool:
    instances = await list_instances(app.redis.client)
    return bool(instances) and instances[0]["agents"][0]["stats"]["processed"] == 1


async def test_timer_runs_reach_the_registry_and_metrics(redis_url: str) -> None:
    app = App(name="clock", redis_url=redis_url)

    @app.timer(0.05)
    async def tick() -> None: ...

    add_heartbeat(app, interval_s=0.05)
    async with anyio.create_task_group() as tg, dashboard(redis_url) as client:
        tg.start_soon(app.run)

        async def ran_twice() -> bool:
            found = await list_instances(app.redis.client)
            return bool(found) and found[0]["timers"][0]["runs"] >= 2

        await eventually(ran_twice, what="timer runs in the heartbeat")
        (inst,) = await list_instances(app.redis.client)
        assert inst["timers"][0]["name"] == "tick"
        assert inst["timers"][0]["interval_s"] == 0.05
        assert inst["timers"][0]["failures"] == 0
        await eventually(
            lambda: _at_least(client, "streammachine_timer_runs_total", 2, timer="tick"),
            what="timer runs in /metrics",
        )
        await app.shutdown()


async def _at_least(client: httpx2.AsyncClient, name: str, value: float, **labels: str) -> bool:
    found = await scrape(client, name, **labels)
    return found is not None and found >= value


async def test_heartbeat_survives_a_redis_outage_and_registers_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer() as server:
        app = App(name="steady", redis_url=server.url)
        stop = anyio.Event()
        client = syncredis.Redis.from_url(server.url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(heartbeat, app, stop, interval_s=0.05))
            await eventually(lambda: client.keys(keys.INSTANCES + "*"), what="registration")
            server.stop()
            await eventually(
                lambda: "instance heartbeat failed" in caplog.text, what="the outage logged"
            )
            server.start()  # an empty server: the record must be written again
            await eventually(lambda: client.keys(keys.INSTANCES + "*"), what="re-registration")
            stop.set()
        assert client.keys(keys.INSTANCES + "*") == []
        client.close()
        await app.aclose()


DOOMED = """
import sys
import anyio
from streammachine import App
from streammachine.presence.heartbeat import add_heartbeat
app = App(name="doomed", redis_url=sys.argv[1])
add_heartbeat(app, ttl_s=1.0, interval_s=0.1)
anyio.run(app.run)
"""


def test_a_killed_instance_ages_out(redis_url: str, redis_sync: syncredis.Redis) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DOOMED, redis_url])
    try:
        found = wait_sync(
            lambda: redis_sync.keys(keys.INSTANCES + "*"), timeout_s=20, what="registration"
        )
        record = json.loads(redis_sync.get(found[0]))
        assert (record["app"], record["pid"]) == ("doomed", proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    wait_sync(lambda: not redis_sync.keys(keys.INSTANCES + "*"), timeout_s=5, what="age-out")


# --- endpoints --------------------------------------------------------------------------------


async def test_endpoints_and_metrics_follow_a_running_app(redis_url: str) -> None:
    app = make_shop(redis_url)
    async with TestApp(app, url=redis_url) as t, dashboard(redis_url) as client:
        live = {"agent": "bill", "app": "shop", "stream": "orders", "group": "billing"}
        await eventually(
            lambda: scrape(client, "streammachine_instance_up", app="shop"), what="instance up"
        )
        assert await scrape(client, "streammachine_messages_processed_total", **live) == 0
        assert await scrape(client, "streammachine_stream_length", stream="orders") == 0

        for n in range(5):
            await t.send("orders", {"n": n})
        await t.send("orders", {"bad": "yes"})
        await t.run_until_idle()

        async def counted() -> bool:
            text = (await client.get("/metrics")).text
            return metric(text, "streammachine_messages_dead_total", **live) == 1 and (
                metric(text, "streammachine_messages_processed_total", **live) == 5
            )

        await eventually(counted, what="the counters to move")
        text = (await client.get("/metrics")).text
        assert metric(text, "streammachine_redis_up") == 1
        assert metric(text, "streammachine_messages_failed_total", **live) == 1
        assert metric(text, "streammachine_stream_length", stream="orders") == 6
        assert metric(text, "streammachine_stream_length", stream="orders:dead") == 1
        group = {"stream": "orders", "group": "billing"}
        assert metric(text, "streammachine_group_pending", **group) == 0
        assert metric(text, "streammachine_group_lag", **group) == 0
        assert metric(text, "streammachine_group_consumers", **group) == 1
        assert metric(text, "streammachine_group_oldest_pending_age_seconds", **group) == 0
        # The agent times the calls that returned.
        assert metric(text, "streammachine_handler_latency_seconds_count", **live) == 5
        assert metric(text, "streammachine_handler_latency_seconds_bucket", le="+Inf", **live) == 5
        assert metric(text, "streammachine_handler_latency_seconds_sum", **live) > 0

        status = (await client.get("/api/status")).json()
        (inst,) = status["instances"]
        assert inst["agents"][0]["stats"]["processed"] == 5
        orders = next(s for s in status["streams"] if s["stream"] == "orders")
        assert orders["length"] == 6
        assert [g["name"] for g in orders["groups"]] == ["billing"]
        assert status["dead_letters"] == [
            {"stream": "orders", "dead_stream": "orders:dead", "count": 1}
        ]

        health = await client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "instances": 1})

        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script src="static/app.js" defer></script>' in page.text
        assert '<script src="static/ops.js" defer></script>' in page.text
        assert '<script src="static/state.js" defer></script>' in page.text
        # No inline script for the CSP to refuse: the page's three scripts, all files.
        assert page.text.count("<script") == page.text.count('<script src="static/') == 3
        for name in ("app.js", "ops.js", "state.js"):
            js = await client.get(f"/static/{name}")
            assert js.status_code == 200 and "javascript" in js.headers["content-type"]
            assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text
        assert (await client.get("/static/style.css")).status_code == 200
        assert (await client.get("/static/nope.js")).status_code == 404


async def test_pending_lag_and_oldest_pending_age(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    ids = [redis_sync.xadd("jobs", {"n": str(n)}).decode() for n in range(3)]
    redis_sync.xgroup_create("jobs", "workers", "0")
    redis_sync.xreadgroup("workers", "w1", {"jobs": ">"}, count=1)
    redis_sync.xadd("manual", {"n": "1"}, id="1-1")
    redis_sync.xgroup_create("manual", "g", "0")
    redis_sync.xreadgroup("g", "w1", {"manual": ">"})
    async with dashboard(redis_url) as client:
        status = (await client.get("/api/status")).json()
        jobs = next(s for s in status["streams"] if s["stream"] == "jobs")
        (group,) = jobs["groups"]
        assert (group["consumers"], group["pending"], group["lag"]) == (1, 1, 2)
        assert group["oldest_pending_id"] == ids[0]
        assert 0 <= group["oldest_pending_age_s"] < 60
        manual = next(s for s in status["streams"] if s["stream"] == "manual")
        # An id that is no timestamp: the age is the entry's idle time, not 55 years.
        assert 0 <= manual["groups"][0]["oldest_pending_age_s"] < 60
        labels = {"stream": "jobs", "group": "workers"}
        assert await scrape(client, "streammachine_group_lag", **labels) == 2
        assert await scrape(client, "streammachine_group_pending", **labels) == 1


async def test_lag_above_the_scan_limit_is_unknown_not_zero(
    redis_url: str, redis_sync: syncredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streammachine.dashboard import status as status_module

    if int(redis_sync.info("server")["redis_version"].split(".")[0]) >= 7:
        pytest.skip("Redis 7 reports lag itself; the scan limit applies to Redis 6.2")
    monkeypatch.setattr(status_module, "LAG_SCAN_LIMIT", 3)
    for n in range(6):
        redis_sync.xadd("big", {"n": str(n)})
    redis_sync.xgroup_create("big", "slow", "0")
    redis_sync.xreadgroup("slow", "w1", {"big": ">"}, count=1)
    redis_sync.xack("big", "slow", redis_sync.xrange("big", count=1)[0][0])
    async with dashboard(redis_url) as client:
        status = (await client.get("/api/status")).json()
        assert status["lag_scan_limit"] == 3
        assert status["streams"][0]["groups"][0]["lag"] is None
        labels = {"stream": "big", "group": "slow"}
        assert await scrape(client, "streammachine_group_lag", **labels) is None
        assert await scrape(client, "streammachine_group_pending", **labels) == 0


async def test_readyz_turns_503_when_redis_stops() -> None:
    with RedisServer() as server:
        async with dashboard(server.url) as client:
            assert (await client.get("/readyz")).status_code == 200
            server.stop()
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["ready"] is False
            assert "redis unreachable" in ready.json()["reason"]
            status = await client.get("/api/status")
            assert status.status_code == 503 and status.json()["redis"]["ok"] is False
            assert await scrape(client, "streammachine_redis_up") == 0
            assert (await client.get("/healthz")).status_code == 200


async def test_readyz_503_when_nothing_listens_or_an_instance_is_late(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    async with dashboard(f"redis://127.0.0.1:{free_port()}/0") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "redis unreachable" in ready.json()["reason"]
    # A record refreshed 10 s ago by an instance that beats every 0.1 s: its loop is stuck.
    record = {"id": "h-1-late", "app": "stuck", "ttl_s": 15.0, "interval_s": 0.1, "agents": []}
    redis_sync.set(keys.INSTANCES + "h-1-late", json.dumps(record), px=5000)
    async with dashboard(redis_url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "h-1-late" in ready.json()["reason"]
        assert await scrape(client, "streammachine_instance_up", instance="h-1-late") == 0


# --- auth and escaping ------------------------------------------------------------------------


async def test_token_is_required_everywhere_but_healthz(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with dashboard(redis_url, token="s3cret") as client:
        for path in ("/", "/api/status", "/metrics", "/readyz", "/static/app.js"):
            assert (await client.get(path)).status_code == 401, path
            bad = await client.get(path, headers={"Authorization": "Bearer wrong"})
            assert bad.status_code == 401, path
            assert (await client.get(path, params={"token": "wrong"})).status_code == 401
            good = await client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert good.status_code == 200, path
            assert (await client.get(path, params={"token": "s3cret"})).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        page = await client.get("/", params={"token": "s3cret"})
        assert 'src="static/app.js?token=s3cret"' in page.text
    async with dashboard(redis_url, token='a"b<c') as client:
        page = await client.get("/", params={"token": 'a"b<c'})
        assert page.status_code == 200
        assert 'src="static/app.js?token=a%22b%3Cc"' in page.text
    monkeypatch.setenv("STREAMMACHINE_DASHBOARD_TOKEN", "from-env")
    async with dashboard(redis_url) as client:
        assert (await client.get("/api/status")).status_code == 401
        ok = await client.get("/api/status", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200


async def test_html_in_names_and_values_is_returned_escaped(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xadd(XSS, {"field": "<b>bold</b>"})
    redis_sync.xgroup_create(XSS, "<i>group</i>", "0")
    evil = "<img src=x onerror=alert(2)>"
    candle = {"candle_start_ms": 60000, "open": 1, "high": 2, "low": 0.5, "close": 1.5}
    candle |= {"volume": 3, "trade_count": 2, "timestamp_ms": 60001}
    redis_sync.xadd("candles_1m", format_candle_for_redis(candle, evil, 60000))
    async with dashboard(redis_url) as client:
        response = await client.get("/api/status")
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert b"<" not in response.content and b">" not in response.content
        status = response.json()  # and the escapes decode back to the exact names
        stream = next(s for s in status["streams"] if s["stream"] == XSS)
        assert stream["groups"][0]["name"] == "<i>group</i>"
        assert status["candles"][0]["symbol"] == evil
        page = await client.get("/")
        assert "alert(" not in page.text  # the page is static; data arrives as JSON only


async def test_candle_streams_become_series(redis_url: str, redis_sync: syncredis.Redis) -> None:
    def write(symbol: str, start_ms: int, close: float) -> None:
        c = {"candle_start_ms": start_ms, "open": 10.0, "high": 12.0, "low": 9.0, "close": close}
        c |= {"volume": 5.0, "trade_count": 3, "timestamp_ms": start_ms + 59_000}
        redis_sync.xadd("candles_1m", format_candle_for_redis(c, symbol, 60_000))

    for minute, close in enumerate([10.5, 11.0, 9.5]):
        write("AAPL", minute * 60_000, close)
    write("AAPL", 120_000, 11.5)  # a later write of the same candle wins
    write("MSFT", 0, 300.0)
    redis_sync.xadd("ticks", {"symbol": "AAPL", "price": "10"})
    async with dashboard(redis_url) as client:
        status = (await client.get("/api/status")).json()
    series = {(s["stream"], s["symbol"], s["interval_ms"]): s for s in status["candles"]}
    assert set(series) == {("candles_1m", "AAPL", 60_000), ("candles_1m", "MSFT", 60_000)}
    aapl = series["candles_1m", "AAPL", 60_000]["candles"]
    assert [c["t"] for c in aapl] == [0, 60_000, 120_000]
    assert [c["close"] for c in aapl] == [10.5, 11.0, 11.5]
    assert aapl[0] == {"t": 0, "open": 10.0, "high": 12.0, "low": 9.0, "close": 10.5, "volume": 5.0}


# --- serving ----------------------------------------------------------------------------------


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_a_taken_port_is_one_log_line_and_the_app_keeps_running(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "streammachine.dashboard")
    app = make_shop(redis_url)
    with taken_port() as port:
        app.background.append(functools.partial(serve_dashboard, redis_url, "127.0.0.1", port))
        async with TestApp(app, url=redis_url) as t:
            await t.send("orders", {"n": 1})
            await t.run_until_idle()
            assert app.agents[0].stats.processed == 1
    line = f"dashboard port {port} is in use; running without the dashboard"
    assert [r.getMessage() for r in caplog.records if "in use" in r.getMessage()] == [line]


async def test_serve_dashboard_runs_uvicorn_beside_the_app_until_stop(redis_url: str) -> None:
    app = make_shop(redis_url)
    port = free_port()
    app.background.append(functools.partial(serve_dashboard, redis_url, "127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"
    async with TestApp(app, url=redis_url), httpx2.AsyncClient(base_url=base) as client:

        async def up() -> bool:
            with contextlib.suppress(httpx2.TransportError):
                status = (await client.get("/api/status")).json()
                return [i["app"] for i in status["instances"]] == ["shop"]
            return False

        await eventually(up, what="the dashboard to serve the app's instance")
    with pytest.raises(httpx2.TransportError):
        async with httpx2.AsyncClient(base_url=base) as client:
            await client.get("/healthz")


# --- the CLI ----------------------------------------------------------------------------------


def _seed(redis_sync: syncredis.Redis) -> None:
    redis_sync.xadd("orders", {"n": "1"})
    redis_sync.xadd("[bold]marked[/bold]", {"n": "1"})
    redis_sync.xgroup_create("orders", "billing", "0")
    agent = {"name": "bill", "stream": "orders", "group": "billing", "concurrency": 2}
    agent["stats"] = {"processed": 7, "failed": 1, "retried": 0, "dead": 0, "skipped": 0}
    agent["stats"] |= {"latency_s_total": 0.07, "latency_buckets": [0] * 8 + [7] + [0] * 7}
    record = {"id": "h-9-abc", "app": "shop", "host": "h", "pid": 9, "started_at": 0.0}
    record |= {"heartbeat_at": 1.0, "ttl_s": 15.0, "interval_s": 2.0, "agents": [agent]}
    record |= {"timers": [{"name": "report", "interval_s": 60.0, "runs": 3, "failures": 0}]}
    redis_sync.set(keys.INSTANCES + "h-9-abc", json.dumps(record), px=15_000)


def test_top_once_json_and_text(redis_url: str, redis_sync: syncredis.Redis) -> None:
    _seed(redis_sync)
    runner = CliRunner()
    result = runner.invoke(cli, ["top", "--once", "--json", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    status: dict[str, Any] = json.loads(result.stdout)
    assert [s["stream"] for s in status["streams"]] == ["[bold]marked[/bold]", "orders"]
    assert status["instances"][0]["agents"][0]["stats"]["processed"] == 7

    env = {"COLUMNS": "200"}
    result = runner.invoke(cli, ["top", "--once", "--redis-url", redis_url], env=env)
    assert result.exit_code == 0, result.output
    assert "[bold]marked[/bold]" in result.stdout  # shown as text, not read as markup
    for text in ("Instances", "Agents", "Streams", "billing", "report", "h-9-abc", "10 ms"):
        assert text in result.stdout, text

    result = runner.invoke(cli, ["top", "--json", "--redis-url", redis_url])
    assert result.exit_code == 1 and "--json needs --once" in result.stderr


def _cli(*args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_dashboard_command_serves_until_sigint(redis_url: str) -> None:
    port = free_port()
    proc = _cli("dashboard", "--port", str(port), "--redis-url", redis_url, "--log-format", "text")
    out = Lines(proc.stdout)
    try:
        out.wait_for(f"dashboard at http://127.0.0.1:{port}/", timeout_s=30)
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx2.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, out.text


def test_dashboard_command_on_a_taken_port_fails_clearly(redis_url: str) -> None:
    with taken_port() as port:
        proc = _cli("dashboard", "--port", str(port), "--redis-url", redis_url)
        out = Lines(proc.stdout)
        assert proc.wait(30) == 1
    out._thread.join(5)
    assert f"dashboard port {port} is in use" in out.text
    assert f"error: cannot serve the dashboard on 127.0.0.1:{port}" in out.text


def test_top_live_view_exits_0_on_ctrl_c(redis_url: str, redis_sync: syncredis.Redis) -> None:
    _seed(redis_sync)
    # Rich paints a live view only on a terminal; these tell it the pipe is one.
    tty = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    proc = _cli("top", "--interval", "0.1", "--redis-url", redis_url, **tty)
    out = Lines(proc.stdout)
    try:
        # Rich repaints in place; the first frame shows the seeded stream.
        out.wait_for("orders", timeout_s=30)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, out.text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_dashboard_flag_serves_one_dashboard_per_run(
    tmp_path: Any, redis_url: str, redis_sync: syncredis.Redis, workers: str
) -> None:
    (tmp_path / "dashapp.py").write_text(
        "from streammachine import App, Message\n"
        "app = App(name='dash')\n"
        "@app.agent('jobs', group='g')\n"
        "async def h(record: Message) -> None: ...\n"
    )
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammachine", "run", "dashapp:app", "--workers", workers,
         "--dashboard", "--dashboard-port", str(port), "--log-format", "json"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    err = Lines(proc.stderr)
    try:

        def healthy() -> bool:
            try:
                return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_sync(healthy, 30, "the dashboard answers")
        wait_sync(lambda: len(list(redis_sync.scan_iter(f"{keys.INSTANCES}*"))) == int(workers), 20)
        assert not err.has("in use"), "only one process tried to bind the port"
        # In the app's own process the dashboard knows the app; the supervisor's does not.
        doc = httpx2.get(f"http://127.0.0.1:{port}/asyncapi.json", timeout=5)
        if workers == "1":
            assert doc.status_code == 200 and doc.json()["channels"]["jobs"]["address"] == "jobs"
        else:
            assert doc.status_code == 404 and "streammachine asyncapi" in doc.json()["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, err.text


# --- history and the AsyncAPI document --------------------------------------------------------


async def test_history_has_points_per_agent_group_and_dead_letters_after_traffic(
    redis_url: str,
) -> None:
    app = make_shop(redis_url)
    port = free_port()
    app.background.append(
        functools.partial(
            serve_dashboard, redis_url, "127.0.0.1", port, app=app, history_interval_s=0.1
        )
    )
    base = f"http://127.0.0.1:{port}"
    async with (
        TestApp(app, url=redis_url) as t,
        httpx2.AsyncClient(base_url=base) as client,
        anyio.create_task_group() as tg,
    ):

        async def traffic() -> None:
            n = 0
            while True:
                n += 1
                await t.send("orders", {"n": n, **({"bad": "1"} if n == 5 else {})})
                await anyio.sleep(0.01)

        tg.start_soon(traffic)

        async def enough() -> dict[str, Any] | None:
            with contextlib.suppress(httpx2.TransportError):
                data: dict[str, Any] = (await client.get("/api/history")).json()
                agents = {(a["app"], a["agent"]): a for a in data["agents"]}
                groups = {(g["stream"], g["group"]): g for g in data["groups"]}
                bill = agents.get(("shop", "bill"))
                billing = groups.get(("orders", "billing"))
                if (
                    bill and len(bill["points"]) >= 3
                    and billing and len(billing["points"]) >= 3
                    and data["dead_letters"]
                ):  # fmt: skip
                    return data
            return None

        data = await eventually(enough, 30, "3 points per agent and group, and a dead letter")
        tg.cancel_scope.cancel()
    bill = next(a for a in data["agents"] if a["agent"] == "bill")
    assert (bill["stream"], bill["group"]) == ("orders", "billing")
    times = [p[0] for p in bill["points"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(p[1] >= 0 for p in bill["points"]) and max(p[1] for p in bill["points"]) > 0
    assert bill["points"][-1][2] >= bill["points"][0][2]  # processed only grows
    group = next(g for g in data["groups"] if g["group"] == "billing")
    assert all(len(p) == 3 and p[2] >= 0 for p in group["points"])
    assert data["dead_letters"][0]["dead_stream"] == "orders:dead"
    assert data["interval_s"] == 0.1 and data["window_s"] == 900.0
    assert any(r["agent"] == "bill" for r in data["instance_rates"])


async def test_history_since_returns_only_newer_points(redis_url: str) -> None:
    app = make_shop(redis_url)
    dash = create_dashboard(redis_url)
    backend = dash.state.backend
    transport = httpx2.ASGITransport(app=dash)
    try:
        async with (
            TestApp(app, url=redis_url) as t,
            httpx2.AsyncClient(transport=transport, base_url="http://dash") as client,
        ):
            await t.send("orders", {"n": 1})

            async def recorded() -> bool:
                # What the poll task does once per interval (ASGITransport runs no lifespan).
                backend.history.record(await backend.status(0))
                groups = backend.history.groups.values()
                return bool(groups) and all(len(g.points) >= 2 for g in groups)

            await eventually(recorded, what="two snapshots recorded")
            full = (await client.get("/api/history")).json()
            first_t = full["groups"][0]["points"][0][0]
            newer = (await client.get(f"/api/history?since={first_t}")).json()
            assert all(p[0] > first_t for g in newer["groups"] for p in g["points"])
            assert len(newer["groups"][0]["points"]) == len(full["groups"][0]["points"]) - 1
            bad = await client.get("/api/history?since=yesterday")
            assert bad.status_code == 400 and "since" in bad.json()["error"]
    finally:
        await backend.aclose()


async def test_asyncapi_json_from_the_app_and_404_standalone(redis_url: str) -> None:
    async with dashboard(redis_url) as client:
        response = await client.get("/asyncapi.json")
        assert response.status_code == 404
        assert "streammachine asyncapi APP" in response.json()["error"]
    app = make_shop(redis_url)
    app.produces("invoices")
    dash = create_dashboard(redis_url, app=app)
    transport = httpx2.ASGITransport(app=dash)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://dash") as client:
            doc = (await client.get("/asyncapi.json")).json()
    finally:
        await dash.state.backend.aclose()
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "shop"
    assert doc["channels"]["orders"]["address"] == "orders"
    assert doc["operations"]["bill"]["x-streammachine"]["group"] == "billing"
    assert doc["operations"]["send.invoices"]["action"] == "send"


# --- malformed heartbeats (issue 19) -------------------------------------------------------------

#: Records under the instance prefix that are not valid heartbeats: each must be skipped and
#: counted, never break a scrape, never count as an "up" instance.
BAD_HEARTBEATS: dict[str, bytes] = {
    "buckets": json.dumps({"id": "b1", "latency_buckets_s": ["x"], "agents": []}).encode(),
    "agent-int": json.dumps({"id": "b2", "agents": [1]}).encode(),
    "timers-null": json.dumps({"id": "b3", "agents": {}, "timers": [None]}).encode(),
    "stats-list": json.dumps({"id": "b4", "agents": [{"name": "a", "stats": [1]}]}).encode(),
    "not-json": b"\xff not json",
    "not-object": b"[1, 2, 3]",
    "number": b"42",
}


def _seed_bad_heartbeats(redis_sync: syncredis.Redis) -> None:
    for name, raw in BAD_HEARTBEATS.items():
        redis_sync.set(keys.INSTANCES + name, raw, px=15_000)
    good = {"id": "h-1-good", "app": "shop", "host": "h", "pid": 1, "ttl_s": 15.0}
    good |= {"interval_s": 2.0, "agents": [], "timers": []}
    redis_sync.set(keys.INSTANCES + "h-1-good", json.dumps(good), px=15_000)


async def test_malformed_heartbeats_are_skipped_counted_and_logged_once(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    _seed_bad_heartbeats(redis_sync)
    caplog.set_level(logging.WARNING, logger="streammachine.dashboard")
    async with dashboard(redis_url) as client:
        for _ in range(2):
            response = await client.get("/metrics")
            assert response.status_code == 200, response.text
            assert metric(response.text, "streammachine_bad_heartbeats") == len(BAD_HEARTBEATS)
            assert metric(response.text, "streammachine_instance_up", instance="h-1-good") == 1
            ups = [s for f in text_string_to_metric_families(response.text) for s in f.samples]
            assert [s.labels["instance"] for s in ups if s.name == "streammachine_instance_up"] == [
                "h-1-good"
            ], "a bad record is not an instance"
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "instances": 1})
        status = (await client.get("/api/status")).json()
        assert [i["id"] for i in status["instances"]] == ["h-1-good"]
        assert status["bad_heartbeats"] == len(BAD_HEARTBEATS)
    for name in BAD_HEARTBEATS:
        logged = [r for r in caplog.records if keys.INSTANCES + name in r.getMessage()]
        assert len(logged) == 1, (name, [r.getMessage() for r in logged])


async def test_only_malformed_heartbeats_mean_no_instances_for_readyz(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.set(keys.INSTANCES + "junk", b"not json", px=15_000)
    redis_sync.set(keys.INSTANCES + "list", b"[1]", px=15_000)
    async with dashboard(redis_url) as client:
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "instances": 0})
        assert await scrape(client, "streammachine_instance_up") is None


def test_top_once_with_malformed_heartbeats(redis_url: str, redis_sync: syncredis.Redis) -> None:
    _seed_bad_heartbeats(redis_sync)
    env = {**os.environ, "COLUMNS": "200"}
    for extra in (["--json"], []):
        r = subprocess.run(
            [sys.executable, "-m", "streammachine", "top", "--once", "--redis-url", redis_url,
             "--log-format", "json", *extra],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        if extra:
            status = json.loads(r.stdout)
            assert [i["id"] for i in status["instances"]] == ["h-1-good"]
            assert status["bad_heartbeats"] == len(BAD_HEARTBEATS)
        else:
            assert "h-1-good" in r.stdout
        warnings = [json.loads(line) for line in r.stderr.splitlines()]
        assert len(warnings) == len(BAD_HEARTBEATS), "one log line per bad record"
        assert all(w["level"] == "warning" for w in warnings)


async def test_non_utf8_stream_names_are_shown_escaped(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xadd(b"tick\xffs", {"n": "1"})
    redis_sync.xgroup_create(b"tick\xffs", b"g\xfe", "0")
    redis_sync.xadd("orders", {"n": "1"})
    async with dashboard(redis_url) as client:
        status = (await client.get("/api/status")).json()
        (odd,) = [s for s in status["streams"] if s["stream"] != "orders"]
        assert odd["stream"] == "tick\\xffs" and odd["length"] == 1
        assert [g["name"] for g in odd["groups"]] == ["g\\xfe"]
        assert odd["groups"][0]["lag"] == 1
        text = (await client.get("/metrics")).text
        assert metric(text, "streammachine_stream_length", stream="tick\\xffs") == 1
