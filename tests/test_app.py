"""App on a real Redis: groups, sharing, fan-out, backlog, failures, handler output, timers."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest
import redis as syncredis

from streammachine import App, Message
from tests.util import eventually


@asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    """Run `app` in the background of the test's loop; stop it cleanly at the end."""
    async with anyio.create_task_group() as tg:
        result: list[int] = []

        async def go() -> None:
            result.append(await app.run())

        tg.start_soon(go)
        app.started = app.started or anyio.Event()
        await eventually(lambda: app.started is not None and app.started.is_set(), what="start")
        try:
            yield app
        finally:
            await app.shutdown()
    assert result == [0]


def fill(r: syncredis.Redis, stream: str, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"n": str(i)})
    pipe.execute()


async def test_two_consumers_of_one_group_share_work_without_duplicates(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    fill(redis_sync, "jobs", 2000)
    seen: Counter[str] = Counter()
    by_consumer: Counter[str] = Counter()
    app = App(name="share", redis_url=redis_url)

    @app.agent("jobs", group="g", concurrency=2, count=50)
    async def work(record: Message) -> None:
        seen[record.message["n"]] += 1
        by_consumer[record.consumer_id or ""] += 1
        await anyio.lowlevel.checkpoint()

    async with running(app):
        await eventually(lambda: len(seen) == 2000, what="2000 handled")
        await eventually(lambda: redis_sync.xpending("jobs", "g")["pending"] == 0, what="all acked")
    assert max(seen.values()) == 1, "a message was handled twice"
    assert len(by_consumer) == 2 and min(by_consumer.values()) > 0, by_consumer
    for name in by_consumer:
        assert name.endswith(("-work-0", "-work-1")), name


async def test_two_groups_each_get_every_message(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="fanout", redis_url=redis_url)
    got: dict[str, list[str]] = {"a": [], "b": []}

    @app.agent("events", group="analytics")
    async def a(record: Message) -> None:
        got["a"].append(record.message["n"])

    @app.agent("events", group="audit")
    async def b(record: Message) -> None:
        got["b"].append(record.message["n"])

    async with running(app):
        ids = await app.send_batch("events", [{"n": i} for i in range(100)])
        assert all(isinstance(i, str) and "-" in i for i in ids)
        await eventually(lambda: len(got["a"]) == 100 and len(got["b"]) == 100)
    expected = [str(i) for i in range(100)]
    assert got["a"] == expected and got["b"] == expected, "each group gets all, in order"


async def test_backlog_written_before_the_group_exists_is_processed(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    fill(redis_sync, "backlog", 300)
    app = App(name="late", redis_url=redis_url)
    got: list[str] = []

    @app.agent("backlog", group="new")
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    async with running(app):
        await eventually(lambda: len(got) == 300)
    assert got == [str(i) for i in range(300)]


async def test_start_latest_skips_the_backlog(redis_url: str, redis_sync: syncredis.Redis) -> None:
    fill(redis_sync, "s", 10)
    app = App(name="latest", redis_url=redis_url)
    got: list[str] = []

    @app.agent("s", group="tail", start="latest")
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    async with running(app):
        await app.send("s", {"n": "new"})
        await eventually(lambda: got == ["new"])


async def test_existing_group_keeps_its_position(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    fill(redis_sync, "s", 5)
    redis_sync.xgroup_create("s", "g", id="$")
    app = App(name="keep", redis_url=redis_url)
    got: list[str] = []

    @app.agent("s", group="g")
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    async with running(app):
        await app.send("s", {"n": "after"})
        await eventually(lambda: got == ["after"])


async def test_a_raising_handler_leaves_its_entry_pending(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="fails", redis_url=redis_url)
    calls: list[str] = []

    @app.agent("s", group="g", retry_backoff_ms=60_000)
    async def h(record: Message) -> None:
        calls.append(record.message["n"])
        if record.message["n"] == "bad":
            raise RuntimeError("boom")

    async with running(app):
        await app.send_batch("s", [{"n": "1"}, {"n": "bad"}, {"n": "2"}])
        await eventually(lambda: calls == ["1", "bad", "2"])
        info = await eventually(
            lambda: redis_sync.xpending("s", "g")["pending"] == 1 and redis_sync.xpending("s", "g")
        )
        pending = redis_sync.xpending_range("s", "g", "-", "+", 10)
        entry = redis_sync.xrange("s", pending[0]["message_id"], pending[0]["message_id"])
        assert entry[0][1] == {b"n": b"bad"}
        assert info["pending"] == 1
        assert app.agents[0].stats.failed == 1 and app.agents[0].stats.processed == 2


async def test_handler_sends_are_committed_with_the_ack(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="stage", redis_url=redis_url)
    returned: list[object] = []

    @app.agent("in", group="g", count=20)
    async def stage(record: Message) -> None:
        returned.append(await app.send("out", {"n": int(record.message["n"]) * 2}))
        if record.message["n"] == "0":
            returned.append(await app.send("now", {"x": 1}, now=True))

    async with running(app):
        await app.send_batch("in", [{"n": i} for i in range(200)])
        await eventually(lambda: redis_sync.xlen("out") == 200)
        await eventually(lambda: redis_sync.xpending("in", "g")["pending"] == 0)
    outs = [int(f[b"n"]) for _, f in redis_sync.xrange("out")]
    assert outs == [i * 2 for i in range(200)]
    assert returned[0] is None, "buffered sends return None"
    assert isinstance(returned[1], str) and redis_sync.xlen("now") == 1, "now=True writes at once"


async def test_failed_handler_output_is_dropped(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="drop", redis_url=redis_url)
    done: list[str] = []

    @app.agent("in", group="g", retry_backoff_ms=60_000)
    async def stage(record: Message) -> None:
        await app.send("out", {"from": record.message["n"]})
        done.append(record.message["n"])
        if record.message["n"] == "bad":
            raise ValueError("no")

    async with running(app):
        await app.send_batch("in", [{"n": "a"}, {"n": "bad"}, {"n": "b"}])
        await eventually(lambda: len(done) == 3 and redis_sync.xlen("out") == 2)
    assert [f[b"from"] for _, f in redis_sync.xrange("out")] == [b"a", b"b"]


async def test_commit_skips_entries_claimed_away_by_another_consumer(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """A stalled consumer whose entries were claimed must not write their outputs or ack them."""
    from streammachine.consume.claims import CLAIM_SCRIPT
    from streammachine.consume.outbox import Outbox

    app = App(name="stall", redis_url=redis_url)

    @app.agent("in", group="g")
    async def h(record: Message) -> None: ...

    await app.redis.connect()
    await app.agents[0].prepare()
    ids = [i.decode() for i in (redis_sync.xadd("in", {"n": str(n)}) for n in range(2))]
    consumer = app.agents[0].consumers()[0]
    consumer.committer.epoch = "0"  # it knows the fence counter: its batch takes the fast path
    batch = await consumer._exchange([consumer._read_cmd(False)])
    # Another consumer takes the first entry over after a stall, as claims do (fencing it).
    fence = consumer.committer.fence
    redis_sync.eval(CLAIM_SCRIPT, 2, "in", fence, "g", "other", 0, ids[0])
    out = Outbox()
    for i in ids:
        out.current = i
        out.xadd("out", None, ["from", i])
    pending = consumer.committer.build(ids, batch, out, margin=100, tag=0)
    await consumer._flush(pending)
    assert [f[b"from"].decode() for _, f in redis_sync.xrange("out")] == [ids[1]]
    owners = {
        p["message_id"].decode(): p["consumer"]
        for p in redis_sync.xpending_range("in", "g", "-", "+", 10)
    }
    assert owners == {ids[0]: b"other"}, "the claimed entry stays with its new owner, unacked"
    await consumer.wire.close()
    await app.aclose()


async def test_timer_runs_at_a_fixed_interval_and_survives_errors(redis_url: str) -> None:
    app = App(name="timers", redis_url=redis_url)
    stamps: list[float] = []
    overlap: list[bool] = []
    busy = False

    @app.timer(0.05)
    async def tick() -> None:
        nonlocal busy
        overlap.append(busy)
        busy = True
        stamps.append(anyio.current_time())
        try:
            if len(stamps) == 2:
                raise RuntimeError("timer error is logged, not fatal")
            if len(stamps) == 3:
                await anyio.sleep(0.12)  # longer than the interval: ticks are skipped, not stacked
        finally:
            busy = False

    async with running(app):
        await eventually(lambda: len(stamps) >= 8)
    assert not any(overlap), "a timer never overlaps itself"
    assert app.timers[0].failures == 1
    gaps = [b - a for a, b in itertools.pairwise(stamps[3:])]
    # never closer than the interval (ticks skipped, not stacked); a slow machine may be later
    assert all(g > 0.03 for g in gaps), gaps


async def test_health_check_has_exactly_the_documented_keys(redis_url: str) -> None:
    app = App(name="h", redis_url=redis_url)

    @app.agent("s")
    async def a(record: Message) -> None: ...

    @app.timer(10)
    async def t() -> None: ...

    async with running(app):
        health = await app.health_check()
    assert health == {
        "status": "healthy",
        "redis": "connected",
        "active_tasks": 2,
        "registered_agents": 1,
        "registered_timers": 1,
    }
    down = App(name="down", redis_url="redis://127.0.0.1:1/0")
    assert (await down.health_check())["status"] == "degraded"
    await down.aclose()


async def test_send_validates_records(redis_url: str) -> None:
    app = App(name="v", redis_url=redis_url)
    with pytest.raises(ValueError, match="at least one field"):
        await app.send("s", {})
    with pytest.raises(ValueError, match="field names must be str"):
        await app.send("s", {1: "x"})  # type: ignore[dict-item]
    entry = await app.send(
        "s", {"s": "x", "b": b"\xff", "i": 3, "f": 1.5, "t": True, "j": {"a": [1]}}
    )
    assert isinstance(entry, str)
    r = syncredis.Redis.from_url(redis_url)
    fields = r.xrange("s")[0][1]
    assert fields == {
        b"s": b"x",
        b"b": b"\xff",
        b"i": b"3",
        b"f": b"1.5",
        b"t": b"true",
        b"j": b'{"a":[1]}',
    }
    r.close()
    await app.aclose()


async def test_maxlen_trims_approximately(redis_url: str, redis_sync: syncredis.Redis) -> None:
    app = App(name="m", redis_url=redis_url, maxlen=100)
    for _ in range(5):
        await app.send_batch("capped", [{"n": i} for i in range(200)])
    assert redis_sync.xlen("capped") < 400
    await app.aclose()


async def test_startup_and_shutdown_hooks_run_in_order(redis_url: str) -> None:
    app = App(name="hooks", redis_url=redis_url)
    events: list[str] = []

    @app.on_startup
    async def up() -> None:
        events.append("up")

    @app.on_shutdown
    async def down() -> None:
        events.append("down")

    async with running(app):
        assert events == ["up"]
    assert events == ["up", "down"]


async def test_memory_url_runs_an_app_without_a_server() -> None:
    app = App(name="mem", redis_url="memory://")
    got: list[str] = []

    @app.agent("mem-in", group="g")
    async def h(record: Message) -> None:
        await app.send("mem-out", {"n": record.message["n"]})
        got.append(record.message["n"])

    async with running(app):
        await app.send_batch("mem-in", [{"n": i} for i in range(50)])
        await eventually(lambda: len(got) == 50)
        await eventually(lambda: app.redis.client.xlen("mem-out"), what="outputs")
        assert await app.redis.client.xlen("mem-out") == 50


async def test_handler_output_with_bytes_values_commits(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """Redis' cmsgpack has no bin type: bytes in handler output must still commit."""
    app = App(name="bytes", redis_url=redis_url)

    @app.agent("in", group="g")
    async def stage(record: Message) -> None:
        await app.send("out", {"raw": b"\x00\xff" * 300, "n": record.message["n"]})

    async with running(app):
        await app.send_batch("in", [{"n": i} for i in range(50)])
        await eventually(lambda: redis_sync.xlen("out") == 50)
        await eventually(lambda: redis_sync.xpending("in", "g")["pending"] == 0)
    assert redis_sync.xrange("out", count=1)[0][1][b"raw"] == b"\x00\xff" * 300
