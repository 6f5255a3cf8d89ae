"""The read-only queries and dead-letter replay of `streammachine.admin.queries` and `streammachine.admin.replay`, on a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis as syncredis

from streammachine import App, Message
from streammachine.admin.deadletters import dead_letter_stream, list_dead
from streammachine.admin.instances import list_instances
from streammachine.admin.queries import (
    check_stream,
    list_consumers,
    list_streams,
    read_entries,
    server_info,
    stream_info,
)
from streammachine.admin.replay import replay_dead
from streammachine.connection import RedisConnection
from streammachine.exceptions import ConfigError
from streammachine.testing import TestApp
from tests.util import eventually


@pytest.fixture
async def conn(redis_url: str) -> AsyncIterator[RedisConnection]:
    c = RedisConnection(url=redis_url)
    yield c
    await c.close()


def dead_fields(source_id: str, **extra: str) -> dict[str, str]:
    """What an agent writes to `<stream>:dead` besides the original fields."""
    return {
        "error": "boom",
        "error_type": "ValueError",
        "traceback": "Traceback ...",
        "deliveries": "5",
        "source_stream": "s",
        "source_id": source_id,
        "group": "g",
        "failed_at": "1700000000.5",
        **extra,
    }


async def test_check_stream_and_missing_or_wrong_type_keys(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xadd("s", {"a": "1"})
    redis_sync.set("text", "x")
    assert await check_stream(conn, "s") is True
    assert await check_stream(conn, "missing") is False
    assert await stream_info(conn, "missing") is None
    with pytest.raises(ConfigError, match="'text' holds a string, not a stream"):
        await stream_info(conn, "text")


async def test_stream_info_groups_pending_lag_and_oldest_pending(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    ids = [redis_sync.xadd("s", {"n": str(i)}).decode() for i in range(10)]
    redis_sync.xgroup_create("s", "reading", id="0")
    redis_sync.xgroup_create("s", "fresh", id="0")
    redis_sync.xgroup_create("s", "done", id="$")
    redis_sync.xreadgroup("reading", "c1", {"s": ">"}, count=3)
    redis_sync.xreadgroup("reading", "c2", {"s": ">"}, count=1)
    redis_sync.xack("s", "reading", ids[1])
    await anyio.sleep(0.05)  # so the oldest pending entry has been idle a measurable time

    info = await stream_info(conn, "s")
    assert info is not None
    assert (info["stream"], info["length"]) == ("s", 10)
    assert (info["first_id"], info["last_id"], info["last_generated_id"]) == (
        ids[0],
        ids[-1],
        ids[-1],
    )
    groups = {g["name"]: g for g in info["groups"]}
    reading = groups["reading"]
    assert (reading["consumers"], reading["pending"]) == (2, 3)
    assert reading["last_delivered_id"] == ids[3]
    assert reading["lag"] == 6, "entries after the last delivered one (counted on 6.2)"
    assert reading["oldest_pending_id"] == ids[0]
    assert reading["oldest_pending_idle_ms"] >= 40
    assert groups["fresh"]["lag"] == 10 and groups["fresh"]["pending"] == 0
    assert groups["fresh"]["oldest_pending_id"] is None
    assert groups["done"]["lag"] == 0

    consumers = {c["name"]: c for c in await list_consumers(conn, "s", "reading")}
    assert (consumers["c1"]["pending"], consumers["c2"]["pending"]) == (2, 1)


async def test_lag_beyond_the_scan_limit_is_none_not_a_wrong_number(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    for i in range(20):
        redis_sync.xadd("s", {"n": str(i)})
    redis_sync.xgroup_create("s", "g", id="0")
    redis_sync.xgroup_create("s", "new", id="0")
    redis_sync.xreadgroup("g", "c", {"s": ">"}, count=2)
    info = await stream_info(conn, "s", lag_scan_limit=5)
    assert info is not None
    lags = {g["name"]: g["lag"] for g in info["groups"]}
    redis7 = int(redis_sync.info("server")["redis_version"].split(".")[0]) >= 7
    # Redis 7 reports lag itself; 6.2 needs the scan, and beyond its limit the lag is unknown.
    assert lags == {"g": 18 if redis7 else None, "new": 20}
    info = await stream_info(conn, "s", lag_scan_limit=18)
    assert info is not None and info["groups"][0]["lag"] == 18


async def test_empty_stream_with_a_group(conn: RedisConnection) -> None:
    await conn.ensure_group("jobs", "g")
    info = await stream_info(conn, "jobs")
    assert info is not None
    assert (info["length"], info["first_id"], info["last_id"]) == (0, None, None)
    assert info["groups"][0]["lag"] == 0


async def test_redis7_shaped_replies_on_memory() -> None:
    # fakeredis answers like Redis 7 (XINFO GROUPS has lag and entries-read).
    conn = RedisConnection(url="memory://")
    try:
        c = conn.client
        await c.flushall()
        for i in range(5):
            await c.xadd("m", {"n": str(i)})
        await c.xgroup_create("m", "g", id="0")
        await c.xreadgroup("g", "c", {"m": ">"}, count=2)
        info = await stream_info(conn, "m")
        assert info is not None
        g = info["groups"][0]
        assert (g["pending"], g["lag"], g["consumers"]) == (2, 3, 1)
        assert [s["stream"] for s in await list_streams(conn)] == ["m"]
    finally:
        await conn.close()


async def test_list_streams_uses_scan_type_pattern_and_limit(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    for name in ("orders", "orders:dead", "payments", "b"):
        redis_sync.xadd(name, {"a": "1"})
    redis_sync.set("orders:config", "not a stream")
    redis_sync.hset("orders:hash", "a", "1")
    assert [s["stream"] for s in await list_streams(conn)] == [
        "b",
        "orders",
        "orders:dead",
        "payments",
    ]
    assert [s["stream"] for s in await list_streams(conn, "orders*")] == ["orders", "orders:dead"]
    assert len(await list_streams(conn, limit=2)) == 2
    assert await list_streams(conn, "nothing*") == []


async def test_read_entries_last_after_and_from_start(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    ids = [redis_sync.xadd("s", {"n": str(i)}).decode() for i in range(5)]
    redis_sync.xadd("s", {b"bad": b"\xff\xfe"})
    last = await read_entries(conn, "s", count=2)
    assert [e["fields"] for e in last] == [{"n": "4"}, {"bad": "\ufffd\ufffd"}]
    assert last[0] == {"stream": "s", "id": ids[4], "fields": {"n": "4"}}
    assert [e["id"] for e in await read_entries(conn, "s", after="0", count=2)] == ids[:2]
    assert [e["id"] for e in await read_entries(conn, "s", after=ids[1], count=2)] == ids[2:4]
    assert await read_entries(conn, "s", after="$") == []
    json.dumps(last)  # str all the way down


async def test_list_dead_splits_metadata_from_the_original_fields(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    assert dead_letter_stream("s") == dead_letter_stream("s:dead") == "s:dead"
    redis_sync.xadd("s:dead", {"order": "7", **dead_fields("1-0")})
    redis_sync.xadd("s:dead", {"order": "8", **dead_fields("2-0", deliveries="x")})
    for stream in ("s", "s:dead"):
        dead = await list_dead(conn, stream)
        assert [d["fields"] for d in dead] == [{"order": "7"}, {"order": "8"}]
    first = dead[0]
    assert first["stream"] == "s:dead"
    assert (first["source_stream"], first["source_id"], first["group"]) == ("s", "1-0", "g")
    assert (first["error"], first["error_type"], first["deliveries"]) == ("boom", "ValueError", 5)
    assert first["failed_at"] == 1700000000.5
    assert dead[1]["deliveries"] is None, "a malformed number is None, not a crash"
    assert len(await list_dead(conn, "s", count=1)) == 1
    assert await list_dead(conn, "nothing") == []


async def test_replay_by_id_moves_only_those_back(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    a = redis_sync.xadd("s:dead", {"order": "7", **dead_fields("1-0")}).decode()
    b = redis_sync.xadd("s:dead", {"order": "8", **dead_fields("2-0")}).decode()
    assert await replay_dead(conn, "s", [b, "9-9"]) == 1
    assert [f for _, f in redis_sync.xrange("s")] == [{b"order": b"8"}]
    assert [i.decode() for i, _ in redis_sync.xrange("s:dead")] == [a]


async def test_replay_all_keeps_what_cannot_be_replayed(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    for i in range(7):
        redis_sync.xadd("s:dead", {"n": str(i), **dead_fields(f"{i}-0")})
    # Only metadata: nothing to send back, so it stays.
    keep = redis_sync.xadd("s:dead", dead_fields("99-0")).decode()
    # No source_stream: the default is the stream the dead-letter stream belongs to.
    redis_sync.xadd("s:dead", {"n": "7", "error": "x"})
    assert await replay_dead(conn, "s:dead", batch_size=3) == 8
    assert [f[b"n"] for _, f in redis_sync.xrange("s")] == [str(i).encode() for i in range(8)]
    assert [i.decode() for i, _ in redis_sync.xrange("s:dead")] == [keep]
    assert await replay_dead(conn, "nothing") == 0


async def test_concurrent_replays_send_each_dead_letter_once(
    conn: RedisConnection, redis_sync: syncredis.Redis, redis_url: str
) -> None:
    pipe = redis_sync.pipeline(transaction=False)
    for i in range(600):
        pipe.xadd("s:dead", {"n": str(i), **dead_fields(f"{i}-0")})
    pipe.execute()
    other = RedisConnection(url=redis_url)
    results: list[int] = []
    try:

        async def replay(c: RedisConnection) -> None:
            results.append(await replay_dead(c, "s", batch_size=50))

        async with anyio.create_task_group() as tg:
            tg.start_soon(replay, conn)
            tg.start_soon(replay, other)
    finally:
        await other.close()
    assert sum(results) == 600
    sent = [f[b"n"] for _, f in redis_sync.xrange("s")]
    assert len(sent) == 600 and len(set(sent)) == 600
    assert redis_sync.xlen("s:dead") == 0


async def test_dead_letters_of_a_real_agent_list_and_replay(redis_url: str) -> None:
    app = App(name="dl")
    seen: list[str] = []
    fail = {"on": True}

    @app.agent("s", group="g", max_deliveries=1, block_ms=50)
    async def handle(record: Message) -> None:
        if fail["on"]:
            raise ValueError(f"bad order {record.message['order']}")
        seen.append(record.message["order"])

    async with TestApp(app, url=redis_url) as t:
        source_id = await t.send("s", {"order": "7"})
        conn = app.redis
        dead = await eventually(lambda: list_dead(conn, "s"), what="a dead letter")
        assert dead[0]["fields"] == {"order": "7"}
        assert (dead[0]["source_id"], dead[0]["group"]) == (source_id, "g")
        assert (dead[0]["error_type"], dead[0]["error"]) == ("ValueError", "bad order 7")
        assert dead[0]["deliveries"] == 1 and dead[0]["failed_at"] is not None
        fail["on"] = False
        assert await replay_dead(conn, "s") == 1
        await eventually(lambda: seen == ["7"], what="the replayed message handled")
        assert await list_dead(conn, "s") == []


async def test_server_info_and_instances(
    conn: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    info = await server_info(conn)
    assert info["redis_version"] and info["redis_version"][0].isdigit()
    assert info["latency_ms"] >= 0
    assert await list_instances(conn) == []
    now = time.time()
    # One reader, the same everywhere (health, top, the dashboard, MCP): a record that is not a
    # JSON object of the heartbeat schema is skipped, not shown half-read.
    redis_sync.hset(
        "streammachine:instances:a",
        mapping={"app": "orders", "host": "web-1", "pid": "42", "ts": str(now - 3)},
    )
    redis_sync.set(
        "streammachine:instances:b",
        json.dumps({"app": "billing", "host": "web-2", "pid": 7, "heartbeat_at": now - 3}),
    )
    redis_sync.set(
        "streammachine:instances:reg",
        json.dumps({"app": "x", "host": "h", "pid": 1, "ttl_s": 15, "heartbeat_at": 0}),
        px=10_000,
    )
    redis_sync.set("streammachine:instances:c", b"\xff not json")
    redis_sync.sadd("streammachine:instances:d", "a set is ignored")
    found: dict[str, Any] = {i["key"].rsplit(":", 1)[1]: i for i in await list_instances(conn)}
    assert sorted(found) == ["b", "reg"]
    age = found["reg"]["heartbeat_age_s"]
    assert 4.5 <= age <= 6, "the registry's age comes from the TTL, not clocks"
    assert (found["b"]["app"], found["b"]["host"], found["b"]["pid"]) == ("billing", "web-2", 7)
    assert 2 <= found["b"]["heartbeat_age_s"] < 30
