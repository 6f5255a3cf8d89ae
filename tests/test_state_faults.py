"""The stateful fault proof: a stage keeping a count and a sum per key in tables
(tests/apps/table_app.py), two real `streammachine run` workers against a real Redis, SIGKILLed
three times, one frozen past claim_idle_ms, and Redis restarted, over 4000 inputs: the tables end
exactly as the inputs imply, and every input has exactly one output. The same under one
`streammachine run --workers 2` supervisor whose child workers are SIGKILLed (and restarted by
it), and with the workers' connections going through a TCP proxy that cuts them mid-run and
drops the reply of a commit it let through.

Run it on another server with STREAMMACHINE_REDIS_SERVER=/path/to/redis-server.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import redis as syncredis

from streammachine import keys
from streammachine.consume.commit import COMMIT_SCRIPT
from streammachine.testing import RedisServer, TcpProxy
from tests.matrix import Cell, Result, Run
from tests.matrix_check import check, fence_count, holding, process_prefix

N = 4000
KEYS = 20


class TableRun(Run):
    """The matrix's processes and faults, running the stateful stage."""

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        cmd = [sys.executable, "-m", "streammachine", "run", "table_app:app"]
        cmd += ["--log-format", "json", *self.extra]
        url = self.proxies[i].url if i in self.proxies else self.url
        proc = subprocess.Popen(cmd, env=self.env(url), stdout=subprocess.DEVNULL, stderr=log)
        self.log_of[proc.pid] = log
        return proc

    #: more `streammachine run` options
    extra: tuple[str, ...] = ()


