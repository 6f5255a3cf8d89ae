"""Delivery guarantees on a real Redis: retries, dead letters, claiming, keepalive, exactly-once
stages under SIGKILL and SIGSTOP, Redis outages, trimming, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
import redis as syncredis

from streammachine import App, ConfigError, Message, Retry, Skip
from streammachine.testing import RedisServer, TestApp
from tests.util import eventually, wait_sync

pytestmark = pytest.mark.anyio
APPS = Path(__file__).parent / "apps"


async def test_poison_message_is_dead_lettered_after_max_deliveries(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="poison")
    attempts: Counter[str] = Counter()

    @app.agent("orders", group="g", max_deliveries=3, retry_backoff_ms=20)
    async def h(record: Message) -> None:
        attempts[record.message["n"]] += 1
        if record.message["n"] == "poison":
            raise ValueError("cannot parse order")

    async with TestApp(app, url=redis_url) as t:
        await t.send("orders", {"n": "1"})
        poison_id = await t.send("orders", {"n": "poison"})
        await t.send("orders", {"n": "2"})
        await t.run_until_idle(timeout_s=10)
        dead = await t.dead_letters("orders")
    assert attempts == {"1": 1, "poison": 3, "2": 1}, "exactly max_deliveries attempts"
    assert len(dead) == 1
    fields = dead[0].message
    assert fields["n"] == "poison" and fields["error"] == "cannot parse order"
    assert fields["error_type"] == "ValueError" and fields["deliveries"] == "3"
    assert fields["source_stream"] == "orders" and fields["source_id"] == poison_id
    assert fields["group"] == "g" and "Traceback" in fields["traceback"]
    assert float(fields["failed_at"]) > 0
    assert redis_sync.xpending("orders", "g")["pending"] == 0
    print(f"\nsent=3 processed=2 dead={len(dead)} attempts={dict(attempts)}")


async def test_retry_and_skip(redis_url: str, redis_sync: syncredis.Redis) -> None:
    app = App(name="rs")
    calls: list[str] = []

    @app.agent("s", group="g")
    async def h(record: Message) -> None:
        calls.append(record.message["n"])
        if record.message["n"] == "later" and calls.count("later") == 1:
            raise Retry(0.05)
        if record.message["n"] == "skip":
            await app.send("out", {"never": "written"})
            raise Skip

    async with TestApp(app, url=redis_url) as t:
        await t.send("s", {"n": "later"})
        await t.send("s", {"n": "skip"})
        await t.run_until_idle()
    assert calls.count("later") == 2 and calls.count("skip") == 1
    assert redis_sync.xlen("out") == 0, "a skipped message's output is dropped"
    assert app.agents[0].stats.skipped == 1
    assert redis_sync.xpending("s", "g")["pending"] == 0


async def test_crashed_consumers_entries_are_claimed_and_it_is_removed(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xgroup_create("s", "g", id="0", mkstream=True)
    for i in range(20):
        redis_sync.xadd("s", {"n": str(i)})
    # A consumer reads 20 entries and dies without acking.
    redis_sync.xreadgroup("g", "dead-host-1-agent-0", {"s": ">"}, count=20)
    app = App(name="claim")
    got: list[str] = []

    @app.agent("s", group="g", claim_idle_ms=300, claim_interval_ms=100)
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    async with TestApp(app, url=redis_url):
        await eventually(lambda: len(got) == 20, what="claimed entries handled")
        await eventually(
            lambda: all(
                c["name"] != b"dead-host-1-agent-0" for c in redis_sync.xinfo_consumers("s", "g")
            ),
            what="the dead consumer removed",
        )
    assert sorted(got, key=int) == [str(i) for i in range(20)]
    assert redis_sync.xpending("s", "g")["pending"] == 0


async def test_long_handler_keeps_its_entry_from_being_claimed(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    handled: Counter[str] = Counter()

    def make(name: str) -> App:
        app = App(name=name)

        # Distinct agent names: two Apps in one process would otherwise share consumer names.
        @app.agent("s", group="g", claim_idle_ms=400, claim_interval_ms=50, name=f"slow_{name}")
        async def slow(record: Message) -> None:
            handled[record.message["n"]] += 1
            await anyio.sleep(1.5)

        return app

    async with TestApp(make("a"), url=redis_url) as a:
        await a.send("s", {"n": "long"})
        await eventually(lambda: handled["long"] == 1)
        async with TestApp(make("b"), url=redis_url):
            await a.run_until_idle(timeout_s=10)
    assert handled == {"long": 1}, "the other consumer never claimed the running entry"
    assert redis_sync.xpending("s", "g")["pending"] == 0


async def test_redis_restart_loses_nothing_and_the_app_stays_up() -> None:
    with RedisServer(appendonly=True) as server:
        client = syncredis.Redis.from_url(server.url)
        app = App(name="outage")
        got: Counter[str] = Counter()

        @app.agent("s", group="g", block_ms=200)
        async def h(record: Message) -> None:
            got[record.message["n"]] += 1
            await app.send("out", {"n": record.message["n"]})

        async with TestApp(app, url=server.url) as t:
            for i in range(100):
                await t.send("s", {"n": i})
            await eventually(lambda: len(got) == 100)
            await t.run_until_idle()
            server.stop()
            await anyio.sleep(2.0)  # the outage itself: the app must ride it out
            server.start()
            client = syncredis.Redis.from_url(server.url)
            for i in range(100, 200):
                client.xadd("s", {"n": str(i)})
            await eventually(lambda: len(got) == 200, timeout_s=20, what="after restart")
            await t.run_until_idle(timeout_s=10)
        assert app._exit_code == 0
        outs = [f[b"n"] for _, f in client.xrange("out")]
        assert len(outs) == 200 and len(set(outs)) == 200, "each output exactly once"
        assert client.xpending("s", "g")["pending"] == 0
        dups = sum(v - 1 for v in got.values())
        print(f"\nsent=200 processed={len(got)} duplicates={dups} dead=0")
        client.close()


async def test_worker_exits_when_redis_is_down_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMMACHINE_REDIS_DOWN_EXIT_S", "1")
    with RedisServer() as server:
        app = App(name="gives-up", redis_url=server.url)

        @app.agent("s", group="g", block_ms=100)
        async def h(record: Message) -> None: ...

        codes: list[int] = []
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                codes.append(await app.run())

            app.started = anyio.Event()
            tg.start_soon(go)
            await app.started.wait()
            server.stop()
            with anyio.fail_after(15):
                while not codes:
                    await anyio.sleep(0.05)
    assert codes == [3]


async def test_trim_acked_keeps_unread_entries(redis_url: str, redis_sync: syncredis.Redis) -> None:
    app = App(name="trim")
    done: list[str] = []

    @app.agent("s", group="fast", trim="acked", claim_interval_ms=100)
    async def fast(record: Message) -> None:
        done.append(record.message["n"])

    redis_sync.xgroup_create("s", "slow", id="0", mkstream=True)
    ids = [redis_sync.xadd("s", {"n": str(i)}) for i in range(3000)]
    # The slow group has read (and not acked) the first 1000 only.
    redis_sync.xreadgroup("slow", "c", {"s": ">"}, count=1000)
    async with TestApp(app, url=redis_url) as t:
        await t.run_until_idle()
        assert len(done) == 3000
        redis_sync.xack("s", "slow", *ids[:1000])
        await eventually(lambda: redis_sync.xlen("s") < 2500, what="trimmed")
    remaining = [i for i, _ in redis_sync.xrange("s")]
    assert set(ids[1000:]) <= set(remaining), "entries the slow group has not read are kept"


async def test_deleted_group_is_recreated(redis_url: str, redis_sync: syncredis.Redis) -> None:
    app = App(name="nogroup")
    got: list[str] = []

    @app.agent("s", group="g", block_ms=100, claim_interval_ms=100)
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    async with TestApp(app, url=redis_url) as t:
        await t.send("s", {"n": "1"})
        await eventually(lambda: got == ["1"])
        redis_sync.xgroup_destroy("s", "g")
        await eventually(lambda: redis_sync.xinfo_groups("s"), what="group recreated")
        await t.send("s", {"n": "2"})
        await eventually(lambda: "2" in got)


async def test_wrong_type_key_is_a_clear_error(redis_url: str, redis_sync: syncredis.Redis) -> None:
    redis_sync.set("notastream", "x")
    app = App(name="wrongtype", redis_url=redis_url)

    @app.agent("notastream", group="g")
    async def h(record: Message) -> None: ...

    with pytest.raises(ConfigError, match="exists and is not a stream"):
        await app.run()


async def test_once_is_true_only_the_first_time(redis_url: str) -> None:
    app = App(name="once", redis_url=redis_url)
    assert await app.once("mail:1", ttl_s=5) is True
    assert await app.once("mail:1", ttl_s=5) is False
    assert await app.once("mail:2", ttl_s=5) is True
    await app.aclose()


# --- exactly-once stages with real processes --------------------------------------------------


def _start_stage(redis_url: str, **env: str) -> subprocess.Popen[bytes]:
    full = {
        **os.environ,
        "REDIS_URL": redis_url,
        "STREAMMACHINE_CLAIM_IDLE_MS": "700",
        "STREAMMACHINE_BLOCK_MS": "200",
        "PYTHONPATH": str(APPS),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", "run", "stage:app", "--log-format", "json"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _outputs_per_input(r: syncredis.Redis) -> Counter[bytes]:
    return Counter(f[b"src"] for _, f in r.xrange("out"))


def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    n = 20_000
    pipe = redis_sync.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("in", {"n": str(i)})
    ids = pipe.execute()
    kills = 0
    slow = {"STAGE_DELAY_S": "0.0002"}  # ~4 s of work, so the kills land mid-stream
    proc = _start_stage(redis_url, **slow)
    try:
        # Kill at points of progress, not of time: the same kills on a fast or a slow machine.
        for k in range(1, 6):
            wait_sync(lambda k=k: redis_sync.xlen("out") >= n * k / 6, 60, f"{k}/6 done")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = _start_stage(redis_url, **slow)
        wait_sync(lambda: redis_sync.xlen("out") >= n, 60, "all outputs")
        wait_sync(lambda: redis_sync.xpending("in", "stage")["pending"] == 0, 30, "all acked")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    counts = _outputs_per_input(redis_sync)
    dups = sum(c - 1 for c in counts.values() if c > 1)
    print(f"\nsent={n} processed={len(counts)} duplicates={dups} dead=0 kills={kills}")
    assert set(counts) == set(ids), "every input has an output"
    assert dups == 0, "no input has two outputs"


def test_sigstop_past_claim_idle_then_sigcont_keeps_exactly_once(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    n = 3000
    pipe = redis_sync.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("in", {"n": str(i)})
    ids = pipe.execute()
    slow = {"STAGE_DELAY_S": "0.002", "STAGE_COUNT": "50"}
    a = _start_stage(redis_url, **slow)
    b = _start_stage(redis_url, **slow)

    def held_by(p: subprocess.Popen[bytes]) -> list[bytes]:
        """The entries pending on `p`'s consumers (named <host>-<pid>-<agent>-<n>)."""
        names = [
            c["name"]
            for c in redis_sync.xpending("in", "stage")["consumers"]
            if f"-{p.pid}-" in c["name"].decode()
        ]
        return [
            e["message_id"]
            for name in names
            for e in redis_sync.xpending_range("in", "stage", "-", "+", n, consumername=name)
        ]

    try:
        wait_sync(lambda: redis_sync.xlen("out") > 200, 30, "both working")
        a.send_signal(signal.SIGSTOP)
        frozen = held_by(a)
        # The fault bites only when b takes what the frozen a holds (after a's heartbeat ran out).
        wait_sync(lambda: not held_by(a), 60, "b to claim the frozen worker's entries")
        a.send_signal(signal.SIGCONT)
        wait_sync(lambda: redis_sync.xlen("out") >= n, 60, "all outputs")
        wait_sync(lambda: redis_sync.xpending("in", "stage")["pending"] == 0, 30, "all acked")
    finally:
        for p in (a, b):
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
    counts = _outputs_per_input(redis_sync)
    dups = sum(c - 1 for c in counts.values() if c > 1)
    print(f"\nsent={n} processed={len(counts)} duplicates={dups} frozen_pending={len(frozen)}")
    assert frozen, "the frozen worker held entries"
    handler = {f[b"src"]: int(f[b"pid"]) for _, f in redis_sync.xrange("out")}
    assert {handler[i] for i in frozen} == {b.pid}, "b handled every entry the frozen a held"
    assert set(counts) == set(ids)
    assert dups == 0
    assert (a.returncode, b.returncode) == (0, 0)


async def test_huge_and_odd_fields_are_handled(redis_url: str, redis_sync: syncredis.Redis) -> None:
    app = App(name="odd")
    got: list[dict[str, str]] = []

    @app.agent("s", group="g")
    async def h(record: Message) -> None:
        got.append(record.message)

    async with TestApp(app, url=redis_url) as t:
        redis_sync.xadd("s", {"big": b"x" * 5_000_000})
        redis_sync.xadd("s", {b"\xff\xfe": b"\x80 not utf-8"})
        redis_sync.xadd("s", {"": ""})
        await t.run_until_idle(timeout_s=10)
    assert len(got) == 3
    assert len(got[0]["big"]) == 5_000_000
    assert got[1] == {"\ufffd\ufffd": "\ufffd not utf-8"}
    assert got[2] == {"": ""}
    assert redis_sync.xpending("s", "g")["pending"] == 0
