"""Redis Cluster: agents, exactly-once with hash tags, the cross-slot fallback, partitions,
dead letters and claiming after a SIGKILL, on a local 3-master cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from redis.cluster import RedisCluster as SyncCluster

from streammachine import App, Message
from streammachine.testing import RedisClusterServer, TestApp
from tests.util import wait_sync

pytestmark = pytest.mark.anyio
APPS = Path(__file__).parent / "apps"


async def test_hash_tagged_stage_is_exactly_once_on_a_cluster(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    app = App(name="tagged")

    @app.agent("{orders}:in", group="g", count=50)
    async def stage(record: Message) -> None:
        await app.send("{orders}:out", {"src": record.key or ""})

    async with TestApp(app, url=cluster.url) as t:
        ids = [await t.send("{orders}:in", {"n": i}) for i in range(300)]
        await t.run_until_idle(timeout_s=20)
    srcs = [f[b"src"].decode() for _, f in rc.xrange("{orders}:out")]
    assert sorted(srcs) == sorted(ids) and len(set(srcs)) == 300


async def test_cross_slot_outputs_fall_back_to_at_least_once(
    cluster: RedisClusterServer, rc: SyncCluster, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.crc import key_slot

    assert key_slot(b"in") != key_slot(b"elsewhere")
    app = App(name="cross")

    @app.agent("in", group="g")
    async def stage(record: Message) -> None:
        await app.send("elsewhere", {"n": record.message["n"]})

    async with TestApp(app, url=cluster.url) as t:
        for i in range(100):
            await t.send("in", {"n": i})
        await t.run_until_idle(timeout_s=20)
    assert rc.xlen("elsewhere") == 100
    assert rc.xpending("in", "g")["pending"] == 0
    warnings = [r for r in caplog.records if "different cluster slots" in r.getMessage()]
    assert len(warnings) == 1, "logged once, not per batch"


async def test_partitions_keep_per_key_order_and_spread_over_nodes(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    app = App(name="parts")
    seen: dict[str, list[int]] = defaultdict(list)
    by_stream: dict[str, set[str]] = defaultdict(set)

    @app.agent("ticks", group="g", partitions=4)
    async def h(record: Message) -> None:
        seen[record.message["key"]].append(int(record.message["seq"]))
        by_stream[record.topic or ""].add(record.message["key"])

    async with TestApp(app, url=cluster.url) as t:
        for seq in range(50):
            for k in range(8):
                await app.send("ticks", {"key": f"k{k}", "seq": seq}, key=f"k{k}")
        for _ in range(8):
            await app.send("ticks", {"key": "none", "seq": 0})  # no key: round-robin
        await t.run_until_idle(timeout_s=20)
    assert all(seen[f"k{k}"] == list(range(50)) for k in range(8)), "per-key order kept"
    assert set(by_stream) == {f"ticks:p{i}" for i in range(4)}
    partitions_of_key = defaultdict(set)
    for stream, keys in by_stream.items():
        for k in keys:
            partitions_of_key[k].add(stream)
    assert all(len(partitions_of_key[f"k{k}"]) == 1 for k in range(8)), (
        "a key stays in one partition"
    )
    assert len(partitions_of_key["none"]) == 4, "keyless sends spread round-robin"
    nodes = {rc.get_node_from_key(f"ticks:p{i}").name for i in range(4)}
    assert len(nodes) >= 2, "partitions live on different nodes"


async def test_dead_letters_on_a_cluster(cluster: RedisClusterServer, rc: SyncCluster) -> None:
    app = App(name="dl")

    @app.agent("jobs", group="g", max_deliveries=2, retry_backoff_ms=10)
    async def h(record: Message) -> None:
        raise RuntimeError("always")

    async with TestApp(app, url=cluster.url) as t:
        await t.send("jobs", {"n": "1"})
        await t.run_until_idle(timeout_s=20)
        dead = await t.dead_letters("jobs")
    assert [m.message["error"] for m in dead] == ["always"]
    assert rc.xpending("jobs", "g")["pending"] == 0


def test_sigkilled_worker_loses_nothing_on_a_cluster(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    """`in` and `out` live in different slots: the stage's outputs cross slots. Killed three
    times, it loses nothing; on Redis >= 8.6 (XADD IDMP keyed by the input entry) it duplicates
    nothing either, elsewhere it is at-least-once, as documented."""
    n = 3000
    for i in range(n):
        rc.xadd("in", {"n": str(i)})
    env = {
        **os.environ,
        "REDIS_URL": cluster.url,
        "STREAMMACHINE_CLAIM_IDLE_MS": "700",
        "STREAMMACHINE_BLOCK_MS": "200",
        "STAGE_DELAY_S": "0.0005",
        "PYTHONPATH": str(APPS),
    }
    cmd = [sys.executable, "-m", "streammachine", "run", "stage:app", "--log-format", "json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for kill in range(3):
            at_least = 300 * (kill + 1)
            wait_sync(lambda n=at_least: rc.exists("out") and rc.xlen("out") > n, 30, "progress")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        wait_sync(lambda: rc.xpending("in", "stage")["pending"] == 0 and rc.xlen("out") >= n, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    srcs = [f[b"src"] for _, f in rc.xrange("out")]
    assert len(set(srcs)) == n, "every input has an output (at-least-once across slots)"
    info = rc.info("server", target_nodes=SyncCluster.RANDOM)
    version = tuple(int(x) for x in str(info["redis_version"]).split(".")[:2])
    if version >= (8, 6) and "valkey_version" not in info:
        assert len(srcs) == n, "exactly-once across slots with IDMP"


async def test_storage_on_a_cluster(cluster: RedisClusterServer, rc: SyncCluster) -> None:
    from streammachine import Storage

    storage = Storage(namespace="clustered", url=cluster.url)
    await storage.write("a", {"x": [1, 2]})
    await storage.write("short", "lived", ttl_s=30)
    assert await storage.incr("n", 5) == 5
    assert await storage.update("n", lambda v: v * 2) == 10
    assert await storage.read("a") == {"x": [1, 2]}
    assert sorted(await storage.keys()) == ["a", "n", "short"]
    assert await storage.delete("short") is True
    await storage.clear()
    assert await storage.keys() == []
    await storage.close()


def test_cli_streams_and_send_on_a_cluster(cluster: RedisClusterServer, rc: SyncCluster) -> None:
    import json

    env = {**os.environ, "REDIS_URL": cluster.url}
    for stream in ("alpha", "beta", "gamma"):
        sent = subprocess.run(
            [sys.executable, "-m", "streammachine", "send", stream, "n=1"],
            env=env, capture_output=True, timeout=30,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr.decode()
    listed = subprocess.run(
        [sys.executable, "-m", "streammachine", "streams", "--json"],
        env=env, capture_output=True, timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr.decode()
    names = {json.loads(line)["stream"] for line in listed.stdout.decode().splitlines()}
    assert {"alpha", "beta", "gamma"} <= names, "SCAN covers every node"


async def test_cross_slot_outputs_of_a_redelivered_input_are_written_once_with_idmp(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    """An input handled twice (its first handler's outputs written, then a crash before the ack)
    writes its cross-slot outputs with the same idempotency ids: once on Redis >= 8.6 (XADD
    IDMP), twice on older servers (at-least-once, as documented)."""
    from streammachine.consume.crossslot import write_now
    from streammachine.consume.outbox import Outbox

    app = App(name="cross-idmp", redis_url=cluster.url)
    features = await app.redis.features()
    for _attempt in range(2):  # the first delivery, then the redelivery after the crash
        out = Outbox()
        for entry in ("1-0", "2-0"):
            out.current = entry
            out.xadd("elsewhere", None, ["from", entry, "n", "1"])
            out.xadd("elsewhere", None, ["from", entry, "n", "2"])
        await write_now(app.redis, ["1-0", "2-0"], out, group="g", stream="in")
    written = [(f[b"from"], f[b"n"]) for _, f in rc.xrange("elsewhere")]
    if features.idmp:
        assert sorted(written) == [(b"1-0", b"1"), (b"1-0", b"2"), (b"2-0", b"1"), (b"2-0", b"2")]
    else:
        assert len(written) == 8, "at-least-once without IDMP"
    await app.aclose()
