"""Redis Sentinel: an app on redis+sentinel:// rides a master failover, at idle and under load,
and loses nothing Redis kept, writing nothing twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import anyio
import pytest
import redis as syncredis

from streammachine import App, Message
from streammachine.testing import RedisSentinelServer, TestApp
from tests.util import eventually, start_or_skip

pytestmark = pytest.mark.anyio


@pytest.fixture
def sentinel() -> Iterator[RedisSentinelServer]:
    server = start_or_skip(RedisSentinelServer())
    yield server
    server.close()


async def test_failover_while_the_app_runs_loses_nothing(sentinel: RedisSentinelServer) -> None:
    app = App(name="failover")
    got: set[str] = set()

    @app.agent("in", group="g", block_ms=200)
    async def stage(record: Message) -> None:
        got.add(record.message["n"])
        await app.send("out", {"n": record.message["n"]})

    old_master = sentinel.master_port()
    async with TestApp(app, url=sentinel.url) as t:
        for i in range(100):
            await t.send("in", {"n": i})
        await t.run_until_idle(timeout_s=10)
        master = syncredis.Redis(host="127.0.0.1", port=old_master)
        master.execute_command("WAIT", 1, 2000)  # the replica has everything acked so far
        master.close()
        sentinel.failover()
        await eventually(lambda: sentinel.master_port() != old_master, 20, "failover")
        # Writes that reach the old master before it is demoted are lost by Redis itself (async
        # replication); the guarantee is about what was acked, so wait for the demotion.
        old = syncredis.Redis(host="127.0.0.1", port=old_master)
        await eventually(lambda: old.info("replication")["role"] == "slave", 20, "demotion")
        old.close()
        sent_after = 0
        with anyio.fail_after(30):
            while sent_after < 100:
                try:
                    await t.send("in", {"n": 100 + sent_after})
                    sent_after += 1
                except Exception:  # the old master refuses writes until clients move
                    await anyio.sleep(0.1)
        await eventually(lambda: len(got) == 200, 30, "all handled after failover")
        await t.run_until_idle(timeout_s=20)
    new_master = syncredis.Redis(host="127.0.0.1", port=sentinel.master_port())
    # Counted, not compared as sets: a send retried after an error must not write an input
    # twice (sends are idempotent), and the stage writes each output once.
    once = Counter({str(i): 1 for i in range(200)})
    inputs = Counter(f[b"n"].decode() for _, f in new_master.xrange("in"))
    assert inputs == once, "every input in the stream exactly once"
    outs = Counter(f[b"n"].decode() for _, f in new_master.xrange("out"))
    assert outs == once, "every input has exactly one output on the new master"
    assert new_master.xpending("in", "g")["pending"] == 0
    new_master.close()


async def test_a_failover_under_load_loses_nothing_replicated_and_doubles_nothing(
    sentinel: RedisSentinelServer,
) -> None:
    """A master failover while a producer writes at a steady rate and the stage consumes: every
    input the replica had (so the promoted master has it) is handled, and every input in the new
    master's stream has exactly one output. Writes Redis itself lost (the old master's, not yet
    replicated) are not counted: asynchronous replication is Redis' own limit."""
    app = App(name="failover-load")

    @app.agent("in", group="g", block_ms=100)
    async def stage(record: Message) -> None:
        await app.send("out", {"n": record.message["n"]})

    old_master = sentinel.master_port()
    replica = syncredis.Redis(host="127.0.0.1", port=sentinel.replica.port)
    sent: list[tuple[str, str]] = []  # (entry id, n) as the producer got them back
    stop = anyio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            try:
                entry_id = await app.send("in", {"n": n}, now=True)
                sent.append((str(entry_id), str(n)))
            except Exception:  # the old master refuses writes until the client moves
                await anyio.sleep(0.05)
            n += 1
            await anyio.sleep(0.002)

    def replicated() -> int:
        """How many sends the original replica holds (it becomes the master)."""
        ids = {i.decode() for i, _ in replica.xrange("in")}
        return sum(1 for entry_id, _ in sent if entry_id in ids)

    async with TestApp(app, url=sentinel.url), anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await eventually(lambda: replicated() >= 200, 30, "200 inputs on the replica")
        handled_before = syncredis.Redis(host="127.0.0.1", port=old_master).xlen("out")
        on_replica = {i.decode() for i, _ in replica.xrange("in")}
        sentinel.failover()  # while the producer writes and the stage consumes
        await eventually(lambda: sentinel.master_port() != old_master, 20, "failover")
        old = syncredis.Redis(host="127.0.0.1", port=old_master)
        await eventually(lambda: old.info("replication")["role"] == "slave", 20, "demotion")
        old.close()
        at_demotion = len(sent)
        await eventually(lambda: len(sent) >= at_demotion + 200, 30, "200 sends after")
        stop.set()
        new = syncredis.Redis(host="127.0.0.1", port=sentinel.master_port())

        def drained() -> bool:
            return new.xlen("out") >= new.xlen("in") and new.xpending("in", "g")["pending"] == 0

        await eventually(drained, 60, "every input on the new master handled")
    assert handled_before > 0, "the stage was consuming when the failover came: it bites"
    ids_on_new = {i.decode() for i, _ in new.xrange("in")}
    assert on_replica <= ids_on_new, "what the replica had survives the failover"
    after = [entry_id for entry_id, _ in sent[at_demotion:]]
    assert set(after) <= ids_on_new, "every send after the demotion is on the new master"
    inputs = Counter(f[b"n"].decode() for _, f in new.xrange("in"))
    assert max(inputs.values()) == 1, "no input written twice"
    outs = Counter(f[b"n"].decode() for _, f in new.xrange("out"))
    assert outs == Counter(dict.fromkeys(inputs, 1)), "every input on the new master: one output"
    new.close()
    replica.close()
