"""The fault matrix: one stage (tests/apps/matrix_app.py) in real `streammachine run` processes,
one fault per cell, one invariant checker for all.

Invariant: every input has exactly one output (the stage is exactly-once on one node), nothing is
pending at the end, and the only dead letters are the poison inputs, each once, with their bytes.
`tests/test_faults.py` runs the short form in `make test`; `scripts/chaos.py` (`make chaos`) runs
the long form (more messages, every combination, the default timeouts too) and prints the counts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis as syncredis

from streammachine.consume.deadletter import split_dead
from streammachine.testing import RedisServer, TcpProxy

APPS = Path(__file__).resolve().parent / "apps"
ROOT = Path(__file__).resolve().parent.parent

FAULTS = (
    "sigkill",  # SIGKILL a worker at 25 %, 50 % and 75 % of the outputs, restart it
    "sigstop",  # freeze a worker past claim_idle_ms, then let it go on
    "quiet_burst",  # half, a quiet spell longer than claim_idle_ms, the other half and a SIGKILL
    "slow_batch",  # batches that take longer than claim_idle_ms (handler awaits)
    "frozen_batch",  # the same, the handler blocking the event loop (CPU work, a GC pause)
    "redis_restart",  # Redis restarted (AOF) mid-stream
    "proxy_cut",  # every connection of worker 0 cut by a TCP proxy, twice
    "proxy_stall",  # worker 0's connections stalled past claim_idle_ms, then resumed
    "poison",  # 1 in 50 inputs always fails: dead-lettered after max_deliveries, bytes kept
)


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix."""

    fault: str
    mode: str = "message"
    concurrency: int = 1
    workers: int = 2
    partitions: int = 0
    n: int = 2000
    claim_idle_ms: int | None = 1000  # None: the defaults (60 s)
    binary: bool = True
    delayed: bool = False  # outputs are delayed sends (committed into the schedule)

    @property
    def id(self) -> str:
        idle = "defaults" if self.claim_idle_ms is None else f"idle{self.claim_idle_ms}"
        parts = f"-p{self.partitions}" if self.partitions else ""
        delayed = "-delayed" if self.delayed else ""
        return (
            f"{self.fault}-{self.mode}-c{self.concurrency}-w{self.workers}{parts}{delayed}-{idle}"
        )


@dataclass
class Result:
    """What a cell produced, as the invariant checker counts it."""

    cell: str
    sent: int = 0
    outputs: int = 0
    distinct: int = 0
    duplicates: int = 0
    lost: int = 0
    dead: int = 0
    bad_dead: int = 0  # dead letters of inputs that never failed, or twice, or bytes changed
    bad_bytes: int = 0  # outputs whose data differs from the input's
    pending: int = 0
    faults: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.bad_dead or self.bad_bytes or self.pending)

    def line(self) -> str:
        d = asdict(self)
        d.pop("notes")
        return " ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()
        )


def short_form() -> list[Cell]:
    """The cells `make test` runs on every Redis version (about a minute)."""
    return [
        Cell("sigkill"),
        Cell("sigkill", mode="batch", concurrency=4),
        Cell("sigkill", partitions=2, concurrency=2, workers=1),
        Cell("sigkill", delayed=True),
        Cell("sigstop", concurrency=4),
        Cell("sigstop", mode="batch"),
        Cell("quiet_burst", concurrency=4),
        Cell("slow_batch", n=60, workers=1),
        Cell("slow_batch", n=60),
        Cell("frozen_batch", n=60, mode="batch"),
        Cell("redis_restart", concurrency=4, workers=1),
        Cell("redis_restart", mode="batch"),
        Cell("proxy_cut", mode="batch", concurrency=4),
        Cell("proxy_cut", workers=1),
        Cell("proxy_stall"),
        Cell("poison", workers=1, n=500),
    ]


def long_form(n: int = 20_000) -> list[Cell]:
    """Every fault x per-message/batch x concurrency 1/4 x 1/2 workers, partitions, and the
    default timeouts for the faults whose recovery waits on claim_idle_ms."""
    cells = []
    for fault in FAULTS:
        size = 100 if fault in ("slow_batch", "frozen_batch") else n  # 0.15 s a message
        for mode in ("message", "batch"):
            if fault == "poison" and mode == "batch":
                continue  # a batch handler fails whole batches: not this invariant
            for concurrency in (1, 4):
                for workers in (1, 2):
                    cells.append(Cell(fault, mode, concurrency, workers, n=size))
        cells.append(Cell(fault, partitions=4, concurrency=2, n=size))
        cells.append(Cell(fault, concurrency=4, n=size, delayed=True))
    for fault in ("sigkill", "sigstop", "quiet_burst", "slow_batch"):
        # With the defaults a slow batch takes 1.5 x 60 s: two batches make the point.
        size = 20 if fault == "slow_batch" else n // 4
        cells.append(Cell(fault, concurrency=4, n=size, claim_idle_ms=None))
    return cells


