"""The stateful fault proof: a stage keeping a count and a sum per key in tables
(tests/apps/table_app.py), two real `streammachine run` workers against a real Redis, SIGKILLed
three times, one frozen past claim_idle_ms, and Redis restarted, over 4000 inputs: the tables end
exactly as the inputs imply, and every input has exactly one output.

Run it on another server with STREAMMACHINE_REDIS_SERVER=/path/to/redis-server.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import redis as syncredis

from streammachine import keys
from streammachine.testing import RedisServer
from tests.matrix import Cell, Result, Run
from tests.matrix_check import check

N = 4000
KEYS = 20


class TableRun(Run):
    """The matrix's processes and faults, running the stateful stage."""

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        cmd = [sys.executable, "-m", "streammachine", "run", "table_app:app"]
        cmd += ["--log-format", "json"]
        proc = subprocess.Popen(cmd, env=self.env(self.url), stdout=subprocess.DEVNULL, stderr=log)
        self.log_of[proc.pid] = log
        return proc


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
        counts, sums = table(r, "counts", partitions), table(r, "sums", partitions)
        r.close()
    want_counts: Counter[str] = Counter()
    want_sums: Counter[str] = Counter()
    for i in range(N):
        want_counts[f"k{i % KEYS}"] += 1
        want_sums[f"k{i % KEYS}"] += i
    print(f"\n{result.line()}")
    assert result.ok and result.outputs == N, result.line()
    assert counts == dict(want_counts), f"counts off by {sum(counts.values()) - N}"
    assert sums == dict(want_sums)
