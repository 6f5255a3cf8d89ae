"""Scheduling on a local 3-master Redis Cluster: the delayed-entry mover's at-least-once fallback
(streams in other slots than the sorted set), the timer lease and the rate limiter."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster as SyncCluster

from streammachine import RedisConnection, keys
from streammachine.schedule import Lease, RateLimiter, Scheduler
from streammachine.testing import RedisClusterServer

pytestmark = pytest.mark.anyio


async def test_delayed_entries_reach_streams_in_other_slots(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    from redis.crc import key_slot

    streams = [f"out{i}" for i in range(6)]
    assert len({key_slot(s.encode()) for s in streams}) > 1
    conn = RedisConnection(url=cluster.url)
    assert conn.is_cluster
    sched = Scheduler(conn, "default")
    for i, s in enumerate(streams):
        await sched.schedule(s, {"n": str(i), "raw": bytes([i, 255])}, 0)
    await sched.schedule("out0", {"n": "later"}, 2**41)
    r = await sched.move_due()
    assert r.moved == 6 and r.next_due_ms == 2**41
    for i, s in enumerate(streams):
        (entry,) = rc.xrange(s)
        assert list(entry[1].items()) == [(b"n", b"%d" % i), (b"raw", bytes([i, 255]))]
    assert rc.zcard(sched.inflight_key) == 0 and rc.zcard(keys.scheduled("default")) == 1
    # A mover that died after claiming: its entries are handed out again after the deadline.
    rc.zadd(sched.inflight_key, {rc.zrange(keys.scheduled("default"), 0, 0)[0]: 0})
    rc.zrem(keys.scheduled("default"), rc.zrange(keys.scheduled("default"), 0, 0)[0])
    assert (await sched.move_due()).moved == 1 and rc.xlen("out0") == 2
    await conn.close()


async def test_lease_and_rate_limiter_work_on_a_cluster(cluster: RedisClusterServer) -> None:
    conn = RedisConnection(url=cluster.url)
    a, b = (
        Lease(conn, "streammachine:lease:{c}:timers", 5),
        Lease(conn, "streammachine:lease:{c}:timers", 5),
    )
    assert await a.acquire() and not await b.acquire() and await a.release()
    limiter = RateLimiter(conn, "c", "1000/s")
    assert await limiter.acquire(1) == 0.0
    await conn.close()
