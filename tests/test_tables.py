"""Tables (state/table.py) on a real Redis: changes made in a handler ride in the commit
(exactly-once, read-your-writes, no lost update), partitioned shards, retention, bad values, and
a partitioned table on the 3-master cluster committing with its partition's acks."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine import App, Message, keys
from streammachine.exceptions import ConfigError, SerializationError, WrongTypeError
from streammachine.state.table import Table
from streammachine.testing import RedisClusterServer, TestApp
from tests.util import eventually, running

pytestmark = pytest.mark.anyio


class Total(msgspec.Struct):
    n: int = 0
    total: float = 0.0


async def test_table_changes_in_a_handler_ride_in_the_commit(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="tables", redis_url=redis_url)
    counts = app.table("counts", default=0, schema=int, stream="in")
    totals = app.table("totals", default=Total, schema=Total, stream="in")
    seen: list[tuple[int, Any, Any]] = []
    gate = anyio.Event()

    @app.agent("in", group="g", count=10, max_deliveries=0, retry_backoff_ms=10)
    async def count(record: Message) -> None:
        n = int(record.message["n"])
        key = f"k{n % 2}"
        if n == 3 and record.deliveries == 1:
            await counts.incr(key)
            await totals.update(key, lambda t: Total(t.n + 100, t.total))
            raise ValueError("the first delivery of 3 fails: its changes must vanish")
        value = await counts.incr(key)
        total = await totals.update(key, lambda t: Total(t.n + 1, t.total + n / 2))
        seen.append((n, value, await counts.get(key)))
        assert (await totals.get(key)) == total  # read-your-writes
        if n == 0:
            await gate.wait()  # the batch is held: nothing of it reaches Redis yet

    shard = keys.table("counts", "{in}")
    async with running(app):
        for i in range(6):
            redis_sync.xadd("in", {"n": str(i)})
        await eventually(lambda: seen, what="the first handler")
        assert redis_sync.hget(shard, "k0") is None, "nothing is written before the commit"
        gate.set()
        await eventually(lambda: redis_sync.xpending("in", "g")["pending"] == 0 and len(seen) == 6)
        assert await counts.get("k0") == 3 and await counts.get("k1") == 3
        assert await totals.get("k1") == Total(3, (1 + 3 + 5) / 2)
        assert await totals.get("nobody") == Total()
        assert sorted(await counts.keys()) == ["k0", "k1"] and await counts.count() == 2
    assert redis_sync.hget(shard, "k0") == b"3", "ints are decimal text, like storage"
    assert all(value == read for _, value, read in seen)
    await app.aclose()


async def test_update_loses_nothing_when_consumers_race(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="race", redis_url=redis_url)
    totals = app.table("totals", default=Total, schema=Total, stream="in")

    @app.agent("in", group="g", concurrency=4, count=5)
    async def add(record: Message) -> None:
        n = int(record.message["n"])
        await totals.update("all", lambda t: Total(t.n + 1, t.total + n))
        await anyio.sleep(0.001)  # let the consumers interleave

    async with running(app):
        for i in range(200):
            redis_sync.xadd("in", {"n": str(i)})
        await eventually(
            lambda: redis_sync.xpending("in", "g")["pending"] == 0 and redis_sync.xlen("in") == 200,
            timeout_s=30,
        )
        await eventually(lambda: _n(redis_sync) == 200, timeout_s=30)
        assert await totals.get("all") == Total(200, sum(range(200)))
    await app.aclose()


def _n(r: syncredis.Redis) -> int:
    raw = r.hget(keys.table("totals", "{in}"), "all")
    return 0 if raw is None else msgspec.msgpack.decode(raw, type=Total).n  # type: ignore[arg-type]


async def test_a_partitioned_table_keeps_each_key_in_its_partitions_shard(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="parts", redis_url=redis_url)
    counts = app.table("counts", default=0, stream="clicks")

    @app.agent("clicks", group="g", partitions=3)
    async def count(record: Message) -> None:
        await counts.incr(record.message["user"])

    async with running(app):
        for i in range(60):
            await app.send("clicks", {"user": f"u{i % 7}"}, key=f"u{i % 7}", now=True)
        await eventually(lambda: sum(int(v) for v in _all(redis_sync).values()) == 60)
    for i in range(7):
        k = f"u{i}"
        shard = keys.table("counts", "{" + f"clicks:p{zlib.crc32(k.encode()) % 3}" + "}")
        assert redis_sync.hget(shard, k) is not None, f"{k} is in its partition's shard"
    assert {k: await counts.get(k) for k in await counts.keys()} == {
        f"u{i}": len(range(i, 60, 7)) for i in range(7)
    }
    await app.aclose()


def _all(r: syncredis.Redis) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for i in range(3):
        found.update(r.hgetall(keys.table("counts", "{" + f"clicks:p{i}" + "}")))  # type: ignore[arg-type]
    return found


async def test_retention_expires_each_key_after_its_last_change(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="ttl", redis_url=redis_url)
    seen = app.table("seen", default=0, ttl_s=2)
    await seen.incr("a", 2)
    await seen.set("b", 5)
    ttl_key = keys.table("seen", "{seen}") + ":ttl:a"
    assert 0 < redis_sync.pttl(ttl_key) <= 2000
    assert await seen.get("a") == 2 and await seen.count() == 2
    await eventually(lambda: redis_sync.exists(ttl_key) == 0, timeout_s=15, what="expiry")
    assert await seen.get("a") == 0 and await seen.keys() == []
    await app.aclose()


async def test_bad_values_give_one_line_errors(redis_url: str, redis_sync: syncredis.Redis) -> None:
    app = App(name="bad", redis_url=redis_url)
    totals = app.table("totals", default=Total, schema=Total)
    redis_sync.hset(keys.table("totals", "{totals}"), "x", b"\xc1not msgpack")
    with pytest.raises(SerializationError, match=r"'totals' key 'x'.*set\(\) or delete"):
        await totals.get("x")
    with pytest.raises(WrongTypeError, match="not a Total"):
        await totals.set("y", {"n": 1})  # type: ignore[arg-type]
    assert await totals.keys() == ["x"], "nothing written by the refused set"
    with pytest.raises(ConfigError, match="declared twice"):
        app.table("totals")
    with pytest.raises(ConfigError, match="table name"):
        Table("a:b", url=redis_url)
    await app.aclose()


async def test_a_partitioned_table_commits_with_its_partition_on_a_cluster(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    from redis.crc import key_slot

    app = App(name="ctable")
    counts = app.table("counts", default=0, schema=int, stream="clicks")
    sums = app.table("sums", default=0.0, schema=float, stream="clicks")

    @app.agent("clicks", group="g", partitions=3, count=20)
    async def count(record: Message) -> None:
        user = record.message["user"]
        await counts.incr(user)
        await sums.incr(user, float(record.message["v"]))
        await app.send("{" + record.topic + "}:out", {"u": user})  # the partition's slot

    expect: Counter[str] = Counter()
    async with TestApp(app, url=cluster.url) as t:
        for i in range(300):
            user = f"u{i % 11}"
            expect[user] += 1
            await t.app.send("clicks", {"user": user, "v": 0.5}, key=user, now=True)
        await t.run_until_idle(timeout_s=30)
        assert {k: await counts.get(k) for k in expect} == dict(expect)
        assert {k: await sums.get(k) for k in expect} == {k: v * 0.5 for k, v in expect.items()}
    assert sum(rc.xlen("{" + f"clicks:p{i}" + "}:out") for i in range(3)) == 300
    assert {key_slot(s.encode()) for s in counts.shards()} == {
        key_slot(f"clicks:p{i}".encode()) for i in range(3)
    }


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streammachine", "table", *args, "--redis-url", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


async def test_the_cli_reads_every_shard_of_a_table(redis_url: str) -> None:
    app = App(name="cli", redis_url=redis_url)
    app.partitioned("clicks", 3)
    counts = app.table("counts", default=0, stream="clicks")
    totals = app.table("totals", schema=Total)
    for i in range(7):
        await counts.incr(f"u{i}", i + 1)
    await totals.set("all", Total(2, 1.5))
    await app.aclose()

    listed = [json.loads(line) for line in _cli(redis_url, "list", "--json").stdout.splitlines()]
    used = len({zlib.crc32(f"u{i}".encode()) % 3 for i in range(7)})  # shards holding keys
    assert {"table": "counts", "shards": used, "keys": 7} in listed and used > 1
    assert {"table": "totals", "shards": 1, "keys": 1} in listed
    got = _cli(redis_url, "get", "totals", "all", "--json")
    assert json.loads(got.stdout) == {
        "table": "totals",
        "key": "all",
        "value": {"n": 2, "total": 1.5},
    }
    shown = _cli(redis_url, "show", "counts", "--json").stdout.splitlines()
    assert [json.loads(line)["value"] for line in shown] == list(range(1, 8))
    missing = _cli(redis_url, "get", "counts", "nobody")
    assert missing.returncode == 1 and "not found in table 'counts'" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


async def test_mcp_lists_tables_and_reads_keys(redis_url: str) -> None:
    from streammachine.mcp.server import create_server
    from tests.test_mcp import connect, ok

    app = App(name="mcp", redis_url=redis_url)
    app.partitioned("clicks", 3)
    counts = app.table("counts", default=0, stream="clicks")
    for i in range(5):
        await counts.incr(f"u{i}", 10 + i)
    await app.aclose()
    async with connect(create_server(redis_url, read_only=True), "modern") as client:
        listed = await ok(client, "table_list")
        got = await ok(client, "table_get", {"table": "counts", "keys": ["u1", "u4", "zz"]})
    assert {k: v for k, v in listed["tables"][0].items() if k != "shards"} == {
        "table": "counts",
        "keys": 5,
    }
    assert got["values"] == {"u1": 11, "u4": 14} and got["missing"] == ["zz"]


async def test_status_and_metrics_show_keys_per_table(redis_url: str) -> None:
    from streammachine.dashboard.metrics import render_metrics
    from streammachine.dashboard.status import collect_status

    app = App(name="metrics", redis_url=redis_url)
    seen = app.table("seen", default=0)
    for i in range(4):
        await seen.set(f"k{i}", i)
    status = await collect_status(app.redis.client)
    assert {"table": "seen", "shards": 1, "keys": 4} in status["tables"]
    body, _ = render_metrics(status)
    assert b'streammachine_table_keys{table="seen"} 4.0' in body
    await app.aclose()
