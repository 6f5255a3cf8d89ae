"""`/readyz` says which partitions nobody owns (issue: hardening wave 2): a partitioned agent whose
partitions have no live owner — its process died, or garbage in the ownership keys stalls it —
makes the app not ready, with the partitions named; a live owner makes it ready again."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import redis as syncredis

from streammachine import App, Message, keys
from streammachine.dashboard import create_dashboard
from streammachine.presence.heartbeat import add_heartbeat
from tests.util import eventually


@asynccontextmanager
async def dashboard(url: str) -> AsyncIterator[httpx2.AsyncClient]:
    """The Starlette app in this loop, driven through httpx2's ASGI transport."""
    dash = create_dashboard(url)
    transport = httpx2.ASGITransport(app=dash)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://dash") as client:
            yield client
    finally:
        await dash.state.backend.aclose()


def fake_owner_beat(r: syncredis.Redis, paused: bool = False) -> None:
    """A fresh heartbeat of an instance running a 3-partition agent on `ticks` in group `g`."""
    agent = {"name": "a", "stream": "ticks", "group": "g", "partitions": 3, "paused": paused}
    record = {"id": "h-1-abc123", "app": "t", "ttl_s": 30.0, "interval_s": 5.0, "agents": [agent]}
    r.set(keys.INSTANCES + "h-1-abc123", json.dumps(record), px=30_000)


async def test_unowned_partitions_make_the_app_not_ready(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    fake_owner_beat(redis_sync)
    async with dashboard(redis_url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.json()
        assert ready.json()["reason"] == "partitions without a live owner: ticks/g: 0, 1, 2"
        fake_owner_beat(redis_sync, paused=True)  # a paused agent owes no owner
        assert (await client.get("/readyz")).status_code == 200


async def test_a_live_owner_makes_it_ready_and_garbage_is_reported(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="owners", redis_url=redis_url)

    @app.agent("ticks", group="g", partitions=3)
    async def handle(message: Message) -> None: ...

    add_heartbeat(app, interval_s=0.2)
    async with anyio.create_task_group() as tg, dashboard(redis_url) as client:
        tg.start_soon(app.run)

        async def ready() -> bool:
            r = await client.get("/readyz")
            return r.status_code == 200 and r.json()["instances"] == 1

        await eventually(ready, timeout_s=30, what="every partition owned")
        # A hand-written member that is no process id: reported, and the owner keeps its leases.
        redis_sync.zadd(keys.partition_members("ticks", "g"), {"\xff\xfe-garbage": 9e15})
        body = (await client.get("/readyz")).json()
        assert body["ready"] is True, body
        assert any("not a process id" in p for p in body.get("problems", [])), body
        await app.shutdown()
    async with dashboard(redis_url) as client:
        # The owner is gone (its heartbeat removed at shutdown): nothing left to own for.
        assert (await client.get("/readyz")).status_code == 200
