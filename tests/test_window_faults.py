"""Window fault proofs (issue #25): a partitioned window agent (tests/apps/window_fault_app.py) in
real `streammachine run` processes, faults that must land, and closed windows that must equal a
pandas reference computed from the inputs alone, each emitted exactly once, with the late
entries counted and kept in `<partition>:late`.

- On one Redis: partitions=2, two workers, SIGKILLed twice (each kill lands on a worker holding
  entries) and one frozen past its lease until another process took entries from it.
- On the 3-master Redis Cluster: the same stage over `{trades}` (its partitions, late streams,
  window hashes and output share one slot, as docs/windows.md asks), one SIGKILL that lands.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import zlib
from typing import Any

import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine import keys
from streammachine.testing import RedisClusterServer
from tests.matrix import Cell, Run
from tests.matrix_check import fence_count
from tests.windows_reference import SENTINEL, inputs, parse_bars, reference, same

LEASE_MS = 1500
ROWS = 3000


class WindowRun(Run):
    """The fault matrix's processes and waits, running the partitioned window stage."""

    def __init__(self, cell: Cell, url: str, *, stream: str, to: str, kind: str,
                 cluster_port: int | None = None) -> None:  # fmt: skip
        node = url if cluster_port is None else f"redis://127.0.0.1:{cluster_port}"
        super().__init__(cell, node, None)
        self.url = url  # the workers'
        if cluster_port is not None:  # a cluster: a client of every node
            self.r.close()
            self.r = SyncCluster(host="127.0.0.1", port=cluster_port)
        self.stream, self.to, self.kind = stream, to, kind

    def env(self, url: str) -> dict[str, str]:
        return {
            **super().env(url),
            "WIN_STREAM": self.stream, "WIN_TO": self.to, "WIN_KIND": self.kind,
            "WIN_PARTITIONS": str(self.cell.partitions), "WIN_COUNT": "20",
            "WIN_DELAY_S": "0.001", "WIN_LEASE_MS": str(LEASE_MS),
        }  # fmt: skip

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        cmd = [sys.executable, "-m", "streammachine", "run", "window_fault_app:app"]
        cmd += ["--log-format", "json"]
        proc = subprocess.Popen(cmd, env=self.env(self.url), stdout=subprocess.DEVNULL, stderr=log)
        self.log_of[proc.pid] = log
        return proc

    def streams(self) -> list[str]:
        return [keys.partition(self.stream, i) for i in range(self.cell.partitions)]

    def outputs(self) -> int:
        return int(self.r.xlen(self.to)) if self.r.exists(self.to) else 0

    def dead_count(self) -> int:
        return 0

    def pending(self) -> int:
        total = 0
        for s in self.streams():
            try:
                total += int(self.r.xpending(s, "stage")["pending"])
            except syncredis.ResponseError:
                return 1  # no group yet
        return total

    def handled(self) -> bool:
        """Every entry of every partition delivered to and acked by the group."""
        for s in self.streams():
            try:
                [group] = self.r.xinfo_groups(s)
            except (syncredis.ResponseError, ValueError):
                return False
            last = self.r.xrevrange(s, count=1)
            if not last or group["last-delivered-id"] != last[0][0] or group["pending"]:
                return False
        return True

    def owners(self) -> list[int | None]:
        """The pid holding each partition's lease (None: no holder)."""
        out: list[int | None] = []
        for i in range(self.cell.partitions):
            raw = self.r.get(keys.partition_lease(self.stream, "stage", i))
            out.append(int(raw.decode().split("/")[0].rsplit("-", 2)[1]) if raw else None)
        return out

    def send_rows(self, rows: list[dict[str, Any]]) -> list[str]:
        """Each row to its key's partition, the sentinel (which closes every other window) to
        every partition; returns the entry ids as `<partition>/<id>`."""
        out = []
        streams = self.streams()
        for row in rows:
            fields = {k: str(row[k]) for k in ("sym", "ts", "qty", "px")}
            if row["sym"] == SENTINEL:
                for s in streams:
                    out.append(f"{s}/{self.r.xadd(s, fields).decode()}")  # type: ignore[arg-type]
                continue
            s = streams[zlib.crc32(row["sym"].encode()) % len(streams)]
            out.append(f"{s}/{self.r.xadd(s, fields).decode()}")  # type: ignore[arg-type]
        return out


