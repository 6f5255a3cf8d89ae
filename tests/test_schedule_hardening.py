"""Scheduling under bad input (issue 29): an entry the mover cannot deliver is set aside and the
rest go on; sends refuse what the mover cannot carry; due times are bounded; rate-limit, timer
lease and cron keys holding garbage are recovered from; the idle mover backs off. Real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine import App, RedisConnection, keys
from streammachine.exceptions import SerializationError
from streammachine.schedule import MAX_DELAYED_FIELDS, Scheduler
from streammachine.schedule.backlog import backlog_problems, scheduled_summary
from streammachine.testing import RedisClusterServer
from tests.test_schedule import running
from tests.util import eventually, wait_sync

SCHED = keys.scheduled("default")


def member(n_fields: int, stream: str = "big") -> bytes:
    """An entry as `encode_entry` writes it, without its field cap (as a hand-written one)."""
    items = [stream.encode(), b"0"] + [b"f%d" % (i // 2) for i in range(2 * n_fields)]
    return b"0" * 24 + b"|" + b"".join(b"%d:%s" % (len(x), x) for x in items)


# --- 1. an undeliverable entry is set aside; sends refuse what the mover cannot carry ----------


async def test_mover_sets_aside_garbage_and_oversized_entries_and_moves_the_rest(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    conn = RedisConnection(url=redis_url)
    sched = Scheduler(conn, "default")
    redis_sync.zadd(SCHED, {b"garbage": 1, member(4000): 2, b"0" * 24 + b"|9999:x": 3})
    redis_sync.zadd(SCHED, {b"0" * 24 + b"|1:s1:x1:a1:b": 4, b"0" * 24 + b"|1:s": 5})
    await sched.schedule("fine", {"a": "1"}, 10)
    r = await sched.move_due()
    assert (r.moved, r.failed) == (1, 5)
    assert redis_sync.xrange("fine")[0][1] == {b"a": b"1"}
    assert redis_sync.zcard(SCHED) == 0 and redis_sync.zcard(sched.failed_key) == 5
    summary = await scheduled_summary(conn.client, SCHED)
    assert summary["failed"] == 5 and summary["backlog"] == 0
    await conn.close()


async def test_the_largest_allowed_entry_is_delivered_by_a_running_app(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="big", redis_url=redis_url)
    fields = {f"f{i}": str(i) for i in range(MAX_DELAYED_FIELDS)}
    async with running(app):
        await app.send("big", fields, delay_s=0.01)
        await eventually(lambda: redis_sync.xlen("big") == 1, what="the entry appended")
    assert len(redis_sync.xrange("big")[0][1]) == MAX_DELAYED_FIELDS
    assert redis_sync.zcard(SCHED) == 0


async def test_sends_refuse_more_fields_than_a_delayed_entry_holds(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from streammachine.mcp.streams import StreamTools
    from streammachine.mcp.tools import Tools
    from streammachine.settings import Settings

    app = App(name="refuse", redis_url=redis_url)
    too_many = {f"f{i}": "v" for i in range(MAX_DELAYED_FIELDS + 1)}
    with pytest.raises(SerializationError, match=f"at most {MAX_DELAYED_FIELDS} fields"):
        await app.send("x", too_many, delay_s=1)
    with pytest.raises(SerializationError, match="send it now"):
        await app.send_batch("x", [{"a": "1"}, too_many], at=time.time() + 5)
    tools = Tools(redis_url, Settings(), read_only=False, timeout_s=10)
    with pytest.raises(SerializationError, match="fields"):
        await StreamTools(tools).stream_send("x", too_many, delay_s=0)
    await tools.conn.close()
    await app.redis.close()
    assert redis_sync.zcard(SCHED) == 0


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streammachine", *args, "--redis-url", redis_url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_cli_send_delay_refuses_more_fields_than_a_delayed_entry_holds(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    args = [f"f{i}=v" for i in range(MAX_DELAYED_FIELDS + 1)]
    done = cli(redis_url, "send", "x", *args, "--delay", "1s")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"at most {MAX_DELAYED_FIELDS} fields" in done.stderr
    assert redis_sync.zcard(SCHED) == 0  # nothing half-scheduled
    assert redis_sync.xlen("x") == 0


async def test_readyz_and_metrics_show_backlogged_and_failed_delayed_entries(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from streammachine.dashboard.metrics import render_metrics
    from streammachine.dashboard.status import collect_status
    from tests.test_readyz import dashboard

    redis_sync.zadd(SCHED, {member(1, "late"): 1000})  # due in 1970: nobody moved it
    redis_sync.zadd(SCHED + ":failed", {b"garbage": 1})
    conn = RedisConnection(url=redis_url)
    status = await collect_status(conn.client)
    (ns,) = status["scheduled"]["namespaces"]
    assert (ns["backlog"], ns["failed"]) == (1, 1)
    text = render_metrics(status)[0].decode()
    assert 'streammachine_scheduled_backlog_entries{namespace="default"} 1.0' in text
    assert 'streammachine_scheduled_failed_entries{namespace="default"} 1.0' in text
    stuck, failed = backlog_problems(status["scheduled"], ["earlier"])
    assert "1 delayed entries overdue" in stuck[0] and ":failed" in failed[1]
    async with dashboard(redis_url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "overdue" in ready.json()["reason"], ready.json()
        assert any(":failed" in p for p in ready.json()["problems"])
        redis_sync.delete(SCHED)

        async def ready_again() -> bool:  # once the dashboard's shared snapshot ages out
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready_again, what="/readyz 200 once the backlog is gone")
    await conn.close()


# --- 2. due times are bounded; `scheduled` shows garbage as bad rows -------------------------


async def test_delay_and_at_out_of_range_are_config_errors(redis_url: str) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from streammachine.exceptions import ConfigError
    from streammachine.schedule import MAX_DELAY_S, due_ms

    for bad in (float("nan"), float("inf"), 1e300, -1, MAX_DELAY_S + 1):
        with pytest.raises(ConfigError, match="delay_s must be"):
            due_ms(delay_s=bad)
    plus14, minus14 = timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))
    far = (
        float("nan"), float("inf"), -1.0, 1e300, datetime(1, 1, 1, tzinfo=plus14),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=minus14), datetime(1, 1, 1),
    )  # fmt: skip
    for when in far:
        with pytest.raises(ConfigError, match="at must be a time from 1970"):
            due_ms(at=when)
    assert due_ms(at=datetime(2000, 1, 1, tzinfo=UTC)) == 946_684_800_000  # past: due at once
    app = App(name="bounds", redis_url=redis_url)
    with pytest.raises(ConfigError):
        await app.send("x", {"a": "1"}, delay_s=float("nan"))
    with pytest.raises(ConfigError):
        await app.send_batch("x", [{"a": "1"}], at=float("inf"))
    await app.redis.close()


def test_cli_send_bounds_delay_and_at_and_scheduled_lists_garbage_as_bad_rows(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    for flags in (
        ["--delay", "9" * 400 + "d"],
        ["--delay", "99999999999999999d"],
        ["--at", "0001-01-01T00:00:00"],
        ["--at", "0001-01-01T00:00:00+14:00"],
        ["--at", "9999-12-31T23:59:59-14:00"],
    ):
        done = cli(redis_url, "send", "x", "a=1", *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert "1970" in done.stderr or "10 years" in done.stderr, done.stderr
    assert redis_sync.zcard(SCHED) == 0
    redis_sync.zadd(SCHED, {b"garbage": 1, b"\xff\xfe" * 20: 2, member(1, "far"): 1e300})
    redis_sync.zadd(SCHED, {b"0" * 24 + b"|9:x": 3, member(2, "ok"): 4_000_000_000_000})
    listed = cli(redis_url, "scheduled")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert listed.stdout.count("BAD") == 4 and " ok " in listed.stdout, listed.stdout
    as_json = cli(redis_url, "scheduled", "--json")
    assert as_json.returncode == 0 and len(as_json.stdout.splitlines()) == 5, as_json.stderr


# --- 3. rate limits: bad keys are reset, waits are bounded and end on stop, bursts are small --


async def test_rate_key_garbage_is_reset_and_said_once(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    from streammachine.schedule import RateLimiter

    conn = RedisConnection(url=redis_url)
    limiter = RateLimiter(conn, "bad", "5/s")
    far = (time.time() + 10**6) * 1e6  # 11.6 days ahead, in µs
    for value in (f"{far:.0f}", "abc", "nan", "1e300"):
        redis_sync.set(limiter.key, value)
        assert await limiter.reserve(1) == 0.0, value
    redis_sync.delete(limiter.key)
    redis_sync.rpush(limiter.key, "x")  # a key of another type
    assert await limiter.reserve(1) == 0.0
    assert await limiter.reserve(1) == pytest.approx(0.2, abs=0.05)  # the limit works again
    warned = [r for r in caplog.records if "not a time this limit can have set" in r.message]
    assert len(warned) == 1 and "Traceback" not in caplog.text
    assert limiter.max_wait_s == 60.0 and RateLimiter(conn, "slow", "1/m").max_wait_s == 6000.0
    await conn.close()


async def test_a_rate_wait_ends_when_its_key_is_deleted_or_on_stop(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from streammachine.schedule import RateLimiter

    conn = RedisConnection(url=redis_url)
    limiter = RateLimiter(conn, "slow", "1/m")
    assert await limiter.take(1) is True  # the first token is free; the next waits 60 s
    started = time.monotonic()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.take, 1)
            await eventually(lambda: redis_sync.pttl(limiter.key) > 100_000, what="2nd reserve")
            redis_sync.delete(limiter.key)
    assert time.monotonic() - started < 3
    await limiter.reserve(1)  # the key is back: the next token waits 60 s
    stop = anyio.Event()
    got: list[bool] = []

    async def take() -> None:
        got.append(await limiter.take(1, stop))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await eventually(lambda: redis_sync.pttl(limiter.key) > 100_000, what="reserve")
            stop.set()
    assert got == [False]
    await conn.close()


def rated(redis_url: str, limit: str) -> subprocess.Popen[bytes]:
    from pathlib import Path

    apps = Path(__file__).parent / "apps"
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": f"{apps}:{os.environ.get('PYTHONPATH', '')}", "RATED_LIMIT": limit}  # fmt: skip
    cmd = [sys.executable, "-m", "streammachine", "run", "rated_app:app"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_rate_limit_5_per_s_handles_at_most_2_entries_in_any_200_ms(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    for i in range(8):
        redis_sync.xadd("jobs", {"n": str(i)})
    proc = rated(redis_url, "5/s")
    try:
        wait_sync(lambda: redis_sync.xlen("done") >= 8, 30, "8 handled")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    stamps = sorted(float(f[b"t"]) for _, f in redis_sync.xrange("done"))
    most = max(sum(1 for s in stamps if t <= s < t + 0.2) for t in stamps)
    assert most <= 2, stamps


def test_sigint_ends_a_long_rate_limit_wait_and_loses_nothing(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    for i in range(3):
        redis_sync.xadd("jobs", {"n": str(i)})
    proc = rated(redis_url, "1/m")
    try:
        wait_sync(lambda: redis_sync.xlen("done") == 1, 30, "the first handled")
        # The first is acked; the 2nd waits for the limit, the 3rd is read ahead.
        wait_sync(lambda: redis_sync.xpending("jobs", "g")["pending"] == 2, 10, "in hand")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and took < 5, (took, proc.stderr.read() if proc.stderr else "")
    assert redis_sync.xlen("done") == 1
    assert redis_sync.xpending("jobs", "g")["pending"] == 2  # left for a restart or a claim


# --- 4. garbage in the timer lease and cron keys is recovered from, said once ----------------


@pytest.mark.parametrize("garbage", ["string", "list"])
async def test_timers_run_again_after_garbage_in_their_lease(
    redis_url: str,
    redis_sync: syncredis.Redis,
    caplog: pytest.LogCaptureFixture,
    garbage: str,
) -> None:
    lease = keys.timer_lease("leasy")
    if garbage == "string":
        redis_sync.set(lease, "garbage")  # no expiry: stopped the timers for ever
    else:
        redis_sync.rpush(lease, "garbage")
    app = App(name="leasy", redis_url=redis_url)
    runs: list[float] = []

    @app.timer(0.2)
    async def tick() -> None:
        runs.append(time.monotonic())

    async with running(app):
        await eventually(lambda: len(runs) >= 2, timeout_s=8, what="the timer runs")
    warned = [r for r in caplog.records if "was not one StreamMachine writes" in r.message]
    assert len(warned) == 1, caplog.text


@pytest.mark.parametrize("value", ["1e300", "abc", "list"])
async def test_cron_recovers_from_garbage_in_its_key_and_says_so_once(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    from streammachine.schedule import Cron

    key = keys.cron("cronny", "every_second")
    if value == "list":
        redis_sync.rpush(key, "x")
    else:
        redis_sync.set(key, value)
    conn = RedisConnection(url=redis_url)
    runs: list[float] = []

    async def every_second() -> None:
        runs.append(time.time())

    cron = Cron(every_second, "* * * * * *")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cron.run, stop, conn, "cronny")
        await eventually(lambda: len(runs) >= 2, timeout_s=5, what="two fires")
        stop.set()
    last = float(redis_sync.get(key) or 0)
    assert abs(last / 1000 - time.time()) < 5  # a real fire time again
    warned = [r for r in caplog.records if "not a fire time" in r.message]
    assert len(warned) == 1, caplog.text
    await conn.close()


# --- idle cost: the mover backs off when nothing is due, and is still on time ---------------


async def test_idle_mover_looks_once_a_second_and_delivers_on_time(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    conn, other = RedisConnection(url=redis_url), RedisConnection(url=redis_url)
    sched = Scheduler(conn, "default")
    calls: list[float] = []
    move_due = sched.move_due

    async def counted(limit: int = 1000) -> object:
        calls.append(time.monotonic())
        return await move_due(limit)

    sched.move_due = counted  # type: ignore[method-assign]
    stop = anyio.Event()

    async def appended(stream: str) -> float:
        await eventually(lambda: redis_sync.xlen(stream) == 1, what=f"{stream} appended")
        return time.time()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sched.run_mover, stop)
        await anyio.sleep(2.5)  # measuring idle calls over a span: the span is the point
        assert len(calls) <= 4, calls
        due = time.time() + 1.5  # scheduled elsewhere: seen at the next look, moved when due
        await Scheduler(other, "default").schedule("elsewhere", {"a": "1"}, int(due * 1000))
        assert await appended("elsewhere") - due < 0.2
        due = time.time() + 0.3  # scheduled by this app: its mover looks at once
        await sched.schedule("here", {"a": "1"}, int(due * 1000))
        assert await appended("here") - due < 0.2
        stop.set()
    await conn.close()
    await other.close()


async def test_cluster_mover_sets_aside_what_it_cannot_deliver(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    conn = RedisConnection(url=cluster.url)
    sched = Scheduler(conn, "default")
    rc.set("not-a-stream", "x")
    rc.zadd(SCHED, {b"garbage": 1, member(4000): 2})
    await sched.schedule("not-a-stream", {"a": "1"}, 3)
    await sched.schedule("fine", {"a": "1"}, 4)
    r = await sched.move_due()
    assert (r.moved, r.failed) == (1, 3)
    assert rc.xlen("fine") == 1 and rc.zcard(sched.failed_key) == 3
    assert rc.zcard(SCHED) == 0 and rc.zcard(sched.inflight_key) == 0
    await conn.close()
