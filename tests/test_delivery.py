"""The liveness and ownership rules of the delivery core, one regression test each (DESIGN.md
"delivery", "consumer names and liveness"), on a real Redis and, where it applies, memory://."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import Counter

import anyio
import pytest
import redis as syncredis

from streammachine import App, Message, Retry
from streammachine.consume.deadletter import DEAD_LETTER_FIELDS, split_dead
from streammachine.consume.upkeep import TOUCH_SCRIPT
from streammachine.settings import ConsumerConfig
from streammachine.testing import TestApp
from tests.util import eventually


def _consumers(r: syncredis.Redis, stream: str, group: str) -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in r.xinfo_consumers(stream, group)}


async def test_a_quiet_spell_deletes_no_live_consumer_and_loses_nothing(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """On Redis <= 7.0 a blocked read does not refresh XINFO idle: live consumers look idle after
    a quiet spell. Only a consumer whose process has no heartbeat may be deleted."""
    app = App(name="quiet")
    got: Counter[str] = Counter()

    @app.agent("s", group="g", concurrency=2, claim_idle_ms=300, block_ms=100)
    async def h(record: Message) -> None:
        got[record.message["n"]] += 1
        await app.send("out", {"n": record.message["n"]})

    redis_sync.xgroup_create("s", "g", id="0", mkstream=True)
    # A consumer of a process that is gone (no heartbeat) and owns nothing: it is removed.
    redis_sync.xgroup_createconsumer("s", "g", "gonehost-1-h-0")
    async with TestApp(app, url=redis_url) as t:
        await eventually(
            lambda: "gonehost-1-h-0" not in _consumers(redis_sync, "s", "g"), what="removal"
        )
        mine = set(_consumers(redis_sync, "s", "g"))
        await anyio.sleep(1.5)  # the quiet spell itself, five times claim_idle_ms
        assert set(_consumers(redis_sync, "s", "g")) == mine, "live consumers are kept"
        for i in range(400):
            await t.send("s", {"n": i})
        await t.run_until_idle(timeout_s=20)
    assert len(got) == 400 and max(got.values()) == 1
    assert redis_sync.xlen("out") == 400
    assert redis_sync.xpending("s", "g")["pending"] == 0


async def test_a_dead_consumer_that_owns_entries_is_kept_until_they_are_claimed(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xgroup_create("s", "g", id="0", mkstream=True)
    ids = [redis_sync.xadd("s", {"n": str(i)}) for i in range(5)]
    redis_sync.xreadgroup("g", "gonehost-2-h-0", {"s": ">"}, count=5)
    app = App(name="keep")
    got: list[str] = []
    deliveries: list[int] = []

    @app.agent("s", group="g", claim_idle_ms=300, claim_interval_ms=100, block_ms=100)
    async def h(record: Message) -> None:
        got.append(record.message["n"])
        deliveries.append(record.deliveries)

    async with TestApp(app, url=redis_url):
        await eventually(lambda: len(got) == 5, what="the dead consumer's entries claimed")
        await eventually(lambda: "gonehost-2-h-0" not in _consumers(redis_sync, "s", "g"))
    assert sorted(got) == [str(i) for i in range(5)]
    assert redis_sync.xpending("s", "g")["pending"] == 0
    # claimed from the dead consumer (its second delivery), not lost with it nor read afresh
    assert deliveries == [2] * 5 and len(ids) == 5


@pytest.mark.parametrize("where", ["redis", "memory"])
async def test_batches_slower_than_claim_idle_are_handled_once(
    where: str, request: pytest.FixtureRequest
) -> None:
    """A consumer never claims its own (prefetched) entries; another consumer may claim them
    while the handler blocks the loop, and then the ownership-checked commit keeps one output."""
    url = request.getfixturevalue("redis_url") if where == "redis" else "memory://"
    app = App(name=f"slow-{where}")
    handled: Counter[str] = Counter()
    deliveries: list[int] = []

    @app.agent("s", group="g", concurrency=2, count=5, claim_idle_ms=300, block_ms=50)
    async def h(record: Message) -> None:
        handled[record.message["n"]] += 1
        deliveries.append(record.deliveries)
        time.sleep(0.1)  # noqa: ASYNC251 - blocks the loop like CPU work: 5 per batch > 300 ms
        await app.send("out", {"n": record.message["n"]})

    async with TestApp(app, url=url) as t:
        for i in range(40):
            await t.send("s", {"n": i})
        await t.run_until_idle(timeout_s=60)
        outs = Counter(m.message["n"] for m in await t.stream("out"))
        pending = (await app.redis.client.xpending("s", "g"))["pending"]
    assert set(outs) == {str(i) for i in range(40)}
    assert max(outs.values()) == 1, "one output per input"
    assert pending == 0
    # one live process: its consumers never take each other's entries, however slow the batch
    assert max(deliveries) == 1 and max(handled.values()) == 1, (deliveries, handled)


async def test_keepalive_refreshes_only_entries_it_still_owns(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xgroup_create("s", "g", id="0", mkstream=True)
    ids = [redis_sync.xadd("s", {"n": str(i)}) for i in range(2)]
    redis_sync.xreadgroup("g", "a", {"s": ">"}, count=2)
    redis_sync.xclaim("s", "g", "b", 0, [ids[0]])
    await anyio.sleep(0.05)  # both entries idle past the 10 ms the script is given
    touched = redis_sync.eval(TOUCH_SCRIPT, 1, "s", "g", "a", 10, 100)
    owners = {
        p["message_id"]: p["consumer"] for p in redis_sync.xpending_range("s", "g", "-", "+", 10)
    }
    assert touched == 1
    assert owners == {ids[0]: b"b", ids[1]: b"a"}, "b keeps the entry it claimed"


async def test_deliveries_count_up_across_retries_and_dead_lettering(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="count")
    seen: list[int] = []

    @app.agent("s", group="g", max_deliveries=3, retry_backoff_ms=10)
    async def h(record: Message) -> None:
        seen.append(record.deliveries)
        if record.deliveries == 2:
            raise Retry(0.01)
        raise ValueError("always")

    async with TestApp(app, url=redis_url) as t:
        await t.send("s", {"n": "1"})
        await t.run_until_idle(timeout_s=10)
        dead = await t.dead_letters("s")
    assert seen == [1, 2, 3]
    assert [d.message["deliveries"] for d in dead] == ["3"]


async def test_dead_letters_keep_binary_bytes_and_replay_restores_them(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="binary")
    fail = {"on": True}

    @app.agent("s", group="g", max_deliveries=1)
    async def h(record: Message) -> None:
        if fail["on"]:
            raise ValueError("not yet")

    payload = [b"data", b"\xff\x00\x80\xfe", b"error", b"a field of the user's", b"\xc3", b""]
    async with TestApp(app, url=redis_url) as t:
        redis_sync.execute_command("XADD", "s", "*", *payload)
        await t.run_until_idle(timeout_s=10)
        (raw,) = redis_sync.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, "s:dead")
        original, meta = split_dead(list(raw[1]))
        assert original == payload, "the dead letter keeps every byte, in order"
        assert set(meta) == set(DEAD_LETTER_FIELDS) and meta["error"] == b"not yet"
        fail["on"] = False
        proc = subprocess.run(  # noqa: ASYNC221 - the real CLI, while the app keeps running
            [sys.executable, "-m", "streammachine", "dead", "replay", "s", "--all",
             "--redis-url", redis_url],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        await t.run_until_idle(timeout_s=10)
    replayed = redis_sync.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, "s")
    assert [list(f) for _, f in replayed] == [payload, payload], "replayed byte for byte"
    assert redis_sync.xlen("s:dead") == 0


async def test_every_partition_is_tidied_and_trimmed(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="parts")
    n = {"done": 0}

    @app.agent("t", group="g", partitions=2, trim="acked", claim_interval_ms=100)
    async def h(record: Message) -> None:
        n["done"] += 1

    async with TestApp(app, url=redis_url) as t:
        for i in range(400):
            await app.send("t", {"n": i}, key=str(i))
        await t.run_until_idle(timeout_s=20)
        await eventually(
            lambda: all(redis_sync.xlen(f"t:p{i}") < 150 for i in range(2)), what="both trimmed"
        )
    assert n["done"] == 400


def test_block_ms_not_below_claim_idle_ms_is_adjusted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="streammachine.settings"):
        cfg = ConsumerConfig(stream="s", block_ms=5000, claim_idle_ms=2000)
    assert cfg.block_ms == 1000
    assert "block_ms 5000 is not below claim_idle_ms 2000" in caplog.text