class SupervisedRun(TableRun):
    """One `streammachine run --workers 2` supervisor (`workers[0]`) and its child workers."""

    extra = ("--workers", "2")

    def children(self) -> list[int]:
        """The supervisor's live worker processes (not its throwaway probe)."""
        try:
            kids = psutil.Process(self.workers[0].pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for kid in kids:
            try:
                if "streammachine.process.worker" in kid.cmdline() and kid.status() != "zombie":
                    out.append(kid.pid)
            except psutil.NoSuchProcess:
                continue
        return out

    def ready(self) -> bool:
        alive = {m.decode() for m in self.r.zrange(keys.PROCESSES, 0, -1)}
        kids = self.children()
        return len(kids) == 2 and all(process_prefix(pid) in alive for pid in kids)


def table(r: syncredis.Redis, name: str, partitions: int) -> dict[str, int]:
    tags = [f"{{in:p{i}}}" for i in range(partitions)] if partitions else ["{in}"]
    found: dict[str, int] = {}
    for tag in tags:
        for k, v in r.hgetall(keys.table(name, tag)).items():  # type: ignore[union-attr]
            assert k.decode() not in found, "a key lives in one shard"
            found[k.decode()] = int(v)
    return found


@pytest.mark.parametrize("partitions", [0, 2], ids=["unpartitioned", "p2"])
def test_tables_are_exact_after_kills_a_freeze_and_a_redis_restart(partitions: int) -> None:
    cell = Cell("sigkill", workers=2, partitions=partitions, n=N, claim_idle_ms=1000)
    with RedisServer(appendonly=True) as server:
        syncredis.Redis.from_url(server.url).flushdb()
        run = TableRun(cell, server.url, server)
        result = Result(cell.id)
        problems: list[str] = []
        struck = 0
        try:
            expected = run.send(0, N)
            run.workers = [run.start_worker(i) for i in range(cell.workers)]
            for fraction in (0.15, 0.3, 0.45):
                run.at_fraction(N, fraction)
                struck += run.kill(run.victim())
            run.at_fraction(N, 0.55)
            run.workers[0].send_signal(signal.SIGSTOP)
            time.sleep(run.idle_s * 2.5)  # the fault itself: frozen past claim_idle_ms
            run.workers[0].send_signal(signal.SIGCONT)
            run.at_fraction(N, 0.75)
            server.restart()
            run.wait(lambda: run.outputs() >= N and run.pending() == 0, 180, "every input")
        finally:
            problems = run.stop()
        assert not problems, problems
        assert struck > 0, "no kill landed on a worker holding entries: the test did not bite"
        r = syncredis.Redis.from_url(server.url)
        check(
            result,
            syncredis.Redis.from_url(server.url),
            expected,
            {},
            run.streams(),
            Path(run.seen.name),
        )
        assert_exact(result, r, partitions)
        r.close()


def assert_exact(result: Result, r: syncredis.Redis, partitions: int) -> None:
    """Every input one output, nothing pending, and the tables exactly what the inputs imply."""
    counts, sums = table(r, "counts", partitions), table(r, "sums", partitions)
    want_counts: Counter[str] = Counter()
    want_sums: Counter[str] = Counter()
    for i in range(N):
        want_counts[f"k{i % KEYS}"] += 1
        want_sums[f"k{i % KEYS}"] += i
    print(f"\n{result.line()}")
    assert result.ok and result.outputs == N, result.line()
    assert counts == dict(want_counts), f"counts off by {sum(counts.values()) - N}"
    assert sums == dict(want_sums)


@pytest.mark.parametrize("partitions", [0, 2], ids=["unpartitioned", "p2"])
def test_tables_are_exact_when_the_supervisor_restarts_sigkilled_workers(
    partitions: int, redis_url: str
) -> None:
    """`streammachine run --workers 2`: a child worker holding entries is SIGKILLed twice; the
    supervisor starts another each time, the survivors take the dead one's entries."""
    syncredis.Redis.from_url(redis_url).flushdb()
    cell = Cell("sigkill", workers=1, partitions=partitions, n=N, claim_idle_ms=1000)
    run = SupervisedRun(cell, redis_url, None)
    result = Result(cell.id + "-supervised")
    problems: list[str] = []
    landed = restarted = taken = 0
    try:
        expected = run.send(0, N)
        run.workers = [run.start_worker(0)]
        run.wait(run.ready, 60, "both child workers running")
        for fraction in (0.25, 0.55):
            run.at_fraction(N, fraction)
            kids = run.children()
            held = [holding(run.r, run.streams(), pid) for pid in kids]
            victim = kids[held.index(max(held))]
            psutil.Process(victim).send_signal(signal.SIGKILL)
            run.wait(lambda v=victim: v not in run.children(), 10, "the child gone")
            landed += holding(run.r, run.streams(), victim) > 0  # died holding entries
            # The supervisor's bit: another child in its place, running.
            run.wait(lambda k=kids, v=victim: run.ready() and set(run.children()) - set(k),
                     30, "the supervisor's new child")  # fmt: skip
            restarted += 1
            # The kill's bit: the dead one's entries were taken (its consumers fenced).
            run.wait(lambda v=victim: fence_count(run.r, run.streams(), v) > 0, 30, "a claim")
            taken += 1
        run.wait(lambda: run.outputs() >= N and run.pending() == 0, 180, "every input")
    finally:
        problems = run.stop()
    assert not problems, problems
    assert landed == 2, f"only {landed} of 2 kills landed on a child holding entries"
    assert restarted == taken == 2
    r = syncredis.Redis.from_url(redis_url)
    check(result, r, expected, {}, run.streams(), Path(run.seen.name))
    assert_exact(result, r, partitions)
    r.close()


def test_tables_are_exact_when_connections_are_cut_and_a_commit_reply_is_lost(
    redis_url: str,
) -> None:
    """Both workers through TCP proxies: every connection of both cut twice mid-run (each cut
    must make the proxy accept new connections), and the reply of one worker's 10th commit
    dropped after Redis applied it (its counts and sums must not be applied twice)."""
    syncredis.Redis.from_url(redis_url).flushdb()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    cell = Cell("proxy_cut", workers=2, n=N, claim_idle_ms=1000)
    run = TableRun(cell, redis_url, None)
    result = Result(cell.id)
    problems: list[str] = []
    cuts = 0
    sha = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest().encode()
    try:
        run.proxies = {i: TcpProxy(port).start() for i in range(cell.workers)}
        run.proxies[1].drop_reply(sha, nth=10)
        expected = run.send(0, N)
        run.workers = [run.start_worker(i) for i in range(cell.workers)]
        run.wait(run.ready, 60, "every worker running")
        for fraction in (0.3, 0.6):
            run.at_fraction(N, fraction)
            before = [p.connections for p in run.proxies.values()]
            for proxy in run.proxies.values():
                proxy.cut()
            run.wait(lambda b=before: all(p.connections > n for p, n in zip(
                run.proxies.values(), b, strict=True)), 30, "every worker reconnected")  # fmt: skip
            cuts += 1
        run.wait(lambda: run.outputs() >= N and run.pending() == 0, 180, "every input")
        dropped = run.proxies[1].dropped
    finally:
        problems = run.stop()
    assert not problems, problems
    assert cuts == 2, "a cut did not make the workers reconnect"
    assert dropped == 1, "no commit reply was dropped: the test did not bite"
    r = syncredis.Redis.from_url(redis_url)
    check(result, r, expected, {}, run.streams(), Path(run.seen.name))
    assert_exact(result, r, 0)
    r.close()
