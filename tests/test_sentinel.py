"""Redis Sentinel: an app on redis+sentinel:// rides a master failover and loses nothing acked."""

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