def check_windows(run: WindowRun, r: Any, rows: list[dict[str, Any]], ids: list[str]) -> None:
    """Closed windows equal pandas, each once; late entries exactly the ones made late."""
    want = reference(run.kind, rows)
    got = parse_bars(r.xrange(run.to))
    dupes = len(got) - len(dict(got))
    assert dupes == 0, f"{dupes} windows emitted twice"
    missing, extra = want.keys() - dict(got).keys(), dict(got).keys() - want.keys()
    assert not missing and not extra, f"{len(missing)} windows missing, {len(extra)} unexpected"
    wrong = [k for k, v in got if not same(v, want[k])]
    assert not wrong, f"{len(wrong)} windows differ from pandas, e.g. {wrong[:3]}"
    made_late = [i for i, row in zip(ids, (x for x in rows if x["sym"] != SENTINEL),
                                     strict=False) if row["late"]]  # fmt: skip
    late: list[str] = []
    counted = 0
    for s in run.streams():
        late += [f"{s}/{f[b'late_of'].decode()}" for _, f in r.xrange(keys.late(s))]
        counted += int(r.hget(keys.window(s, "stage", "bars"), "~late") or 0)
    assert sorted(late) == sorted(made_late), "the late streams hold exactly the late entries"
    assert counted == len(made_late) > 0, "each partition's late count adds up"
    print(f"\n{run.cell.id} {run.kind}: windows={len(got)} (pandas {len(want)}) late={counted}")


def start(run: WindowRun) -> None:
    run.workers = [run.start_worker(i) for i in range(run.cell.workers)]
    run.wait(run.ready, 60, "every worker running")


def finish(run: WindowRun) -> list[str]:
    try:
        # Once every entry is acked its windows are written (in the same commit): what the
        # output holds then is final, so a lost window fails the check, not a timeout.
        run.wait(run.handled, 180, "every entry handled")
    finally:
        problems = run.stop()
    return problems


@pytest.mark.parametrize("kind", ["tumbling", "session"])
def test_partitioned_windows_are_exact_after_kills_and_a_freeze(kind: str, redis_url: str) -> None:
    syncredis.Redis.from_url(redis_url).flushdb()
    cell = Cell("sigkill", workers=2, partitions=2, n=ROWS, claim_idle_ms=LEASE_MS)
    run = WindowRun(cell, redis_url, stream="trades", to="bars", kind=kind)
    rows = inputs(ROWS, 6, seed=11, late_every=211)
    want = len(reference(kind, rows))
    kills = frozen = 0
    try:
        ids = run.send_rows(rows)
        start(run)
        for fraction in (0.2, 0.4):
            run.wait(lambda f=fraction: run.outputs() >= f * want, 120, f"{fraction:.0%}")
            kills += run.kill(run.victim())
            run.wait(run.ready, 60, "the restarted worker running")
        run.wait(lambda: run.outputs() >= 0.6 * want, 120, "60%")
        i = run.victim()
        victim = run.workers[i]
        owned = [n for n, pid in enumerate(run.owners()) if pid == victim.pid]
        frozen = run.freeze(
            i,
            lambda: victim.send_signal(signal.SIGSTOP),
            lambda: victim.send_signal(signal.SIGCONT),
        )
        moved = [n for n, pid in enumerate(run.owners()) if n in owned and pid != victim.pid]
    finally:
        problems = finish(run)
    assert not problems, problems
    assert kills == 2, f"only {kills} of 2 kills landed on a worker holding entries"
    assert frozen, "the frozen worker's entries were never taken by another process"
    assert owned and moved, "the frozen worker's partitions never changed hands"
    check_windows(run, syncredis.Redis.from_url(redis_url), rows, ids)


def test_partitioned_windows_on_a_cluster_are_exact_after_a_kill(
    cluster: RedisClusterServer, rc: SyncCluster
) -> None:
    from redis.crc import key_slot

    stream, to = "{trades}", "{trades}:bars"
    cell = Cell("sigkill", workers=2, partitions=2, n=ROWS, claim_idle_ms=LEASE_MS)
    port = cluster.servers[0].port
    run = WindowRun(cell, cluster.url, stream=stream, to=to, kind="tumbling", cluster_port=port)
    slots = {key_slot(k.encode()) for k in [*run.streams(), to]}
    slots |= {key_slot(keys.window(s, "stage", "bars").encode()) for s in run.streams()}
    slots |= {key_slot(keys.late(s).encode()) for s in run.streams()}
    assert len(slots) == 1, "the commit's keys share one slot"
    rows = inputs(ROWS, 6, seed=13, late_every=211)
    want = len(reference("tumbling", rows))
    kills = fenced = 0
    try:
        ids = run.send_rows(rows)
        start(run)
        run.wait(lambda: run.outputs() >= 0.3 * want, 120, "30%")
        i = run.victim()
        pid = run.workers[i].pid
        kills = run.kill(i)
        # The kill's bit: the entries it held were taken by another process (fenced first).
        run.wait(lambda: fence_count(rc, run.streams(), pid) > 0, 60, "the dead one's entries")
        fenced = fence_count(rc, run.streams(), pid)
    finally:
        problems = finish(run)
    assert not problems, problems
    assert kills == 1 and fenced > 0, "the kill landed on no worker holding entries"
    check_windows(run, rc, rows, ids)
