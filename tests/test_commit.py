"""The committer (consume/commit.py) on a real Redis: fenced commits (O(1) when nothing was
taken, per-entry when something was), a commit re-sent after a lost reply applying once, state
changes staged in the commit, the same script on memory://, handler timeouts and pausing."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
import redis as syncredis

from streammachine import App, Message, keys
from streammachine.consume.claims import CLAIM_SCRIPT
from streammachine.consume.commit import COMMIT_SCRIPT
from streammachine.consume.consumer import Consumer
from streammachine.consume.outbox import (
    CHECK,
    HDEL,
    HSET,
    STORE_DELETE,
    STORE_INCR,
    STORE_KEEP,
    STORE_SET,
    Outbox,
)
from tests.util import eventually, running


def xpending_calls(r: syncredis.Redis) -> int:
    stats: Any = r.info("commandstats")
    return int(stats.get("cmdstat_xpending", {}).get("calls", 0))


async def one_consumer(url: str, n: int, r: syncredis.Redis) -> tuple[App, Consumer, list[str]]:
    app = App(name="commit", redis_url=url)

    @app.agent("in", group="g")
    async def h(record: Message) -> None: ...

    await app.redis.connect()
    await app.agents[0].prepare()
    ids = [r.xadd("in", {"n": str(i), "b": b"\xff\x00"}).decode() for i in range(n)]
    return app, app.agents[0].consumers()[0], ids


def outbox_for(ids: list[str]) -> Outbox:
    out = Outbox()
    for i in ids:
        out.current = i
        out.xadd("out", None, ["from", i, "raw", b"\x00\xfe"])
    return out


async def test_an_unfenced_commit_does_not_read_the_pel(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 20, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    before = xpending_calls(redis_sync)
    await consumer._flush(consumer.committer.build(ids, batch, outbox_for(ids), margin=10, tag=0))
    assert xpending_calls(redis_sync) == before, "the fast path reads the fence, not the PEL"
    assert redis_sync.xlen("out") == 20
    assert redis_sync.xpending("in", "g")["pending"] == 0
    assert [f[b"raw"] for _, f in redis_sync.xrange("out")] == [b"\x00\xfe"] * 20
    await consumer.wire.close()
    await app.aclose()


async def test_a_fenced_commit_drops_the_outputs_of_entries_taken_away(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 4, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    fence = keys.fence("in", "g")
    # Another consumer claims two of the entries after a stall: the claim fences the owner.
    redis_sync.eval(CLAIM_SCRIPT, 2, "in", fence, "g", "other", 0, ids[0], ids[2])
    assert redis_sync.hget(fence, consumer.name) == b"1"
    pending = consumer.committer.build(ids, batch, outbox_for(ids), margin=10, tag=0)
    await consumer._flush(pending)
    assert sorted(f[b"from"].decode() for _, f in redis_sync.xrange("out")) == [ids[1], ids[3]]
    assert consumer.stats.dropped == 2
    assert consumer.committer.epoch == "1", "the reply told the consumer the new counter"
    owners = {p["message_id"].decode(): p["consumer"] for p in redis_sync.xpending_range("in", "g", "-", "+", 10)}  # fmt: skip
    assert owners == {ids[0]: b"other", ids[2]: b"other"}
    await consumer.wire.close()
    await app.aclose()


@pytest.mark.parametrize("whole", [False, True])
async def test_a_commit_sent_again_after_a_lost_reply_applies_once(
    redis_url: str, redis_sync: syncredis.Redis, whole: bool
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 5, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    out = outbox_for(ids)
    out.whole = whole
    pending = consumer.committer.build(ids, batch, out, margin=10, tag=0)
    assert pending is not None
    await consumer._call(pending.cmds)  # applied; pretend its reply was lost
    again = consumer.committer.again(pending)
    assert again.check
    await consumer._flush(again)
    assert redis_sync.xlen("out") == 5
    assert consumer.stats.dropped == 0, "outputs already written are not counted as dropped"
    await consumer.wire.close()
    await app.aclose()


def counting_outbox(ids: list[str]) -> Outbox:
    """Per entry: an output, and two increments of the same storage field (merged per batch)."""
    out = Outbox()
    for i in ids:
        out.current = i
        out.xadd("out", None, ["from", i])
        out.op(STORE_INCR, "counts", "k", 1)
        out.op(STORE_INCR, "counts", "k", 10)
        out.op(STORE_SET, "counts", "last", i.encode(), "")
    return out


def hincrby_calls(r: syncredis.Redis) -> int:
    stats: Any = r.info("commandstats")
    return int(stats.get("cmdstat_hincrby", {}).get("calls", 0))


async def test_an_unfenced_batch_merges_its_increments_per_key(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 6, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    pending = consumer.committer.build(ids, batch, counting_outbox(ids), margin=10, tag=0)
    assert pending is not None and pending.merged
    before = hincrby_calls(redis_sync)
    await consumer._flush(pending)
    assert hincrby_calls(redis_sync) - before == 1, "12 increments of one field: one HINCRBY"
    assert redis_sync.hget("counts", "k") == b"66"
    assert redis_sync.hget("counts", "last") == ids[-1].encode(), "the last write wins"
    assert redis_sync.xlen("out") == 6
    assert redis_sync.xpending("in", "g")["pending"] == 0
    assert consumer.again == [] and consumer.stats.dropped == 0
    await consumer.wire.close()
    await app.aclose()


async def test_a_fenced_batch_applies_none_of_its_merged_increments(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """Entries claimed by another consumer mid-batch: the merged increments (which include
    theirs) are not written at all, the lost entries' changes are counted as dropped, and the
    entries still owned are handled again (their changes come with that commit)."""
    app, consumer, ids = await one_consumer(redis_url, 4, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    fence = keys.fence("in", "g")
    redis_sync.eval(CLAIM_SCRIPT, 2, "in", fence, "g", "other", 0, ids[0], ids[2])
    pending = consumer.committer.build(ids, batch, counting_outbox(ids), margin=10, tag=0)
    assert pending is not None and pending.merged
    await consumer._flush(pending)
    assert redis_sync.hgetall("counts") == {}, "nothing of a merged batch is written"
    assert redis_sync.xlen("out") == 0
    assert consumer.stats.dropped == 2 * 4, "the lost entries' own operations"
    assert [m.key for m in consumer.again] == [ids[1], ids[3]]
    assert consumer.committer.epoch == "1"
    owners = {p["message_id"].decode(): p["consumer"] for p in redis_sync.xpending_range("in", "g", "-", "+", 10)}  # fmt: skip
    assert owners == {ids[0]: b"other", ids[1]: consumer.name.encode(), ids[2]: b"other",
                      ids[3]: consumer.name.encode()}  # fmt: skip
    # Handled again under the new counter: exactly their increments, once.
    kept = [m for m in batch if m.key in (ids[1], ids[3])]
    again = consumer.committer.build(
        [ids[1], ids[3]], kept, counting_outbox([ids[1], ids[3]]), margin=10, tag=1
    )
    assert again is not None
    await consumer._flush(again)
    assert redis_sync.hget("counts", "k") == b"22"
    assert sorted(f[b"from"].decode() for _, f in redis_sync.xrange("out")) == [ids[1], ids[3]]
    await consumer.wire.close()
    await app.aclose()


async def test_a_fence_that_took_nothing_of_the_batch_still_writes_it_merged(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 5, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    redis_sync.hincrby(keys.fence("in", "g"), consumer.name, 1)  # something else was taken
    pending = consumer.committer.build(ids[:3], batch[:3], counting_outbox(ids[:3]), margin=10, tag=0)  # fmt: skip
    assert pending is not None and pending.merged
    await consumer._flush(pending)
    assert redis_sync.hget("counts", "k") == b"33"
    assert consumer.again == [] and consumer.stats.dropped == 0
    assert redis_sync.xpending("in", "g")["pending"] == 2
    await consumer.wire.close()
    await app.aclose()


async def test_a_merged_commit_sent_again_after_a_lost_reply_applies_once(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 5, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    pending = consumer.committer.build(ids, batch, counting_outbox(ids), margin=10, tag=0)
    assert pending is not None and pending.merged
    await consumer._call(pending.cmds)  # applied; pretend its reply was lost
    again = consumer.committer.again(pending)
    assert again.check and not again.merged, "a re-sent commit is checked entry by entry"
    await consumer._flush(again)
    assert redis_sync.hget("counts", "k") == b"55"
    assert redis_sync.xlen("out") == 5
    assert consumer.stats.dropped == 0 and consumer.again == []
    await consumer.wire.close()
    await app.aclose()


async def test_merged_operations_leave_what_the_same_operations_one_by_one_leave(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """Random batches of storage writes, increments, deletes and hash writes on a few fields:
    committed merged and committed entry by entry (no merging), the state is the same."""
    rng = random.Random(7)
    app, consumer, ids = await one_consumer(redis_url, 12, redis_sync)
    committer = consumer.committer
    redis_sync.script_load(COMMIT_SCRIPT)
    folded = 0
    for round_ in range(30):
        out = Outbox()
        out.state = True
        for i in ids:
            out.current = i
            for _ in range(rng.randint(0, 3)):
                f = rng.choice("abc")
                code = rng.choice([STORE_INCR, STORE_INCR, STORE_SET, STORE_KEEP, STORE_DELETE, HSET, HDEL])  # fmt: skip
                if code == STORE_INCR:
                    out.op(code, "st", f, rng.randint(-5, 5))
                elif code == STORE_SET:
                    out.op(code, "st", f, str(rng.randint(0, 9)).encode(), rng.choice(["", 60_000]))
                elif code == STORE_KEEP:
                    out.op(code, "st", f, str(rng.randint(0, 9)).encode())
                elif code == STORE_DELETE:
                    out.op(code, "st", f)
                elif code == HSET:
                    out.op(code, "hs", f, str(rng.randint(0, 9)))
                else:
                    out.op(code, "hs", f)
        states = []
        for fold in (True, False):
            redis_sync.delete("st", "hs", *[f"st:ttl:{f}" for f in "abc"])
            redis_sync.hset("st", "a", 1)
            (cmd,), merged = committer._command(ids, out, 10, 0, False, fold=fold)
            folded += merged
            redis_sync.evalsha(*cmd[1:])  # EVALSHA sha numkeys keys... args...
            ttl = {f: redis_sync.get(f"st:ttl:{f}") for f in "abc"}
            states.append((redis_sync.hgetall("st"), redis_sync.hgetall("hs"), ttl))
        assert states[0] == states[1], f"round {round_}"
    assert folded >= 25, "most random batches have something to merge"
    await consumer.wire.close()
    await app.aclose()


async def test_a_batch_with_checks_is_committed_entry_by_entry(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """`update` checks (optimistic concurrency) keep per-entry operations: a conflict retries
    only the entries from the one that read the changed value."""
    app, consumer, ids = await one_consumer(redis_url, 4, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    out = counting_outbox(ids)
    out.current = ids[2]
    out.op(CHECK, "counts", "v", "0", b"")  # entry 2 read "v" as missing, then wrote it
    out.op(STORE_SET, "counts", "v", b"x", "")
    redis_sync.hset("counts", "v", "changed meanwhile")
    pending = consumer.committer.build(ids, batch, out, margin=10, tag=0)
    assert pending is not None and not pending.merged
    await consumer._flush(pending)
    assert redis_sync.hget("counts", "k") == b"22", "the entries before the conflict committed"
    assert [m.key for m in consumer.again] == ids[2:]
    await consumer.wire.close()
    await app.aclose()


async def test_the_outputs_of_a_batch_keep_their_order_per_stream(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """A stream's entries go in one run per shape (maxlen, field count): mixed shapes, other
    streams and state in between keep each stream's order; a fenced batch drops per entry."""
    app, consumer, ids = await one_consumer(redis_url, 6, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    redis_sync.eval(CLAIM_SCRIPT, 2, "in", keys.fence("in", "g"), "g", "other", 0, ids[4])
    out = Outbox()
    for n, i in enumerate(ids):
        out.current = i
        out.xadd("out", None, ["n", str(n)] + (["extra", "x"] if n % 3 == 1 else []))
        out.xadd("out", 100 if n % 2 else None, ["n", f"{n}b"])
        out.xadd("side", None, ["n", str(n)])
        out.op(HSET, "hs", f"f{n}", str(n))
    pending = consumer.committer.build(ids, batch, out, margin=10, tag=0)
    assert pending is not None
    await consumer._flush(pending)
    want = [x for n in (0, 1, 2, 3, 5) for x in (str(n), f"{n}b")]
    assert [f[b"n"].decode() for _, f in redis_sync.xrange("out")] == want
    assert [f[b"n"].decode() for _, f in redis_sync.xrange("side")] == ["0", "1", "2", "3", "5"]
    assert sorted(redis_sync.hkeys("hs")) == [b"f0", b"f1", b"f2", b"f3", b"f5"]
    assert consumer.stats.dropped == 4, "the taken entry's 3 outputs and 1 write"
    await consumer.wire.close()
    await app.aclose()


async def test_a_merged_increment_of_a_value_that_is_not_an_integer_writes_nothing(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app, consumer, ids = await one_consumer(redis_url, 3, redis_sync)
    consumer.committer.epoch = "0"
    batch = await consumer._exchange([consumer._read_cmd(False)])
    redis_sync.hset("counts", "k", "not a number")
    pending = consumer.committer.build(ids, batch, counting_outbox(ids), margin=10, tag=0)
    assert pending is not None and pending.merged
    await consumer._flush(pending)
    assert redis_sync.hgetall("counts") == {b"k": b"not a number"}
    assert redis_sync.xlen("out") == 0
    assert [m.key for m in consumer.again] == ids, "handled again, as with a failed check"
    await consumer.wire.close()
    await app.aclose()


async def test_the_same_script_gives_the_same_result_on_memory_and_on_redis(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """Parity: one commit script for both; the same batches (entries taken away, a whole batch,
    binary fields, a failed check) give the same streams and PEL on fakeredis and on Redis."""
    results = []
    for url in (redis_url, "memory://"):
        app = App(name="parity", redis_url=url)

        @app.agent("in", group="g")
        async def h(record: Message) -> None: ...

        await app.redis.connect()
        client = app.redis.client
        await client.flushdb()
        await app.agents[0].prepare()
        ids = [(await client.xadd("in", {"n": str(i)})).decode() for i in range(6)]
        consumer = app.agents[0].consumers()[0]
        consumer.committer.epoch = "0"
        batch = await consumer._exchange([consumer._read_cmd(False)])
        fence = keys.fence("in", "g")
        await client.eval(CLAIM_SCRIPT, 2, "in", fence, "g", "other", 0, ids[1])
        await client.hset(keys.storage("default"), "k", b"2")
        out = outbox_for(ids[:3])
        out.current = ids[3]
        out.op("c", keys.storage("default"), "k", "1", b"1")  # a check that fails
        out.current = ids[4]
        out.xadd("out", None, ["from", ids[4]])
        pending = consumer.committer.build(ids[:5], batch, out, margin=10, tag=0)
        await consumer._flush(pending)
        outs = [f[b"from"].decode() for _, f in await client.xrange("out")]
        pel = {p["message_id"].decode(): p["consumer"].decode() for p in await client.xpending_range("in", "g", "-", "+", 10)}  # fmt: skip
        again = [m.key for m in consumer.again]
        results.append(
            (
                [ids.index(o) for o in outs],
                {ids.index(k): v != "other" for k, v in pel.items()},
                [ids.index(a or "") for a in again],
            )
        )
        await consumer.wire.close()
        await app.aclose()
    assert results[0] == results[1]
    # ids 0 and 2 written; 1 taken away; 3's check failed, so 3 and 4 are handled again.
    assert results[0] == ([0, 2], {1: False, 3: True, 4: True, 5: True}, [3, 4])


async def test_storage_changes_in_a_handler_ride_in_the_commit(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="stateful", redis_url=redis_url, storage_namespace="st")
    seen: list[Any] = []
    gate = anyio.Event()

    @app.agent("in", group="g", count=10, max_deliveries=0, retry_backoff_ms=10)
    async def count(record: Message) -> None:
        n = int(record.message["n"])
        if n == 3 and record.deliveries == 1:
            await app.storage.incr("count")
            raise ValueError("the first delivery of 3 fails: its increment must vanish")
        value = await app.storage.incr("count")
        await app.storage.incr("sum", n)
        seen.append((n, value, await app.storage.read("count")))
        if n == 0:
            await gate.wait()  # the batch is held: nothing of it reaches Redis yet

    hkey = keys.storage("st")
    async with running(app):
        for i in range(6):
            redis_sync.xadd("in", {"n": str(i)})
        await eventually(lambda: seen, what="the first handler")
        assert redis_sync.hget(hkey, "count") is None, "nothing is written before the commit"
        gate.set()
        await eventually(lambda: redis_sync.xpending("in", "g")["pending"] == 0 and len(seen) == 6)
    assert redis_sync.hget(hkey, "count") == b"6"
    assert redis_sync.hget(hkey, "sum") == b"15"
    # read-your-writes: each handler saw the count with its own increment
    assert all(value == read for _, value, read in seen)


async def test_update_in_a_handler_loses_no_update_when_two_consumers_race(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="race", redis_url=redis_url, storage_namespace="race")

    @app.agent("in", group="g", concurrency=4, count=5)
    async def add(record: Message) -> None:
        await app.storage.update("total", lambda v: v + 1, default=0)
        await app.storage.update("items", lambda v: [*v, record.message["n"]], default=[])
        await anyio.sleep(0.001)  # let the consumers interleave

    async with running(app):
        for i in range(200):
            redis_sync.xadd("in", {"n": str(i)})
        await eventually(
            lambda: (
                redis_sync.hget(keys.storage("race"), "total") == b"200"
                and redis_sync.xpending("in", "g")["pending"] == 0
            ),
            timeout_s=30,
        )
        total = await app.storage.read("total")
        items = await app.storage.read("items")
    assert total == 200
    assert sorted(items, key=int) == [str(i) for i in range(200)]


async def test_a_handler_past_its_timeout_is_cancelled_retried_and_dead_lettered(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="hang", redis_url=redis_url)
    calls: list[str] = []

    @app.agent("in", group="g", timeout_s=0.3, max_deliveries=2, retry_backoff_ms=10)
    async def hang(record: Message) -> None:
        calls.append(record.message["n"])
        if record.message["n"] == "stuck":
            await anyio.sleep(3600)  # a network call with no timeout of its own
        await app.send("out", {"n": record.message["n"]})

    async with running(app):
        redis_sync.xadd("in", {"n": "stuck"})
        redis_sync.xadd("in", {"n": "fine"})
        await eventually(lambda: redis_sync.xlen("in:dead") == 1, timeout_s=20)
        await eventually(lambda: redis_sync.xlen("out") == 1)
    assert calls.count("stuck") == 2
    dead = redis_sync.xrange("in:dead")[0][1]
    assert dead[b"error_type"] == b"HandlerTimeout"
    assert b"timeout_s=0.3" in dead[b"error"]
    assert app.agents[0].stats.timed_out == 2


async def test_a_paused_agent_stops_reading_and_resumes(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="pausable", redis_url=redis_url)
    got: list[str] = []

    @app.agent("in", group="g")
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    async with running(app):
        redis_sync.xadd("in", {"n": "1"})
        await eventually(lambda: got == ["1"])
        redis_sync.sadd(keys.paused("pausable"), "h")
        await eventually(lambda: app.agents[0].paused, what="the pause")
        redis_sync.xadd("in", {"n": "2"})
        with anyio.move_on_after(1.5):
            await eventually(lambda: len(got) > 1, timeout_s=2)
        assert got == ["1"], "nothing is read while paused"
        assert app.snapshot().agents[0].paused
        redis_sync.srem(keys.paused("pausable"), "h")
        await eventually(lambda: got == ["1", "2"], what="the resume")
