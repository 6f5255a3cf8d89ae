"""schedule.py: parsing, the entry format, the mover, leases, cron claims and the rate limiter
(fakeredis for the fast unit tests, a real Redis for the rest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import redis as syncredis

from streammachine import App, RedisConnection, keys
from streammachine.exceptions import ConfigError
from streammachine.message import Message
from streammachine.schedule import (
    Cron,
    Lease,
    RateLimiter,
    Scheduler,
    decode_entry,
    due_ms,
    encode_entry,
    parse_duration,
    parse_rate,
    schedule_commands,
    takeover_bound_s,
)
from streammachine.settings import ConsumerConfig, TimerConfig
from streammachine.testing import TestApp
from tests.util import eventually, running

APPS = Path(__file__).parent / "apps"


# --- parsing and the entry format (no Redis) ----------------------------------------------------


def test_rates_and_durations_parse_and_bad_ones_say_what_to_write() -> None:
    assert parse_rate("200/s") == 200.0
    assert parse_rate("10/m") == pytest.approx(10 / 60)
    assert parse_rate("5/h") == pytest.approx(5 / 3600)
    assert parse_rate("3/10s") == pytest.approx(0.3)
    for bad in ("200", "0/s", "-1/s", "5/d", "fast"):
        with pytest.raises(ConfigError, match="'200/s'"):
            parse_rate(bad)
    assert parse_duration("30s") == 30 and parse_duration("250ms") == 0.25
    assert parse_duration("2h") == 7200 and parse_duration("1.5") == 1.5
    with pytest.raises(ConfigError, match="30s, 250ms"):
        parse_duration("soon")
    with pytest.raises(ConfigError, match="not both"):
        due_ms(delay_s=1, at=5)
    with pytest.raises(ConfigError, match=">= 0"):
        due_ms(delay_s=-1)
    assert due_ms() is None and due_ms(at=1.5) == 1500


def test_configs_validate_scope_rate_limit_and_cron() -> None:
    assert TimerConfig(interval=1).scope == "app"
    with pytest.raises(ConfigError, match="scope"):
        TimerConfig(interval=1, scope="host")  # type: ignore[arg-type]
    assert ConsumerConfig(stream="s", rate_limit="40/s").rate_limit == "40/s"
    with pytest.raises(ConfigError, match="rate_limit"):
        ConsumerConfig(stream="s", rate_limit="40 per second")
    app = App(name="v", redis_url="memory://")
    with pytest.raises(ConfigError, match="five fields"):
        app.cron("every minute")
    with pytest.raises(ConfigError, match="time zone"):
        app.cron("* * * * *", tz="Mars/Olympus")
    with pytest.raises(ConfigError, match="rate_limit"):
        app.agent("s", rate_limit="lots")
    assert takeover_bound_s(0.5) == 5.0 and takeover_bound_s(4) == 12.0


def test_cron_fire_times_follow_the_expression_in_its_time_zone() -> None:
    async def job() -> None: ...

    every_10s = Cron(job, "*/10 * * * * *")
    assert every_10s.next_after(1_700_000_001.0) == 1_700_000_010.0
    assert every_10s.prev_before(1_700_000_019.5) == 1_700_000_010.0
    assert every_10s.prev_before(1_700_000_010.0) == 1_700_000_010.0
    # 09:00 in Paris is 08:00 UTC in winter (2023-11-15).
    paris = Cron(job, "0 9 * * *", tz="Europe/Paris")
    assert paris.next_after(1_700_000_000.0) == 1_700_035_200.0


def test_an_entry_round_trips_byte_exact_in_field_order() -> None:
    fields = [b"z", b"\x00\xff\x10:|", "a", "é", b"empty", b""]
    member = encode_entry("0" * 24, "out", fields, maxlen=-5)
    e = decode_entry(member, 1234.0)
    assert e.stream == "out" and e.due_ms == 1234 and e.maxlen == -5
    assert e.fields == [(b"z", b"\x00\xff\x10:|"), (b"a", "é".encode()), (b"empty", b"")]
    cmds = schedule_commands("ns", "out", fields, 99, entry_id="1" * 24)
    assert cmds == [["ZADD", keys.scheduled("ns"), 99, encode_entry("1" * 24, "out", fields)]]


def test_message_deliveries_defaults_to_one() -> None:
    assert Message(topic="t", key="1-0").deliveries == 1
    assert Message._from_entry("t", "1-0", [], 0.0, None).deliveries == 1
    assert Message._from_entry("t", "1-0", [], 0.0, None, deliveries=3).deliveries == 3


async def test_memory_mover_moves_due_entries_once_with_binary_fields() -> None:
    app = App(name="mem", redis_url="memory://", storage_namespace="memtest")
    client = app.redis.client
    await client.delete("later", keys.scheduled("memtest"))
    ids = await app.send_batch("later", [{"n": "0", "bin": b"\xff\x00"}, {"n": "1"}], delay_s=0.2)
    assert len(ids) == 2 and all(isinstance(i, str) for i in ids)
    assert (await app.scheduler.move_due()).moved == 0, "not early"
    await anyio.sleep(0.25)
    assert (await app.scheduler.move_due()).moved == 2
    assert (await app.scheduler.move_due()).moved == 0, "moved once"
    got = await client.xrange("later")
    assert [f for _, f in got] == [{b"n": b"0", b"bin": b"\xff\x00"}, {b"n": b"1"}]
    await app.aclose()


# --- a real Redis ------------------------------------------------------------------------------


async def test_a_running_app_moves_delayed_entries_not_early_and_byte_exact(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="movers", redis_url=redis_url)
    async with running(app):
        fields = {"k": b"\x00\x01\xfe\xff", "a": "1", "b": "2"}
        due = due_ms(delay_s=0.6)
        assert due is not None
        await app.send("later", fields, at=due / 1000)
        await app.send("later", {"n": "2"}, delay_s=0.6, maxlen=10)
        assert [e.stream for e in await app.scheduler.entries("later")] == ["later"] * 2
        await eventually(lambda: redis_sync.xlen("later") == 2, what="moved when due")
    entries = redis_sync.xrange("later")
    assert all(int(i.split(b"-")[0]) >= due for i, _ in entries), "not before its due time"
    assert list(entries[0][1].items()) == [(b"k", b"\x00\x01\xfe\xff"), (b"a", b"1"), (b"b", b"2")]
    assert redis_sync.zcard(keys.scheduled("default")) == 0


async def test_a_delayed_send_inside_a_handler_is_committed_with_the_ack(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """The delayed entry is written by the batch's commit (with the ack, into the schedule),
    not at once, and reaches its stream once when due, bytes exact."""
    app = App(name="hook")
    seen: list[bool] = []

    @app.agent("in", group="g")
    async def h(record: Message) -> None:
        seen.append(await app.redis.client.zcard(keys.scheduled("default")) == 0)
        await app.send("later", {"a": record.message["a"], "b": b"\xff\x00"}, delay_s=0.3)
        seen.append(await app.redis.client.zcard(keys.scheduled("default")) == 0)

    async with TestApp(app, url=redis_url) as t:
        await t.send("in", {"a": "1"})
        await eventually(
            lambda: len(seen) == 2 and redis_sync.xpending("in", "g")["pending"] == 0,
            what="handled and acked",
        )
        assert seen == [True, True], "nothing was written while the handler ran"
        await eventually(lambda: redis_sync.xlen("later") == 1, what="moved when due")
    ((_, fields),) = redis_sync.xrange("later")
    assert fields == {b"a": b"1", b"b": b"\xff\x00"}
    assert redis_sync.zcard(keys.scheduled("default")) == 0


async def test_mover_keeps_an_entry_redis_refuses_and_moves_the_rest(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    conn = RedisConnection(url=redis_url)
    sched = Scheduler(conn, "default")
    redis_sync.set("not-a-stream", "x")
    await sched.schedule("not-a-stream", {"a": "1"}, 0)
    await sched.schedule("fine", {"a": "1"}, 0)
    r = await sched.move_due()
    assert (r.moved, r.failed) == (1, 1)
    assert redis_sync.xlen("fine") == 1 and redis_sync.zcard(sched.failed_key) == 1
    await conn.close()


async def test_one_lease_holder_at_a_time_and_release_hands_over(redis_url: str) -> None:
    a_conn, b_conn = RedisConnection(url=redis_url), RedisConnection(url=redis_url)
    # 2 s: the exclusion checks hold on a slow machine; the expiry is waited for, not slept
    a, b = Lease(a_conn, "lease", ttl_s=2.0), Lease(b_conn, "lease", ttl_s=2.0)
    assert await a.acquire() and not await b.acquire()
    assert await a.acquire(), "renewing"
    await eventually(b.acquire, timeout_s=30, what="an expired lease taken over")
    assert not await a.acquire()
    assert not await a.release() and await b.release()
    assert await a.acquire()
    await a_conn.close()
    await b_conn.close()


async def test_app_timers_run_in_one_of_two_apps_and_instance_timers_in_both(
    redis_url: str,
) -> None:
    runs: dict[str, list[str]] = {"app": [], "instance": []}
    apps = []
    for who in ("a", "b"):
        app = App(name="pair", redis_url=redis_url)

        @app.timer(0.05, name="shared")
        async def shared(who: str = who) -> None:
            runs["app"].append(who)

        @app.timer(0.05, scope="instance")
        async def mine(who: str = who) -> None:
            runs["instance"].append(who)

        apps.append(app)
    async with running(apps[0]), running(apps[1]):
        await eventually(lambda: len(runs["app"]) >= 10 and set(runs["instance"]) == {"a", "b"})
    assert len(set(runs["app"])) == 1, "one lease holder runs the app's timers"


async def test_cron_claims_each_fire_time_once_and_catches_up_only_a_recent_miss(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    conn = RedisConnection(url=redis_url)
    fired: list[str] = []

    async def job() -> None: ...

    crons = [Cron(job, "* * * * * *", name="each") for _ in range(2)]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for who, c in zip("ab", crons, strict=True):

            async def fire(c: Cron = c, who: str = who) -> None:
                fired.append(f"{c.last_fire}")

            c.fn = fire
            tg.start_soon(lambda c=c: c.run(stop, conn, "crons"))
        await eventually(lambda: len(fired) >= 3, timeout_s=10)
        stop.set()
    assert len(fired) == len(set(fired)), f"a fire time ran twice: {fired}"
    # A restart right after a fire time that nobody claimed fires it late, once. The cron fires
    # once a minute, 5 s ago: no ordinary fire can come during the wait.
    key = "streammachine:cron:{crons}:each"
    missed = int(time.time()) - 5
    redis_sync.set(key, (missed - 60) * 1000)  # the fire before it was claimed
    late = Cron(job, f"{missed % 60} * * * * *", name="each", catch_up_s=30)
    ran: list[float | None] = []

    async def record() -> None:
        ran.append(late.last_fire)

    late.fn = record
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: late.run(stop, conn, "crons"))
        await eventually(lambda: ran, timeout_s=30)
        stop.set()
    assert ran == [float(missed)], "the missed fire time, late and once"
    await conn.close()


async def test_rate_limiter_two_clients_share_one_limit(redis_url: str) -> None:
    conns = [RedisConnection(url=redis_url) for _ in range(2)]
    limiters = [RateLimiter(c, "shared", "50/s") for c in conns]
    counts = [0, 0]
    window_s = 2.0

    async def take(i: int, end: float) -> None:
        while True:
            await limiters[i].acquire(1)
            if time.monotonic() >= end:
                return
            counts[i] += 1

    end = time.monotonic() + window_s
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, 0, end)
        tg.start_soon(take, 1, end)
    total = sum(counts)
    # The limit is an upper bound on any machine; a slow one may take fewer tokens.
    assert total <= 1.2 * 50 * window_s + 1, counts
    assert min(counts) > 0, "both got tokens"
    for c in conns:
        await c.close()


def test_rate_limit_across_two_processes_is_never_exceeded(redis_url: str) -> None:
    rate, window_s = 40, 3.0
    cmd = [sys.executable, str(APPS / "rate_worker.py"), redis_url, f"{rate}/s"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        start = time.time() + 0.5
        counts = []
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start!r} {start + window_s!r}\n".encode())
            p.stdin.flush()
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            counts.append(int(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    total = sum(counts)
    # The limit is an upper bound on any machine; a slow one may take fewer tokens.
    assert total <= 1.2 * rate * window_s, counts
    assert min(counts) > 0, counts


async def test_dashboard_status_and_metrics_show_what_waits(redis_url: str) -> None:
    from streammachine.dashboard.metrics import render_metrics
    from streammachine.dashboard.status import collect_status

    conn = RedisConnection(url=redis_url)
    await Scheduler(conn, "default").schedule("s", {"a": "1"}, 2_000_000_000_000)
    await Scheduler(conn, "other").schedule_many("s", [{"a": "1"}, {"a": "2"}], 1_900_000_000_000)
    status = await collect_status(conn.client)
    assert status["scheduled"]["count"] == 3
    assert status["scheduled"]["oldest_due_ms"] == 1_900_000_000_000
    assert [n["namespace"] for n in status["scheduled"]["namespaces"]] == ["default", "other"]
    body, _ = render_metrics(status)
    text = body.decode()
    assert 'streammachine_scheduled_entries{namespace="other"} 2.0' in text
    assert 'streammachine_scheduled_oldest_due_timestamp_seconds{namespace="other"} 1.9e+09' in text
    await conn.close()


async def test_mcp_stream_send_with_delay_s_schedules_the_entry(redis_url: str) -> None:
    from streammachine.mcp.streams import StreamTools
    from streammachine.mcp.tools import Tools
    from streammachine.settings import Settings

    tools = Tools(redis_url, Settings(), read_only=False, timeout_s=10)
    result = await StreamTools(tools).stream_send("later", {"n": 1}, delay_s=60)
    assert result.due_ms is not None and result.due_ms > time.time() * 1000 + 50_000
    (entry,) = await Scheduler(tools.conn, "default").entries()
    assert entry.id == result.id and entry.fields == [(b"n", b"1")]
    now = await StreamTools(tools).stream_send("later", {"n": 2})
    assert now.due_ms is None and "-" in now.id
    await tools.conn.close()
