"""FastOHLCConsumer on a real Redis: candles equal an offline run, late ticks are dropped, the
lease keeps one consumer active, and SIGKILLs neither lose nor duplicate a candle."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
import redis as syncredis

from streammachine import App, FastOHLCConsumer, keys
from streammachine.ohlc import FastOHLC, format_candle_for_redis
from streammachine.ohlc.candle import candle_aggregates
from streammachine.testing import TestApp
from tests.util import eventually, wait_sync

pytestmark = pytest.mark.anyio
APPS = Path(__file__).parent / "apps"
T0 = 1_700_000_000_000
STATE = keys.ohlc("ticks", "ohlc_workers", "state")
LEGACY_STATE = "candles:state:ohlc_workers"  # where earlier versions kept it


def ticks(n: int, seed: int = 1, step_ms: int = 100) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "symbol": rng.choice(["AAPL", "MSFT", "NVDA"]),
            "price": f"{100 + rng.random() * 10:.4f}",
            "volume": str(rng.randint(1, 9)),
            "ts": str(T0 + i * step_ms + rng.randint(0, step_ms - 1)),
        }
        for i in range(n)
    ]


def offline(rows: list[dict[str, str]], intervals: list[int]) -> dict[tuple[str, str, str], dict]:
    agg = FastOHLC(intervals)
    for r in rows:
        agg.update_tick(r["symbol"], float(r["price"]), float(r["volume"]), int(r["ts"]))
    return {
        (s, str(iv), str(c.candle_start_ms)): format_candle_for_redis(c, s, iv)
        for s, iv, c in agg.flush_completed()
    }


def emitted(r: syncredis.Redis, streams: list[str]) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for s in streams for _, f in r.xrange(s)]


def key(c: dict[str, str]) -> tuple[str, str, str]:
    return (c["symbol"], c["interval_ms"], c["candle_start_ms"])


async def test_candles_equal_an_offline_run_and_late_ticks_are_dropped(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="candles")
    consumer = app.ohlc("ticks", intervals=["1s", "5s"], timestamp_field="ts", lease_ms=500)
    assert consumer.outputs == {1000: "candles_1s", 5000: "candles_5s"}
    rows = ticks(2000, step_ms=10)  # 20 s of event time
    async with TestApp(app, url=redis_url):
        await app.send_batch("ticks", rows)
        want = offline(rows, [1000, 5000])
        await eventually(
            lambda: len(emitted(redis_sync, ["candles_1s", "candles_5s"])) == len(want), 20
        )
        # A tick for a candle already emitted is late: counted and dropped, never re-emitted.
        await app.send("ticks", {"symbol": "AAPL", "price": "1", "volume": "1", "ts": str(T0)})
        await eventually(lambda: consumer.aggregator.late_tick_count == 1, 10)
    got = emitted(redis_sync, ["candles_1s", "candles_5s"])
    assert {key(c): c for c in got} == want
    assert len(got) == len(want), "no candle twice"
    assert redis_sync.xpending("ticks", "ohlc_workers")["pending"] == 0
    assert redis_sync.xlen(STATE) == 1, "one snapshot, trimmed exactly"


async def test_app_ohlc_and_a_tumbling_window_of_candle_aggregates_emit_the_same_candles(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """OHLC is a tumbling window on the window engine: on one app and one tick stream, `app.ohlc`
    and `app.window(kind=tumbling(1), agg=candle_aggregates())` emit the same candles, each once
    (ticks at most 10 ms out of order, within the grace of both)."""
    from streammachine.ohlc.candle import candle_from_window
    from streammachine.windows import tumbling

    app = App(name="candles-and-windows")
    consumer = app.ohlc(
        "ticks", intervals=["1s"], timestamp_field="ts", grace_ms=200, lease_ms=500, count=97
    )
    app.window("ticks", "bars", kind=tumbling(1), key="symbol", time="ts", grace_s=0.2,
               agg=candle_aggregates(), to="bars", count=61, lease_ms=500)  # fmt: skip
    rows = ticks(1500, seed=7, step_ms=10)  # 15 s of event time
    async with TestApp(app, url=redis_url):
        await app.send_batch("ticks", rows)
        want = offline(rows, [1000])
        await eventually(
            lambda: (
                len(emitted(redis_sync, ["candles_1s"])) == len(want)
                and redis_sync.xlen("bars") == len(want)
            ),
            20,
        )
    from_ohlc = emitted(redis_sync, ["candles_1s"])
    assert {key(c): c for c in from_ohlc} == want and len(from_ohlc) == len(want)

    # The same fields by name: the window's aggregates are the candle's.
    bars = emitted(redis_sync, ["bars"])
    by_window = sorted((b["key"], candle_from_window(int(b["start"]), b)) for b in bars)
    by_ohlc = sorted(
        (c["symbol"], candle_from_window(int(c["candle_start_ms"]), c)) for c in from_ohlc
    )
    assert by_window == by_ohlc
    assert consumer.aggregator.late_tick_count == 0


async def test_a_snapshot_of_an_earlier_version_restores(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    earlier = FastOHLC([1000])
    earlier.update_tick("A", 1.5, 2.0, T0)
    redis_sync.xadd(LEGACY_STATE, {"data": earlier.snapshot()})  # uncompressed
    app = App(name="restore")
    consumer = app.ohlc("ticks", intervals=[1000], timestamp_field="ts", lease_ms=500)
    async with TestApp(app, url=redis_url):
        await eventually(lambda: consumer.running, 10)
        assert consumer.aggregator.get_candles("A", 1000) == earlier.get_candles("A", 1000)
        await app.send("ticks", {"symbol": "A", "price": "3", "volume": "1", "ts": str(T0 + 5)})
        await eventually(lambda: consumer.aggregator.tick_count == 2, 10)
    ((_, fields),) = redis_sync.xrange(STATE)
    assert set(fields) == {b"zdata"}, "written compressed now"


async def test_only_the_lease_holder_consumes(redis_url: str, redis_sync: syncredis.Redis) -> None:
    first = FastOHLCConsumer("ticks", intervals=[1000], timestamp_field="ts", lease_ms=600)
    second = FastOHLCConsumer("ticks", intervals=[1000], timestamp_field="ts", lease_ms=600)
    os.environ["REDIS_URL"] = redis_url
    try:
        await first.start()
        await eventually(lambda: first.running, 10)
        await second.start()
        # Ticks keep coming for more than two lease periods (measured, not slept): the holder
        # handles every one, the standby none, however slow the machine.
        started = time.monotonic()
        n = 0
        while n < 3 or time.monotonic() - started < 2 * 0.6:
            redis_sync.xadd("ticks", {"symbol": "A", "price": "1", "volume": "1", "ts": str(T0)})
            n += 1
            await eventually(lambda n=n: first.aggregator.tick_count == n, 10)
            assert not second.running and second.aggregator.tick_count == 0, "a hot standby"
        await first.stop()
        await eventually(lambda: second.running, 10, "the standby takes over")
        redis_sync.xadd("ticks", {"symbol": "A", "price": "2", "volume": "1", "ts": str(T0 + 5000)})
        await eventually(
            lambda: redis_sync.exists("candles_1s") and redis_sync.xlen("candles_1s") == 1, 10
        )
        assert second.aggregator.tick_count == n + 1, "it restored the first one's state"
    finally:
        await second.stop()
        await first.stop()
        del os.environ["REDIS_URL"]


def test_sigkill_loses_and_duplicates_no_candle(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    rows = ticks(30_000, seed=3, step_ms=50)  # 25 minutes of event time
    pipe = redis_sync.pipeline(transaction=False)
    for r in rows:
        pipe.xadd("ticks", r)
    pipe.execute()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(APPS),
        "STREAMMACHINE_BLOCK_MS": "200",
        "OHLC_COUNT": "20",  # small batches, many commits: the kills land mid-stream
    }
    cmd = [sys.executable, "-m", "streammachine", "run", "ohlc_app:app", "--log-format", "json"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def done() -> int:
        return sum(
            redis_sync.xlen(s) for s in ("candles_10s", "candles_1m") if redis_sync.exists(s)
        )

    want = offline(rows, [10_000, 60_000])
    kills = 3
    proc = start()
    try:
        for i in range(kills):
            # Killed at fixed points of progress, not of time: a fast machine and a slow one see
            # the same kills, and the test asserts only that no candle is lost or doubled.
            mark = len(want) * (i + 1) // (kills + 2)
            wait_sync(lambda: done() >= mark, 90, f"{mark} candles before kill {i + 1}")  # noqa: B023
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start()
        wait_sync(lambda: done() >= len(want), 90, "all candles")
        wait_sync(lambda: redis_sync.xpending("ticks", "ohlc_workers")["pending"] == 0, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    got = emitted(redis_sync, ["candles_10s", "candles_1m"])
    dups = sum(n - 1 for n in Counter(key(c) for c in got).values() if n > 1)
    print(
        f"\nticks={len(rows)} candles={len(want)} emitted={len(got)} duplicates={dups} kills={kills}"
    )
    assert dups == 0, "no candle twice"
    by_key = {key(c): c for c in got}
    assert set(by_key) == set(want), "every candle"
    wrong = [(k, by_key[k], want[k]) for k in want if by_key[k] != want[k]]
    assert not wrong, f"{len(wrong)} candles differ from the offline run, e.g. {wrong[0]}"


def test_ohlc_cli_history_emit_and_errors(redis_url: str, redis_sync: syncredis.Redis) -> None:
    import json

    rows = ticks(1200, seed=9, step_ms=100)
    for r in rows:
        redis_sync.xadd("t", r)
    env = {**os.environ, "REDIS_URL": redis_url}
    base = [sys.executable, "-m", "streammachine", "ohlc"]
    proc = subprocess.run(
        [*base, "t", "-i", "1m", "--timestamp-field", "ts", "--json", "--emit", "c"],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    printed = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    want = offline(rows, [60_000])
    assert {key(c): c for c in printed if key(c) in want} == want
    assert len(printed) == len(want) + 3, "plus the open candle of each symbol"
    assert {key(c) for c in emitted(redis_sync, ["c_1m"])} == set(want), "--emit: completed ones"
    bad = subprocess.run([*base, "t", "-i", "7x"], env=env, capture_output=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1
    missing = subprocess.run([*base, "nosuch"], env=env, capture_output=True, timeout=30)
    assert missing.returncode == 1 and b"no stream named 'nosuch'" in missing.stderr


async def test_an_upgrade_resumes_from_the_old_state_key_and_emits_no_candle_twice(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    rows = ticks(600, seed=5, step_ms=10)  # 6 s of event time
    # What an earlier version left: its candles emitted, its snapshot where it kept it (without
    # the streammachine: prefix), its group past the ticks that snapshot holds.
    ids = [redis_sync.xadd("ticks", r) for r in rows[:300]]
    earlier = FastOHLC([1000])
    for r in rows[:300]:
        earlier.update_tick(r["symbol"], float(r["price"]), float(r["volume"]), int(r["ts"]))
    for s, iv, c in earlier.flush_completed():
        redis_sync.xadd("candles_1s", format_candle_for_redis(c, s, iv))
    redis_sync.xadd(LEGACY_STATE, {"zdata": zlib.compress(earlier.snapshot())})
    redis_sync.xgroup_create("ticks", "ohlc_workers", id=ids[-1])
    app = App(name="upgrade")
    consumer = app.ohlc("ticks", intervals=[1000], timestamp_field="ts", lease_ms=500)
    async with TestApp(app, url=redis_url):
        await eventually(lambda: consumer.running, 10)
        for r in rows[300:]:
            redis_sync.xadd("ticks", r)
        # A tick for a candle the earlier version emitted: late, not a second candle.
        redis_sync.xadd("ticks", {"symbol": "AAPL", "price": "1", "volume": "1", "ts": str(T0)})
        await eventually(lambda: consumer.aggregator.tick_count == 601, 10)
        await eventually(lambda: redis_sync.xpending("ticks", "ohlc_workers")["pending"] == 0)
    got = emitted(redis_sync, ["candles_1s"])
    want = offline(rows, [1000])
    assert len(got) == len(want), "no candle twice"
    assert {key(c): c for c in got} == want
    assert consumer.aggregator.late_tick_count == 1
    assert redis_sync.xlen(STATE) == 1, "the new key from the first commit on"


async def test_a_snapshot_that_cannot_be_read_is_said_once_and_nothing_is_consumed(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_sync.xadd(STATE, {"zdata": b"not zlib"})
    app = App(name="corrupt")
    consumer = app.ohlc("ticks", intervals=[1000], timestamp_field="ts", lease_ms=500)
    said = lambda: [r for r in caplog.records if "cannot be restored" in r.getMessage()]  # noqa: E731
    async with TestApp(app, url=redis_url):
        await app.send("ticks", {"symbol": "A", "price": "1", "volume": "1", "ts": str(T0)})
        await eventually(said, 10, "the warning")
        members = keys.exclusive_members("ticks", "ohlc_workers")
        score = lambda: redis_sync.zrange(members, 0, -1, withscores=True)[0][1]  # noqa: E731
        tried = score()
        await eventually(lambda: score() > tried + 300, 10, "more rounds of taking over")
        assert not consumer.running and consumer.aggregator.tick_count == 0
        assert redis_sync.xinfo_groups("ticks")[0]["entries-read"] in (0, None), "not read"
        redis_sync.delete(STATE)  # what the warning says to do: it starts over
        await eventually(lambda: consumer.aggregator.tick_count == 1, 10)
    assert len(said()) == 1, "said once, though tried at every renewal"
    assert STATE in said()[0].getMessage()
