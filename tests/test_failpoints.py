"""Faults aimed at the windows that matter (issue 28), each in a real `streammachine run` stage of
2 workers (tests/apps/matrix_app.py) checked by the fault matrix's exact per-input invariant
(lost 0, duplicated 0, nothing pending, no dead letter), with proof that the fault bit:

- a worker SIGKILLed right after Redis applied its commit, before it acted on the reply;
- the reply of the 3rd commit dropped on the wire by `TcpProxy.drop_reply` (the commit applied,
  the connection cut): the consumer's checked re-send must write nothing twice;
- a worker that stalls (the whole process) right after claiming a dead worker's entries, long
  enough to be taken for dead itself: its late commit must be fenced off;
- Redis SIGKILLed (`appendfsync always`) while a backlog is in flight, restarted on its port;
- on a Cluster, the delayed-entry mover SIGKILLed between its claim and its XADD.

Failpoints are armed through the environment (`streammachine.testing.failpoints_env`); each
leaves a file naming the process it fired in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine import RedisConnection, keys
from streammachine.consume.commit import COMMIT_SCRIPT
from streammachine.schedule import Scheduler
from streammachine.testing import RedisClusterServer, RedisServer, TcpProxy, failpoints_env
from tests.matrix import Cell, Result, Run
from tests.matrix_check import check
from tests.util import start_or_skip, wait_sync

#: A stage's cell: 2 workers, claim_idle_ms 1 s (the matrix's short-form settings).
CELL = Cell("failpoint", n=1000)


class Armed(Run):
    """A matrix run whose workers get `extra` in their environment (failpoints)."""

    exits_expected = True

    def __init__(self, url: str, extra: dict[str, str], server: RedisServer | None = None) -> None:
        super().__init__(CELL, url, server)
        self.extra = extra
        #: The workers' logs, kept when they stop.
        self.logtext = ""
        self.dead: object = None

    def env(self, url: str) -> dict[str, str]:
        # with a proxy, every worker goes through it (the matrix sends only worker 0)
        return {**super().env(self.proxy.url if self.proxy else url), **self.extra}

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait(timeout=60)  # a stalled worker drains when it wakes
        self.logtext = self.log_text()
        super().stop()

    def last(self, n: int = 30) -> str:
        """The last `n` lines the workers logged (after the run too), for failure messages."""
        return "\n".join(self.logtext.splitlines()[-n:])

    def log_text(self) -> str:
        text = ""
        for log in self.logs:
            log.seek(0)
            text += log.read().decode("utf-8", "replace")
        return text


def run_stage(
    url: str,
    extra: dict[str, str],
    fault: Callable[[Armed], None],
    *,
    server: RedisServer | None = None,
    proxy: TcpProxy | None = None,
) -> tuple[Result, Armed, list[int | None]]:
    """Send the inputs, start 2 workers, inflict `fault`, wait until every input is handled,
    stop the workers (SIGTERM) and check the invariant; returns the workers' exit codes too."""
    syncredis.Redis.from_url(url).flushdb()
    run = Armed(url, extra, server)
    run.proxy = proxy
    result = Result(CELL.id)
    expected = run.send(0, CELL.n)
    try:
        run.workers = [run.start_worker(i) for i in range(CELL.workers)]
        # Both running before any fault and before the stop: a worker still importing dies of
        # SIGTERM (-15), and one that cannot reach Redis at start exits 1, by design.
        run.wait(lambda: run.log_text().count("matrix running") >= 2, 60, "both workers up")
        fault(run)
        run.wait(
            lambda: run.outputs() >= len(expected) and run.pending() == 0,
            180,
            "every input handled",
        )
    finally:
        run.stop()
    codes = [w.returncode for w in run.workers]
    check(result, syncredis.Redis.from_url(url), expected, {}, run.streams(), Path(run.seen.name))
    return result, run, codes


def assert_exact(result: Result, run: Armed) -> None:
    assert (result.lost, result.duplicated, result.pending, result.dead, result.bad_bytes) == (
        0, 0, 0, 0, 0,
    ), f"{result.line()} {result.notes}\n{run.last()}"  # fmt: skip
    assert result.sent == CELL.n


def fired(proof: Path, name: str) -> int:
    """The pid the failpoint `name` fired in (its proof file), or fail."""
    path = proof / name
    assert path.exists(), f"the failpoint {name} never fired: the test did not bite"
    return int(path.read_text())


def at(run: Armed, fraction: float) -> None:
    run.wait(lambda: run.outputs() >= CELL.n * fraction, 120, f"{fraction:.0%} of the outputs")


@pytest.fixture
def proof(tmp_path: Path) -> Path:
    d = tmp_path / "failpoints"
    d.mkdir()
    return d


def test_kill_after_the_commit_is_applied_before_its_reply_is_read(
    redis_url: str, proof: Path
) -> None:
    env = failpoints_env({"commit.applied": "kill@5"}, str(proof))
    result, run, codes = run_stage(redis_url, env, lambda run: None)
    pid = fired(proof, "commit.applied")
    killed = [w for w in run.workers if w.pid == pid]
    assert killed and killed[0].returncode == -signal.SIGKILL, codes
    assert_exact(result, run)
    # the killed worker's entries (read with the applied commit's reply) were claimed
    assert "claimed" in run.logtext, run.last()  # type: ignore[attr-defined]
    assert sorted(c or 0 for c in codes) == [-signal.SIGKILL, 0], codes


