"""The fault matrix: one stage (tests/apps/matrix_app.py) in real `streammachine run` processes,
one fault per cell, one invariant checker for all.

Invariant: every input has exactly one output (the stage is exactly-once on one node), nothing is
pending at the end, and the only dead letters are the poison inputs, each once, with their bytes.
`tests/test_faults.py` runs the short form in `make test`; `scripts/chaos.py` (`make chaos`) runs
the long form (more messages, every combination, the default timeouts too) and prints the counts.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as syncredis

from streammachine import keys
from streammachine.testing import RedisServer, TcpProxy
from tests.matrix_check import (
    Result,
    check,
    claimed_so_far,
    dropped_by_instance,
    fence_count,
    holding,
    process_prefix,
    sched_left,
)

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


def short_form() -> list[Cell]:
    """The cells `make test` runs on every Redis version (about a minute)."""
    return [
        Cell("sigkill"),
        Cell("sigkill", mode="batch", concurrency=4),
        Cell("sigkill", partitions=2, concurrency=2, workers=1),
        Cell("sigkill", delayed=True),
        Cell("sigstop", concurrency=4),
        Cell("sigstop", mode="batch"),
        Cell("sigstop", partitions=2, concurrency=2),
        Cell("proxy_stall", partitions=2, concurrency=2),
        Cell("quiet_burst", concurrency=4),
        Cell("slow_batch", n=60, workers=1),
        Cell("slow_batch", n=60),
        Cell("frozen_batch", n=60, mode="batch"),
        Cell("redis_restart", concurrency=4, workers=1),
        Cell("redis_restart", mode="batch"),
        Cell("proxy_cut", mode="batch", concurrency=4),
        Cell("proxy_cut"),
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


#: Faults after which another process must have handled some inputs (with 2 workers).
TAKEN = ("sigkill", "sigstop", "quiet_burst", "proxy_cut", "proxy_stall")
#: Faults that freeze a worker mid-batch: its commit after waking must be fenced (outputs dropped).
FENCED = ("sigstop",)


class Run:
    """The processes, proxies and servers of one cell."""

    #: whether a worker may exit while the cell waits (a failpoint kills one on purpose)
    exits_expected = False

    def __init__(self, cell: Cell, url: str, server: RedisServer | None) -> None:
        self.cell = cell
        self.url = url
        self.server = server
        #: a TCP proxy in front of Redis per worker index that has one (cut and stall faults)
        self.proxies: dict[int, TcpProxy] = {}
        self.r = syncredis.Redis.from_url(url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.rng = random.Random(zlib.crc32(cell.id.encode()))
        #: poison inputs and their data bytes, which their dead letters must keep
        self.poison_bytes: dict[str, bytes] = {}
        self.logs: list[Any] = []
        self.log_of: dict[int, Any] = {}  # pid -> its log
        self.seen = tempfile.TemporaryDirectory(prefix="matrix-seen-")
        #: each instance's highest `dropped` counter seen in its heartbeats
        self.dropped: dict[str, int] = {}
        self._sampled = 0.0

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
            "MATRIX_SEEN_DIR": self.seen.name,
            "MATRIX_HEARTBEAT_S": str(self.beat_s),
            "MATRIX_LEASE_MS": str(int(self.liveness_s * 1000)) if c.partitions else "0",
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

    @property
    def beat_s(self) -> float:
        """The heartbeat interval: short where a frozen worker must soon count as dead; the
        default (2 s) where a live worker's handler blocks its loop for 1.5 x claim_idle_ms."""
        fast = self.cell.claim_idle_ms is not None and self.cell.fault not in (
            "slow_batch",
            "frozen_batch",
        )
        return 0.25 if fast else 2.0

    @property
    def liveness_s(self) -> float:
        """How long a frozen process still counts as alive (three missed beats and a second)."""
        return 3 * self.beat_s + 1

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        url = self.proxies[i].url if i in self.proxies else self.url
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
        proc = subprocess.Popen(cmd, env=self.env(url), stdout=subprocess.DEVNULL, stderr=log)
        self.log_of[proc.pid] = log
        return proc

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

    def sample(self) -> None:
        """Read the agents' `dropped` counters from the heartbeats (at most 5 times a second;
        a stopping process deletes its heartbeat, so they are read while the cell runs)."""
        if time.monotonic() - self._sampled < 0.2:
            return
        self._sampled = time.monotonic()
        try:
            for key, n in dropped_by_instance(self.r).items():
                self.dropped[key] = max(n, self.dropped.get(key, 0))
        except syncredis.RedisError:
            pass  # Redis restarting: the next sample reads them

    def wait(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.sample()
            try:
                if cond():
                    return
            except syncredis.ConnectionError:
                pass  # Redis restarting
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.cell.id}: timed out waiting for {what}: {self.state()}\n{self.tail()}"
                )
            for w in self.workers:
                if w.poll() is not None and not self.exits_expected:
                    raise AssertionError(
                        f"{self.cell.id}: worker exit {w.returncode}: {self.tail()}"
                    )
            time.sleep(0.02)

    def at_fraction(self, total: int, fraction: float) -> None:
        self.wait(
            lambda: self.outputs() + self.dead_count() >= total * fraction, 120, f"{fraction:.0%}"
        )

    def kill(self, i: int) -> int:
        """SIGKILL worker i and start another; 1 if it died holding entries (the kill bit: what
        its consumers still hold in the PEL once it is dead), else 0."""
        pid = self.workers[i].pid
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait()
        held = holding(self.r, self.streams(), pid)
        self.workers[i] = self.start_worker(i)
        return 1 if held else 0

    def ready(self) -> bool:
        """Whether every worker is running (its process marked alive by its heartbeat)."""
        alive = {m.decode() for m in self.r.zrange(keys.PROCESSES, 0, -1)}
        return all(process_prefix(w.pid) in alive for w in self.workers)

    def victim(self) -> int:
        """The worker holding the most entries (waiting up to 10 s for one to hold any): a
        partition's owner, or whichever worker a freeze can take something from."""
        deadline = time.monotonic() + 10
        while True:
            held = [holding(self.r, self.streams(), w.pid) for w in self.workers]
            if max(held) > 0 or time.monotonic() > deadline:
                return held.index(max(held))
            time.sleep(0.05)

    def freeze(
        self, i: int, pause: Callable[[], None], go: Callable[[], None], need_claim: bool = False
    ) -> int:
        """Pause worker i (SIGSTOP, or its proxy stalled) until another process took entries
        from it — its fence counter grew, or another process handled inputs it had read — then
        let it go on; up to 3 tries, as a freeze may land while it holds nothing. Returns 1 if
        something was taken, else 0. `need_claim`: only a handled input counts (a fence may
        come from entries whose read reply the cut lost, which no one handled before)."""
        pid, streams, seen = self.workers[i].pid, self.streams(), Path(self.seen.name)
        timeout = 2.5 * self.idle_s + self.liveness_s + 20
        for _ in range(3):
            with contextlib.suppress(AssertionError):  # a pause that takes nothing proves nothing
                self.wait(lambda: holding(self.r, streams, pid) > 0, 10, "the victim holding")
            fenced, claimed = fence_count(self.r, streams, pid), claimed_so_far(self.r, seen)
            pause()
            try:
                self.wait(
                    lambda f=fenced, c=claimed: (
                        claimed_so_far(self.r, seen) > c
                        or (not need_claim and fence_count(self.r, streams, pid) > f)
                    ),
                    timeout,
                    "a claim",
                )
                return 1
            except AssertionError:
                pass
            finally:
                go()
            time.sleep(0.2 * self.idle_s)  # let it take new entries before the next try
        return 0

    def state(self) -> str:
        """What Redis holds now, for a timeout's message: outputs, and per stream its length,
        the group's last delivered id and each consumer's pending count."""
        try:
            parts = [f"outputs={self.outputs()} dead={self.dead_count()}"]
            for s in self.streams():
                groups = self.r.xinfo_groups(s) if self.r.exists(s) else []
                last = [g.get("last-delivered-id") for g in groups]
                owners = self.r.xpending(s, "stage").get("consumers") if groups else []
                parts.append(
                    f"{s}: len={self.r.xlen(s)} last={last} "
                    f"pending={[(c['name'], c['pending']) for c in owners or []]}"
                )
            return "; ".join(parts)
        except syncredis.RedisError as exc:
            return f"(state unreadable: {exc})"

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

    def stop(self) -> list[str]:
        """SIGTERM every worker; returns what went wrong: a worker that exited on its own, did
        not exit 0, hung (SIGKILLed after 30 s) or logged an error or traceback while draining."""
        problems: list[str] = []
        live = [self.log_of[w.pid] for w in self.workers]
        marks = []
        for w in self.workers:
            if w.poll() is not None:
                problems.append(f"worker {w.pid} exited {w.returncode} before the stop")
        with contextlib.suppress(AssertionError, syncredis.RedisError):
            self.wait(self.ready, 20, "every worker running before the stop")
        for w, log in zip(self.workers, live, strict=True):
            log.seek(0, 2)
            marks.append(log.tell())
            if w.poll() is None:
                w.send_signal(signal.SIGCONT)
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                rc = w.wait(timeout=30)
                if rc != 0:
                    problems.append(f"worker {w.pid} exited {rc} after SIGTERM")
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
                problems.append(f"worker {w.pid} hung on SIGTERM (SIGKILLed after 30 s)")
        for log, mark in zip(live, marks, strict=True):
            log.seek(mark)
            for line in log.read().decode("utf-8", "replace").splitlines():
                if (
                    "Traceback" in line
                    or '"level":"error"' in line.replace(" ", "")
                    or ('"level":"critical"' in line.replace(" ", ""))
                ):
                    problems.append(f"while draining: {line[:300]}")
        if problems:
            problems.append("log tail:\n" + self.tail())
        for proxy in self.proxies.values():
            proxy.close()
        self.r.close()
        for log in self.logs:
            log.close()
        return problems


