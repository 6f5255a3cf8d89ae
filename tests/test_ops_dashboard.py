"""The dashboard's operator side over HTTP against a real Redis: who may act (read-only without an
operator token, the token only in the Authorization header, CSRF checks, the Host check of a
token-less server), the operator API's reads and actions, the audit, /metrics (paused agents,
promtool), and the caps on what tenants write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
import redis as syncredis
from prometheus_client.parser import text_string_to_metric_families

from streammachine import keys
from streammachine.consume.deadletter import DEAD_LETTER_FIELDS
from streammachine.dashboard import create_dashboard
from streammachine.dashboard.server import run_dashboard_server
from streammachine.ohlc import format_candle_for_redis
from streammachine.settings import Settings
from streammachine.testing import free_port
from tests.util import eventually

OP = {"Authorization": "Bearer op-secret", "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def dashboard(url: str, **kwargs: Any) -> AsyncIterator[httpx2.AsyncClient]:
    dash = create_dashboard(url, settings=Settings(), **kwargs)
    transport = httpx2.ASGITransport(app=dash)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://dash") as client:
            yield client
    finally:
        await dash.state.backend.aclose()


def beat(r: syncredis.Redis, iid: str, app: str, agents: list[dict[str, Any]]) -> None:
    record = {"id": iid, "app": app, "host": "h", "pid": 1, "ttl_s": 15, "interval_s": 2}
    r.set(keys.INSTANCES + iid, json.dumps(record | {"agents": agents}), px=15_000)


def dead(r: syncredis.Redis, n: int, **meta: str) -> str:
    values = {"error": f"order {n} failed", "error_type": "ValueError", "traceback": ""}
    values |= {"deliveries": "2", "source_stream": "pay", "source_id": f"{n}-0", "group": "g"}
    values |= {"failed_at": "1700000000.5"} | meta
    flat = ["order", str(n), *[x for k in DEAD_LETTER_FIELDS for x in (k, values[k])]]
    return r.execute_command("XADD", "pay:dead", "*", *flat).decode()  # type: ignore[no-any-return]


# --- who may act -------------------------------------------------------------------------------


async def test_without_an_operator_token_the_dashboard_is_read_only(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    beat(redis_sync, "h-1-a", "shop", [{"name": "bill", "stream": "orders", "group": "g"}])
    async with dashboard(redis_url) as client:
        assert (await client.get("/api/session")).json() == {"actions": False, "operator": False}
        r = await client.post("/api/actions/pause", json={"app": "shop", "agent": "bill"})
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert (await client.get("/api/agents")).json()["agents"][0]["agent"] == "bill"
    assert redis_sync.exists(keys.paused("shop")) == 0 and redis_sync.exists(keys.AUDIT) == 0


async def test_actions_need_the_operator_token_in_the_header_and_a_same_site_json_post(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    body = {"app": "shop", "agent": "bill"}
    async with dashboard(redis_url, token="read-only", operator_token="op-secret") as client:
        read = {"Authorization": "Bearer read-only"}
        assert (await client.get("/api/status", headers=read)).status_code == 200
        assert (await client.get("/api/status", headers=OP)).status_code == 200, "it reads too"
        session = (await client.get("/api/session", headers=read)).json()
        assert session == {"actions": True, "operator": False}
        assert (await client.get("/api/session", headers=OP)).json()["operator"] is True
        refusals = [
            ({"Authorization": "Bearer read-only"}, 401),  # a read token only reads
            ({"Authorization": "Bearer wrong"}, 401),
            ({**OP, "Content-Type": "text/plain"}, 415),  # what a plain HTML form could send
            ({**OP, "Origin": "https://evil.example"}, 403),
            ({**OP, "Sec-Fetch-Site": "cross-site"}, 403),
        ]
        for headers, code in refusals:
            r = await client.post("/api/actions/pause", headers=headers, content=json.dumps(body))
            assert r.status_code == code, (headers, r.text)
        # ?token= (which ends up in logs and histories) never authorizes an action.
        r = await client.post(
            "/api/actions/pause", params={"token": "op-secret"}, json=body, headers=read
        )
        assert r.status_code == 401
        assert (await client.get("/api/actions/pause", headers=OP)).status_code == 405
        huge = await client.post("/api/actions/pause", headers=OP, content=b"x" * 1_100_000)
        assert huge.status_code == 413
        assert redis_sync.exists(keys.paused("shop")) == 0 and redis_sync.exists(keys.AUDIT) == 0

        same_site = {**OP, "Origin": "http://dash", "Sec-Fetch-Site": "same-origin"}
        done = await client.post("/api/actions/pause", headers=same_site, json=body)
        assert done.status_code == 200, done.text
        assert done.json() | {} == {
            "app": "shop", "agent": "bill", "paused": True, "changed": True, "running": False,
        }  # fmt: skip
        assert redis_sync.smembers(keys.paused("shop")) == {b"bill"}
        bad = await client.post("/api/actions/pause", headers=OP, json={"app": "shop"})
        assert bad.status_code == 400 and "agent" in bad.json()["error"]
        nope = await client.post("/api/actions/explode", headers=OP, json={})
        assert nope.status_code == 400 and "no action 'explode'" in nope.json()["error"]
        unconfirmed = await client.post(
            "/api/actions/dead.purge", headers=OP, json={"stream": "pay"}
        )
        assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.json()["error"]
        (audit,) = (await client.get("/api/audit", headers=OP)).json()["actions"]
        assert (audit["interface"], audit["action"], audit["target"]) == (
            "dashboard",
            "pause",
            "shop/bill",
        )
        assert audit["who"].startswith("operator token from ")


async def test_a_tokenless_server_answers_only_its_own_host_names(redis_url: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    port = free_port()
    stop = anyio.Event()
    settings = Settings(dashboard_allowed_hosts=("dash.internal",))
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run_dashboard_server(redis_url, "127.0.0.1", port, stop, settings=settings)
        )
        base = f"http://127.0.0.1:{port}"
        async with httpx2.AsyncClient(base_url=base) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx2.TransportError:
                    return False

            await eventually(up, 30, "the dashboard to listen")
            for host, code in [
                ("evil.example", 421),
                (f"evil.example:{port}", 421),
                ("", 421),
                (f"127.0.0.1:{port}", 200),
                (f"localhost:{port}", 200),
                (f"[::1]:{port}", 200),
                ("dash.internal", 200),
                ("DASH.INTERNAL.", 200),
            ]:
                r = await client.get("/api/status", headers={"Host": host})
                assert r.status_code == code, (host, r.text)
        stop.set()
    # With a read token any Host may ask (the token is the check).
    port = free_port()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_dashboard_server(redis_url, "127.0.0.1", port, stop, "tok"))
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def up2() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx2.TransportError:
                    return False

            await eventually(up2, 30, "the dashboard to listen")
            headers = {"Host": "evil.example", "Authorization": "Bearer tok"}
            assert (await client.get("/api/status", headers=headers)).status_code == 200
        stop.set()


async def test_a_bad_url_setting_is_a_503_not_a_500(redis_url: str) -> None:
    async with dashboard(redis_url + "?ssl_password=x") as client:
        for path in ("/api/status", "/readyz"):
            r = await client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert "cannot read Redis" in r.text or "redis unreachable" in r.text
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "streammachine_redis_up 0.0" in metrics.text
        assert (await client.get("/api/agents")).status_code == 503


# --- reads and actions of the operator API -----------------------------------------------------


async def test_the_operator_api_reads_and_acts(redis_url: str, redis_sync: syncredis.Redis) -> None:
    ids = [dead(redis_sync, n) for n in range(3)]
    redis_sync.xgroup_create("pay", "g", "0", mkstream=True)
    held = redis_sync.xadd("pay", {"order": "9"}).decode()
    redis_sync.xreadgroup("g", "gone-1-x-0", {"pay": ">"})
    redis_sync.zadd(keys.scheduled("default"), {b"junk member": 5})
    async with dashboard(redis_url, operator_token="op-secret") as client:
        page = (await client.get("/api/dead", params={"stream": "pay", "error": "order 1"})).json()
        assert [d["id"] for d in page["entries"]] == [ids[1]] and page["total"] == 3
        where = (await client.get("/api/dead", params={"stream": "pay", "where": "order=2"})).json()
        assert [d["id"] for d in where["entries"]] == [ids[2]]
        bad = await client.get("/api/dead", params={"stream": "pay", "since": "yesterday"})
        assert bad.status_code == 400 and "not a time" in bad.json()["error"]
        entry = (await client.get("/api/dead/entry", params={"stream": "pay", "id": ids[0]})).json()
        assert entry["message"]["fields"] == {"order": "0"} and entry["raw"][0] == ["order", "0"]
        missing = await client.get("/api/dead/entry", params={"stream": "pay", "id": "1-1"})
        assert missing.status_code == 400
        pending = (await client.get("/api/pending", params={"stream": "pay"})).json()
        assert [(e["id"], e["alive"]) for e in pending["groups"][0]["entries"]] == [(held, False)]
        sched = (await client.get("/api/scheduled")).json()
        assert sched["entries"][0]["bad"] and "not a delayed entry" in sched["entries"][0]["bad"]
        inspected = (
            await client.get("/api/inspect", params={"stream": "pay", "where": "order=9"})
        ).json()
        assert [e["id"] for e in inspected["entries"]] == [held]
        assert (await client.get("/api/inspect", params={"count": "0"})).status_code == 400

        async def act(name: str, body: dict[str, Any]) -> Any:
            r = await client.post(f"/api/actions/{name}", headers=OP, json=body)
            assert r.status_code == 200, r.text
            return r.json()

        dry = await act("dead.retry", {"stream": "pay", "error": "order 0", "dry_run": True})
        assert [r["id"] for r in dry["replayed"]] == [ids[0]] and redis_sync.xlen("pay:dead") == 3
        edited = await act(
            "dead.edit_retry",
            {"stream": "pay", "id": ids[0], "set": {"order": "0-fixed"}, "confirm": True},
        )
        assert [r["id"] for r in edited["replayed"]] == [ids[0]]
        assert redis_sync.xrevrange("pay", count=1)[0][1] == {b"order": b"0-fixed"}
        await act(
            "pending.hand_back", {"stream": "pay", "group": "g", "ids": [held], "confirm": True}
        )
        assert redis_sync.hget(keys.fence("pay", "g"), "gone-1-x-0") == b"1"
        await act("rewind", {"stream": "pay", "group": "g", "to": "0", "confirm": True})
        assert redis_sync.xinfo_groups("pay")[0]["last-delivered-id"] == b"0-0"
        purged = await act("dead.purge", {"stream": "pay", "confirm": True})
        assert sorted(purged["deleted"]) == sorted(ids[1:]) and redis_sync.xlen("pay:dead") == 0
        trail = (await client.get("/api/audit")).json()["actions"]
        assert [a["action"] for a in trail] == [
            "dead.purge", "rewind", "pending.hand_back", "dead.edit_retry",
        ]  # fmt: skip
        assert {a["interface"] for a in trail} == {"dashboard"}


# --- /metrics ----------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


async def test_metrics_say_which_agents_are_paused_and_pass_promtool(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    agents = [{"name": "bill", "stream": "orders", "group": "g", "stats": {"processed": 3}}]
    beat(redis_sync, "h-1-a", "shop", [*agents, {"name": "mail", "stream": "m", "group": "g"}])
    redis_sync.sadd(keys.paused("shop"), "bill")
    redis_sync.sadd(keys.paused("later"), "x")
    dead(redis_sync, 1)
    redis_sync.xgroup_create("orders", "g", "0", mkstream=True)
    async with dashboard(redis_url) as client:
        text = (await client.get("/metrics")).text
        status = (await client.get("/api/status")).json()
    samples = _samples(text)
    paused = {k[1]: v for k, v in samples.items() if k[0] == "streammachine_agent_paused"}
    assert paused == {
        (("agent", "bill"), ("app", "shop")): 1.0,
        (("agent", "mail"), ("app", "shop")): 0.0,
        (("agent", "x"), ("app", "later")): 1.0,
    }
    assert samples[("streammachine_dead_letters", (("stream", "pay"),))] == 1.0
    (group,) = [g for s in status["streams"] if s["stream"] == "orders" for g in s["groups"]]
    assert group["paused_agents"] == ["shop/bill"]
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("STREAMMACHINE_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required here (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    check = await anyio.run_process(
        [promtool, "check", "metrics"], input=text.encode(), check=False
    )
    # promtool prints each lint problem (a counter without _total, a name with a unit it does
    # not end with, ...) and exits 1; a clean exposition says nothing.
    problems = (check.stdout + check.stderr).decode()
    assert check.returncode == 0 and not problems.strip(), problems


# --- caps on what tenants write ----------------------------------------------------------------


async def test_tenant_data_is_capped_in_status_and_metrics(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    beat(redis_sync, "big-name", "x" * 5_000_000, [])
    many = [{"name": f"a{n}", "stream": "s", "group": "g"} for n in range(50)]
    pipe = redis_sync.pipeline(transaction=False)
    for i in range(200):
        record = {"id": f"fake-{i:03}", "app": "fake", "ttl_s": 15, "agents": many}
        pipe.set(keys.INSTANCES + f"fake-{i:03}", json.dumps(record), px=60_000)
    pipe.execute()
    for n in range(20):
        candle = {"candle_start_ms": n * 60_000, "open": 1, "high": 2, "low": 0.5, "close": 1.5}
        candle |= {"volume": 1, "trade_count": 1, "timestamp_ms": n * 60_000 + 1}
        redis_sync.xadd("candles", format_candle_for_redis(candle, f"S{n}" + "y" * 200_000, 60_000))
    redis_sync.xadd("candles", format_candle_for_redis(candle, "OK", 60_000))
    async with dashboard(redis_url) as client:
        status = await client.get("/api/status")
        metrics = await client.get("/metrics")
    assert len(status.content) < 1_500_000, len(status.content)
    assert len(metrics.content) < 1_500_000, len(metrics.content)
    data = status.json()
    assert data["bad_heartbeats"] == 1, "the 5 MB record is skipped, not shown"
    assert len(data["instances"]) == 20 and data["instances_truncated"] == 180
    assert [c["symbol"] for c in data["candles"]] == ["OK"]
    assert _samples(metrics.text)[("streammachine_instances_left_out", ())] == 180