def test_the_eighth_commits_reply_dropped_on_the_wire(redis_url: str, proof: Path) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    sha = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest().encode()
    with TcpProxy(port) as proxy:
        proxy.drop_reply(sha, nth=8)
        result, run, codes = run_stage(redis_url, {}, lambda run: None, proxy=proxy)
        assert proxy.seen >= 8, "fewer than 8 commits went through the proxy"
        assert proxy.dropped == 1, "the commit's reply was never dropped: the test did not bite"
        assert proxy.connections >= 2, "the worker never reconnected after the cut"
    assert_exact(result, run)
    assert codes == [0, 0], f"{codes}\n{run.last()}"


def test_a_worker_stalls_during_a_claim_and_is_taken_for_dead(redis_url: str, proof: Path) -> None:
    """A worker is killed holding entries (the kill failpoint) and restarted; whichever worker
    claims its entries first stalls 20 s (past its heartbeat's life); the other must take the
    stalled one's entries, and the stalled one's late commit must write nothing of them."""
    env = failpoints_env({"commit.applied": "kill@3", "claim.taken": "stall:20000"}, str(proof))

    def fault(run: Armed) -> None:
        def killed() -> bool:
            return any(w.poll() == -signal.SIGKILL for w in run.workers)

        run.wait(killed, 60, "the kill failpoint")
        i = next(i for i, w in enumerate(run.workers) if w.poll() is not None)
        run.dead = run.workers[i]
        run.workers[i] = run.start_worker(i)

    result, run, codes = run_stage(redis_url, env, fault)
    fired(proof, "commit.applied")
    stalled = fired(proof, "claim.taken")
    assert_exact(result, run)
    text = run.logtext
    # the stalled worker woke with entries taken from it: their outputs were dropped, not doubled
    assert "another consumer took" in text, "\n".join(
        line for line in text.splitlines() if "claim" in line or "failpoint" in line
    )
    assert stalled in {w.pid for w in run.workers}
    assert codes == [0, 0], f"{codes}\n{run.last()}"


@pytest.fixture
def crashable() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    server.extra_args = ["--appendfsync", "always"]
    yield start_or_skip(server)
    server.close()


def test_redis_sigkilled_with_a_backlog_in_flight(crashable: RedisServer) -> None:
    """SIGKILL of redis-server (AOF, fsync always) mid-stream, restarted on the same port: every
    write Redis acknowledged survives, and the stage stays exactly-once."""
    seen: dict[str, int] = {}

    def fault(run: Armed) -> None:
        at(run, 0.3)
        seen["before"] = run.outputs()
        crashable.kill()
        time.sleep(0.2)  # the fault itself: Redis is down a moment, the workers' calls fail
        crashable.start()
        seen["after"] = run.outputs()

    result, run, codes = run_stage(crashable.url, {}, fault, server=crashable)
    assert seen["after"] >= seen["before"] > 0, seen  # what Redis acknowledged survived
    assert seen["after"] < CELL.n, "the backlog was done before the crash: the test did not bite"
    assert_exact(result, run)
    assert codes == [0, 0], f"{codes}\n{run.last()}"


MOVER_APP = """
from streammachine import App, Message

app = App(name="movers")


@app.agent("idle", group="g")
async def idle(record: Message) -> None: ...
"""


def test_the_mover_killed_between_its_claim_and_its_xadd(
    cluster: RedisClusterServer, rc: SyncCluster, tmp_path: Path, proof: Path
) -> None:
    """On a Cluster the mover claims due entries into an in-flight set, then appends them: a
    process killed in between leaves them there, and after the in-flight deadline another
    process's mover appends each exactly once (nothing was appended before the kill)."""
    (tmp_path / "movers.py").write_text(MOVER_APP)
    env = {
        **os.environ,
        "REDIS_URL": cluster.url,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent.parent)]),
        **failpoints_env({"mover.claimed": "kill@1"}, str(proof)),
    }
    streams = [f"out{i}" for i in range(6)]  # in several slots

    async def schedule() -> None:
        conn = RedisConnection(url=cluster.url)
        sched = Scheduler(conn, "default")
        due = int(time.time() * 1000) + 3000  # after both processes are up
        for n in range(60):
            await sched.schedule(streams[n % 6], {"n": str(n)}, due)
        await conn.close()

    anyio.run(schedule)
    cmd = [sys.executable, "-m", "streammachine", "run", "movers:app", "--log-format", "json"]
    logs = [tempfile.TemporaryFile() for _ in range(2)]  # noqa: SIM115 - closed below
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=f) for f in logs]
    try:

        def appended() -> int:
            return sum(int(rc.xlen(s)) for s in streams)

        wait_sync(lambda: any(p.poll() is not None for p in procs), 60, "the mover's kill")
        assert appended() == 0, "killed before its XADD: nothing appended yet"
        # the in-flight deadline (30 s), then the survivor's mover hands them out again
        wait_sync(lambda: appended() >= 60, 120, "every delayed entry appended")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
        text = ""
        for f in logs:
            f.seek(0)
            text += f.read().decode("utf-8", "replace")
            f.close()
    pid = fired(proof, "mover.claimed")
    assert sorted(codes) == [-signal.SIGKILL, 0], f"{codes}\n{text[-3000:]}"
    assert [p.returncode for p in procs if p.pid == pid] == [-signal.SIGKILL]
    seen = Counter(f[b"n"].decode() for s in streams for _, f in rc.xrange(s))
    assert seen == Counter({str(n): 1 for n in range(60)}), "each delayed entry exactly once"
    assert rc.zcard(keys.scheduled("default")) == 0
    assert rc.zcard(f"{keys.scheduled('default')}:inflight") == 0