def run_cell(cell: Cell, url: str, *, restartable: RedisServer | None = None) -> Result:
    """Run one cell against the server at `url` (flushed first) and check the invariant and that
    the fault bit.

    `restartable` is the server behind `url` when the cell restarts Redis (it needs AOF on).
    """
    syncredis.Redis.from_url(url).flushdb()
    run = Run(cell, url, restartable)
    result = Result(cell.id)
    t0 = time.monotonic()
    expected: dict[str, bytes | None] = {}
    problems: list[str] = []
    try:
        if cell.fault in ("proxy_cut", "proxy_stall"):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            run.proxies = {i: TcpProxy(port).start() for i in range(cell.workers)}
        half = cell.n // 2 if cell.fault == "quiet_burst" else cell.n
        expected.update(run.send(0, half))
        run.workers = [run.start_worker(i) for i in range(cell.workers)]
        run.wait(run.ready, 60, "every worker running")
        result.faults = _apply(run, cell, expected, result)
        total = len(expected)
        run.wait(
            lambda: (
                run.outputs() >= total - len(run.poison_bytes)
                and run.dead_count() >= len(run.poison_bytes)
                and run.pending() == 0
                and (not cell.delayed or sched_left(run.r) == 0)
            ),
            120 + 3 * run.idle_s,
            "every input handled",
        )
        if cell.fault in FENCED:  # a heartbeat or two after the woken worker's commit
            with contextlib.suppress(AssertionError):
                run.wait(lambda: sum(run.dropped.values()) > 0, 10 * run.beat_s + 5, "dropped")
    finally:
        problems = run.stop()
    result.seconds = time.monotonic() - t0
    result.dropped = sum(run.dropped.values())
    check(
        result,
        syncredis.Redis.from_url(url),
        expected,
        run.poison_bytes,
        run.streams(),
        Path(run.seen.name),
    )
    run.seen.cleanup()
    result.unproven += problems
    _require(result, cell)
    return result