class Run:
    """The processes and servers of one cell."""

    def __init__(self, cell: Cell, url: str, server: RedisServer | None) -> None:
        self.cell = cell
        self.url = url
        self.server = server
        self.proxy: TcpProxy | None = None
        self.r = syncredis.Redis.from_url(url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.rng = random.Random(zlib.crc32(cell.id.encode()))
        #: poison inputs and their data bytes, which their dead letters must keep
        self.poison_bytes: dict[str, bytes] = {}
        self.logs: list[Any] = []

    def env(self, url: str) -> dict[str, str]:
        c = self.cell
        env = {
            **os.environ,
            "REDIS_URL": url,
            "PYTHONPATH": os.pathsep.join([str(APPS), str(ROOT)]),
            "MATRIX_MODE": c.mode,
            "MATRIX_CONCURRENCY": str(c.concurrency),
            "MATRIX_PARTITIONS": str(c.partitions),
            "MATRIX_COUNT": "10" if c.fault in ("slow_batch", "frozen_batch") else "50",
            "MATRIX_DELAYED_S": "0.05" if c.delayed else "0",
        }
        for k in ("STREAMMACHINE_CLAIM_IDLE_MS", "STREAMMACHINE_BLOCK_MS"):
            env.pop(k, None)
        if c.claim_idle_ms is not None:
            env["STREAMMACHINE_CLAIM_IDLE_MS"] = str(c.claim_idle_ms)
            env["STREAMMACHINE_BLOCK_MS"] = str(max(50, c.claim_idle_ms // 5))
        if c.fault in ("slow_batch", "frozen_batch"):
            env["MATRIX_DELAY_S"] = str(self.idle_s * 0.15)  # 10 per batch: 1.5 x claim_idle
            env["MATRIX_BLOCKING"] = "1" if c.fault == "frozen_batch" else "0"
        else:
            env["MATRIX_DELAY_S"] = "0.0003"  # enough work that faults land mid-stream
            env["MATRIX_BLOCKING"] = "1"
        return env

    @property
    def idle_s(self) -> float:
        return (self.cell.claim_idle_ms or 60_000) / 1000.0

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        url = self.proxy.url if self.proxy is not None and i == 0 else self.url
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop(); explains a crash
        self.logs.append(log)
        cmd = [
            sys.executable,
            "-m",
            "streammachine",
            "run",
            "matrix_app:app",
            "--log-format",
            "json",
        ]
        return subprocess.Popen(cmd, env=self.env(url), stdout=subprocess.DEVNULL, stderr=log)

    def streams(self) -> list[str]:
        k = self.cell.partitions
        return [f"in:p{i}" for i in range(k)] if k else ["in"]

    def send(self, start: int, stop: int) -> dict[str, bytes | None]:
        """Write inputs start..stop-1; returns {"<stream>/<id>": data bytes or None if poison}."""
        out: dict[str, bytes | None] = {}
        streams = self.streams()
        pipe = self.r.pipeline(transaction=False)
        names = []
        for i in range(start, stop):
            stream = streams[zlib.crc32(str(i).encode()) % len(streams)]
            data = bytes([0xFF, 0x00, i % 256]) + os.urandom(4) if self.cell.binary else b"%d" % i
            fields: dict[str, bytes] = {"n": b"%d" % i, "data": data}
            poison = self.cell.fault == "poison" and i % 50 == 7
            if poison:
                fields["poison"] = b"1"
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            names.append((stream, None if poison else data, data))
        for (stream, expect, data), entry_id in zip(names, pipe.execute(), strict=True):
            key = f"{stream}/{entry_id.decode()}"
            out[key] = expect
            if expect is None:
                self.poison_bytes[key] = data
        return out

    def outputs(self) -> int:
        return int(self.r.xlen("out"))

    def dead_count(self) -> int:
        return int(self.r.xlen("in:dead"))

    def wait(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.cell.id}: timed out waiting for {what}")
            for w in self.workers:
                if w.poll() is not None and w.returncode not in (0, -signal.SIGKILL):
                    raise AssertionError(
                        f"{self.cell.id}: worker exit {w.returncode}: {self.tail()}"
                    )
            time.sleep(0.02)

    def at_fraction(self, total: int, fraction: float) -> None:
        self.wait(
            lambda: self.outputs() + self.dead_count() >= total * fraction, 120, f"{fraction:.0%}"
        )

    def kill_one(self) -> None:
        i = self.rng.randrange(len(self.workers))
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait()
        self.workers[i] = self.start_worker(i)

    def tail(self) -> str:
        """The last lines the workers logged, for a failure message."""
        lines: list[str] = []
        for log in self.logs:
            log.seek(0)
            lines += log.read().decode("utf-8", "replace").splitlines()[-5:]
        return "\n".join(lines[-15:])

    def pending(self) -> int:
        return sum(
            int(self.r.xpending(s, "stage")["pending"]) for s in self.streams() if self.r.exists(s)
        )

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGCONT)
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        if self.proxy is not None:
            self.proxy.close()
        self.r.close()
        for log in self.logs:
            log.close()


def run_cell(cell: Cell, url: str, *, restartable: RedisServer | None = None) -> Result:
    """Run one cell against the server at `url` (flushed first) and check the invariant.

    `restartable` is the server behind `url` when the cell restarts Redis (it needs AOF on).
    """
    syncredis.Redis.from_url(url).flushdb()
    run = Run(cell, url, restartable)
    result = Result(cell.id)
    t0 = time.monotonic()
    expected: dict[str, bytes | None] = {}
    try:
        if cell.fault in ("proxy_cut", "proxy_stall"):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            run.proxy = TcpProxy(port).start()
        half = cell.n // 2 if cell.fault == "quiet_burst" else cell.n
        expected.update(run.send(0, half))
        run.workers = [run.start_worker(i) for i in range(cell.workers)]
        result.faults = _apply(run, cell, expected)
        total = len(expected)
        run.wait(
            lambda: (
                run.outputs() >= total - len(run.poison_bytes)
                and run.dead_count() >= len(run.poison_bytes)
                and run.pending() == 0
            ),
            120 + 3 * run.idle_s,
            "every input handled",
        )
    finally:
        run.stop()
    result.seconds = time.monotonic() - t0
    _check(result, syncredis.Redis.from_url(url), expected, run.poison_bytes, run.streams())
    return result


def _apply(run: Run, cell: Cell, expected: dict[str, bytes | None]) -> int:
    """Inflict the cell's fault; returns how many times it struck."""
    n, fault = cell.n, cell.fault
    if fault == "sigkill":
        for fraction in (0.25, 0.5, 0.75):
            run.at_fraction(n, fraction)
            run.kill_one()
        return 3
    if fault == "sigstop":
        run.at_fraction(n, 0.3)
        run.workers[0].send_signal(signal.SIGSTOP)
        time.sleep(run.idle_s * 2.5)  # the fault itself: frozen past claim_idle_ms
        run.workers[0].send_signal(signal.SIGCONT)
        return 1
    if fault == "quiet_burst":
        run.wait(lambda: run.outputs() >= len(expected), 120, "the first half")
        time.sleep(run.idle_s * 2.5)  # the quiet spell itself
        expected.update(run.send(len(expected), n))
        run.at_fraction(n, 0.6)
        run.kill_one()
        return 1
    if fault == "redis_restart":
        assert run.server is not None, "redis_restart needs the server it may restart"
        for fraction in (0.3, 0.6):
            run.at_fraction(n, fraction)
            run.server.restart()
        return 2
    if fault == "proxy_cut":
        assert run.proxy is not None
        for fraction in (0.2, 0.4, 0.6, 0.8):
            run.at_fraction(n, fraction)
            run.proxy.cut()
        return 4
    if fault == "proxy_stall":
        assert run.proxy is not None
        run.at_fraction(n, 0.3)
        run.proxy.stall()
        time.sleep(run.idle_s * 2.5)  # the stall itself
        run.proxy.resume()
        return 1
    return 0


def _check(
    result: Result,
    r: syncredis.Redis,
    expected: dict[str, bytes | None],
    poison: dict[str, bytes],
    streams: list[str],
) -> None:
    """The invariant checker: counts lost, duplicated, wrong bytes, bad dead letters, pending."""
    result.sent = len(expected)
    outs: Counter[str] = Counter()
    for _, f in r.xrange("out"):
        src = f[b"src"].decode()
        outs[src] += 1
        if src in expected and expected[src] is not None and f[b"data"] != expected[src]:
            result.bad_bytes += 1
    result.outputs = sum(outs.values())
    result.distinct = len(outs)
    result.duplicates = sum(c - 1 for c in outs.values() if c > 1)
    wanted = {k for k, v in expected.items() if v is not None}
    result.lost = len(wanted - set(outs))
    if set(outs) - wanted:
        result.notes.append(f"outputs of inputs that should have none: {len(set(outs) - wanted)}")
        result.bad_dead += len(set(outs) - wanted)
    dead: Counter[str] = Counter()
    raw_dead = r.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, "in:dead")
    for _, flat in raw_dead:  # type: ignore[union-attr]
        original, meta = split_dead(list(flat))
        key = f"{meta['source_stream'].decode()}/{meta['source_id'].decode()}"
        dead[key] += 1
        fields = dict(zip(original[::2], original[1::2], strict=True))
        if key not in poison or fields.get(b"data") != poison[key]:
            result.bad_dead += 1
    result.dead = sum(dead.values())
    result.bad_dead += sum(c - 1 for c in dead.values() if c > 1) + len(set(poison) - set(dead))
    result.pending = sum(int(r.xpending(s, "stage")["pending"]) for s in streams if r.exists(s))
    r.close()


def describe(results: list[Result]) -> str:
    """One line per cell, for `make chaos` and the README."""
    return "\n".join(("ok   " if r.ok else "FAIL ") + r.line() for r in results)
