"""Keyed partitions with one owner each (DESIGN.md "partitions"): every key's entries handled in
order across processes, a SIGKILLed owner's partitions taken over in order, a joining process
taking partitions without reordering, and never two owners of one partition at a time — on one
node and on a 3-master cluster, with real `streammachine run` processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine import keys
from streammachine.testing import RedisClusterServer, free_port
from tests.util import start_or_skip, wait_sync

APPS = Path(__file__).parent / "apps"
K, KEYS, PER_KEY = 4, 8, 250


@pytest.fixture(params=["node", "cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    if request.param == "node":
        url = request.getfixturevalue("redis_url")
        client = syncredis.Redis.from_url(url)
        yield url, client
        client.close()
        return
    cluster = start_or_skip(RedisClusterServer())
    client = SyncCluster(host="127.0.0.1", port=cluster.servers[0].port)
    try:
        yield cluster.url, client
    finally:
        client.close()
        cluster.close()


def _start(url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(APPS)}
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", "run", "keyed_app:app", "--log-format", "json",
         *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _send_all(r: Any, seqs: range = range(PER_KEY)) -> None:
    pipe = r.pipeline(transaction=False)
    for seq in seqs:  # interleaved keys, each key's entries in order
        for k in range(KEYS):
            key = f"k{k}"
            stream = f"ticks:p{zlib.crc32(key.encode()) % K}"  # App.route's choice
            pipe.xadd(stream, {"key": key, "seq": str(seq)})
    pipe.execute()


def _outputs(r: Any) -> list[tuple[int, dict[bytes, bytes]]]:
    out = []
    for p in range(K):
        out += [(p, f) for _, f in r.xrange(f"{{ticks:p{p}}}:out")]
    return out


def _count(r: Any) -> int:
    return sum(r.xlen(f"{{ticks:p{p}}}:out") for p in range(K))


class LeaseSampler:
    """Reads every partition's lease every 20 ms in a thread, remembering the owners seen."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.samples: list[list[bytes | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with_owner = [self.r.get(keys.partition_lease("ticks", "keyed", i)) for i in range(K)]
            self.samples.append(with_owner)
            time.sleep(0.02)

    def __enter__(self) -> LeaseSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def _check(r: Any, pids: set[int]) -> None:
    """Every key's outputs exactly once and in order; per partition, one handling process at a
    time (the runs of one pid never overlap another's in time)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    by_partition: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for p, f in _outputs(r):
        by_key[f[b"key"].decode()].append(int(f[b"seq"]))
        by_partition[p].append((float(f[b"t"]), int(f[b"pid"])))
    assert len(by_key) == KEYS
    for key, seqs in by_key.items():
        assert seqs == list(range(PER_KEY)), f"{key}: outputs out of order or not exactly once"
    for p, handled in by_partition.items():
        assert {pid for _, pid in handled} <= pids
        runs: list[tuple[int, float, float]] = []  # (pid, first, last) in output order
        for t, pid in handled:
            if runs and runs[-1][0] == pid:
                runs[-1] = (pid, runs[-1][1], t)
            else:
                runs.append((pid, t, t))
        for (_, _, end), (_, start, _) in itertools.pairwise(runs):
            assert start >= end, f"partition {p}: two processes handled it at once"


def test_per_key_order_across_processes_kill_and_join(target: tuple[str, Any]) -> None:
    url, r = target
    half = PER_KEY // 2
    _send_all(r, range(half))
    a, b = _start(url), _start(url)
    procs = [a, b]
    try:
        with LeaseSampler(r) as sampler:
            wait_sync(lambda: _count(r) >= KEYS * half * 0.4, 120, "40 % of the first half")
            a.send_signal(signal.SIGKILL)  # an owner dies mid-stream: b takes its partitions
            a.wait()
            c = _start(url)  # a process joins: partitions move to it cooperatively
            procs.append(c)
            wait_sync(
                lambda: any(f"-{c.pid}-" in (v or b"").decode() for v in sampler.samples[-1]),
                60,
                "the new process owning a partition",
            )
            _send_all(r, range(half, PER_KEY))
            wait_sync(lambda: _count(r) >= KEYS * PER_KEY, 120, "everything handled")
        pending = sum(r.xpending(f"ticks:p{i}", "keyed")["pending"] for i in range(K))
        assert pending == 0
        assert len(sampler.samples) > 10
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    handled_by = {int(f[b"pid"]) for _, f in _outputs(r)}
    assert c.pid in handled_by, "the process that joined handled entries"
    _check(r, {a.pid, b.pid, c.pid})


def _metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return None


def _owners(url: str) -> dict[str, str]:
    """stream → owner, as `streammachine streams --json` shows them."""
    proc = subprocess.run(
        [sys.executable, "-m", "streammachine", "streams", "ticks:p*", "--json", "--redis-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = {}
    for line in proc.stdout.splitlines():
        info = json.loads(line)
        for g in info["groups"]:
            if g["name"] == "keyed" and g.get("owner"):
                out[info["stream"]] = g["owner"]
    return out


def test_two_workers_of_one_run_share_the_partitions_in_order(redis_url: str) -> None:
    r = syncredis.Redis.from_url(redis_url)
    _send_all(r, range(10))
    port = free_port()
    proc = _start(redis_url, "--workers", "2", "--dashboard", "--dashboard-port", str(port))
    try:
        # Balanced once both workers are members: each owns 2 of the 4.
        def balanced() -> dict[str, str] | None:
            o = _owners(redis_url)
            return o if sorted(Counter(o.values()).values()) == [2, 2] else None

        owners = wait_sync(balanced, 60, "2 partitions per worker in `streams`")
        metrics = wait_sync(lambda: _metrics(port), 30, "the dashboard's /metrics")
        for stream, owner in owners.items():
            line = (
                f'streammachine_partition_owner_info{{group="keyed",owner="{owner}",'
                f'stream="{stream}"}} 1.0'
            )
            assert line in metrics, line
        _send_all(r, range(10, PER_KEY))
        wait_sync(lambda: _count(r) >= KEYS * PER_KEY, 120, "everything handled")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    pids = {int(f[b"pid"]) for _, f in _outputs(r)}
    assert len(pids) == 2, "both workers owned partitions"
    _check(r, pids)
    r.close()