def _require(result: Result, cell: Cell) -> None:
    """What the cell's fault must have done, measured."""
    if (cell.fault in TAKEN and cell.workers > 1) or cell.fault == "sigkill":
        result.require(result.claimed > 0, "no input was handled by a second process")
    if cell.fault in FENCED:
        result.require(result.dropped > 0, "no fenced commit dropped outputs (heartbeats)")
    if cell.fault in ("proxy_cut", "proxy_stall"):
        result.require(result.reconnects > 0, "the proxy saw no new connection")
    if cell.fault in ("slow_batch", "frozen_batch"):
        idle = cell.claim_idle_ms or 60_000
        result.require(result.held_ms > idle, f"no entry held longer than {idle} ms")
        # Claims come only from dead processes: the keepalive keeps a live worker's slow batch.
        result.require(result.claimed == 0, "a live worker's slow batch was taken")
    if cell.fault == "poison":
        result.require(result.dead > 0, "nothing dead-lettered")
    if cell.fault != "poison":
        result.require(result.faults > 0, "the fault never struck")


def _apply(run: Run, cell: Cell, expected: dict[str, bytes | None], result: Result) -> int:
    """Inflict the cell's fault; returns how many times it struck, as measured."""
    n, fault = cell.n, cell.fault
    if fault == "sigkill":
        struck = 0
        for fraction in (0.25, 0.5, 0.75):
            run.at_fraction(n, fraction)
            struck += run.kill(run.rng.randrange(len(run.workers)))
        return struck
    if fault == "sigstop":
        run.at_fraction(n, 0.3)
        i = run.victim()
        w = run.workers[i]
        return run.freeze(
            i, lambda: w.send_signal(signal.SIGSTOP), lambda: w.send_signal(signal.SIGCONT)
        )
    if fault == "quiet_burst":
        run.wait(lambda: run.outputs() >= len(expected), 120, "the first half")
        time.sleep(run.idle_s * 2.5)  # the quiet spell itself
        expected.update(run.send(len(expected), n))
        for fraction in (0.6, 0.75, 0.9):  # until a kill lands on a worker holding entries
            run.at_fraction(n, fraction)
            if run.kill(run.victim()):
                return 1
        return 0
    if fault == "redis_restart":
        assert run.server is not None, "redis_restart needs the server it may restart"
        struck = 0
        for fraction in (0.3, 0.6):
            run.at_fraction(n, fraction)
            before = run.r.info("server")["run_id"]
            run.server.restart()
            struck += run.r.info("server")["run_id"] != before
        return struck
    if fault == "proxy_cut":
        # Each cut resets worker 0's connections; the last one also keeps the network down
        # (new connections hang) until another worker took its entries.
        i = run.victim()
        proxy, struck = run.proxies[i], 0
        for fraction in (0.15, 0.3, 0.45):
            run.at_fraction(n, fraction)
            before = proxy.connections
            proxy.cut()
            with contextlib.suppress(AssertionError):
                run.wait(lambda b=before: proxy.connections > b, 30, "a reconnect")
            struck += proxy.connections > before
        run.at_fraction(n, 0.55)  # backlog left for up to three tries of the freeze
        before = proxy.connections
        if cell.workers > 1:

            def down() -> None:
                proxy.stall()  # first, so the batch in hand is handled and its commit held
                time.sleep(0.3)
                proxy.cut()

            struck += run.freeze(i, down, proxy.resume, need_claim=True)
        else:
            proxy.cut()
        with contextlib.suppress(AssertionError):
            run.wait(lambda: proxy.connections > before, 30, "a reconnect")
        result.reconnects = proxy.connections - 1
        return struck
    if fault == "proxy_stall":
        run.at_fraction(n, 0.3)
        i = run.victim()
        proxy = run.proxies[i]
        before = proxy.connections
        struck = run.freeze(i, proxy.stall, proxy.resume)
        with contextlib.suppress(AssertionError):
            run.wait(lambda: proxy.connections > before, 30, "a reconnect")
        result.reconnects = proxy.connections - before
        return struck
    if fault in ("slow_batch", "frozen_batch"):
        return 1  # measured by the checker: held_ms
    return 0


def describe(results: list[Result]) -> str:
    """One line per cell, for `make chaos` and the README."""
    return "\n".join(("ok   " if r.ok else "FAIL ") + r.line() for r in results)
