"""A seeded soak for the fault matrix (tests/matrix.py): a producer writes at a steady rate while
random, overlapping faults — SIGKILLs, freezes (SIGSTOP), Redis stalls through a proxy, Redis
restarts, cut connections — hit a 2-worker stage for a set time; then the matrix's invariant.

The seed picks the faults, their targets and their timing, so `--seed N` replays a failing run's
schedule (the machine's timing still varies). `scripts/chaos.py --soak SECONDS --seed N` runs it.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from pathlib import Path

import redis as syncredis

from streammachine.testing import RedisServer, TcpProxy
from tests.matrix import Cell, Run
from tests.matrix_check import Result, check

FAULTS = ("kill", "freeze", "stall", "cut", "restart")


class Producer(threading.Thread):
    """Writes inputs at `rate` a second until stopped; pauses while `gate` is held (a Redis
    restart), so every write it counts was acknowledged and none is ambiguous."""

    def __init__(self, run: Run, rate: float, gate: threading.Lock) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.run_, self.rate, self.gate = run, rate, gate
        self.expected: dict[str, bytes | None] = {}
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        step, sent, t0 = 0.05, 0, time.monotonic()
        try:
            while not self.halt.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                if due > sent:
                    with self.gate:
                        self.expected.update(self.run_.send(sent, due))
                    sent = due
                self.halt.wait(step)
        except BaseException as exc:  # reported by the soak
            self.error = exc


def soak(server: RedisServer, seconds: float, seed: int, rate: float = 300.0) -> Result:
    """Run the soak against `server` (AOF on, flushed first) and check the invariant."""
    rng = random.Random(seed)
    syncredis.Redis.from_url(server.url).flushdb()
    cell = Cell("soak", concurrency=4, n=0)
    run = Run(cell, server.url, server)
    result = Result(f"soak-seed{seed}-{seconds:.0f}s")
    gate = threading.Lock()
    producer = Producer(run, rate, gate)
    undo: list[tuple[float, int, str]] = []  # (when, worker, what) to end a freeze or a stall
    counts = dict.fromkeys(FAULTS, 0)
    t0 = time.monotonic()
    problems: list[str] = []
    try:
        run.proxies = {i: TcpProxy(server.port).start() for i in range(2)}
        run.workers = [run.start_worker(i) for i in range(2)]
        run.wait(run.ready, 60, "every worker running")
        producer.start()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            now = time.monotonic()
            for when, i, what in [u for u in undo if u[0] <= now]:
                undo.remove((when, i, what))
                _end(run, i, what)
            run.sample()
            problems += _respawn(run)
            fault, i = rng.choice(FAULTS), rng.randrange(2)
            busy = {(w, what) for _, w, what in undo}
            if fault == "kill":
                for what in ("freeze", "stall"):
                    if (i, what) in busy:
                        undo.remove(next(u for u in undo if u[1:] == (i, what)))
                        _end(run, i, what)
                run.kill(i)
            elif fault in ("freeze", "stall") and (i, fault) not in busy:
                if fault == "freeze":
                    run.workers[i].send_signal(signal.SIGSTOP)
                else:
                    run.proxies[i].stall()
                # Sometimes long enough that the other worker takes its entries.
                undo.append((now + rng.uniform(0.3, 2.5 * run.liveness_s), i, fault))
            elif fault == "cut":
                run.proxies[i].cut()
            elif fault == "restart":
                with gate:
                    server.restart()
            else:
                continue
            counts[fault] += 1
            target = "redis" if fault == "restart" else f"worker {i}"
            print(f"  t={now - t0:6.1f}s {fault} {target}", flush=True)
            time.sleep(rng.uniform(0.2, 2.0))
        for _, i, what in undo:
            _end(run, i, what)
        undo.clear()
        problems += _respawn(run)
        producer.halt.set()
        producer.join(30)
        if producer.error is not None:
            raise AssertionError(f"the producer failed: {producer.error!r}")
        total = len(producer.expected)
        run.wait(
            lambda: run.outputs() >= total and run.pending() == 0,
            120 + 3 * run.idle_s,
            "every input handled",
        )
    finally:
        for _, i, what in undo:
            with contextlib.suppress(Exception):
                _end(run, i, what)
        producer.halt.set()
        problems += run.stop()
    result.seconds = time.monotonic() - t0
    result.dropped = sum(run.dropped.values())
    result.faults = sum(counts.values())
    result.notes.append(" ".join(f"{k}={v}" for k, v in counts.items()))
    check(
        result,
        syncredis.Redis.from_url(server.url),
        producer.expected,
        {},
        run.streams(),
        Path(run.seen.name),
    )
    run.seen.cleanup()
    result.unproven += problems
    result.require(result.claimed > 0, "no input was handled by a second process")
    return result


def _respawn(run: Run) -> list[str]:
    """Start again, as systemd or the supervisor would, a worker that exited by itself because
    Redis was restarting while it started (it exits 1 with "cannot reach Redis", by design);
    any other exit is a problem."""
    problems = []
    for i, w in enumerate(run.workers):
        if w.poll() is None:
            continue
        log = run.log_of[w.pid]
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
        if w.returncode != 1 or "cannot reach Redis" not in text:
            problems.append(f"worker {w.pid} exited {w.returncode} during the soak")
        print(f"  worker {i} exited {w.returncode} (Redis away at its start): started again")
        run.workers[i] = run.start_worker(i)
    return problems


def _end(run: Run, i: int, what: str) -> None:
    if what == "freeze":
        run.workers[i].send_signal(signal.SIGCONT)
    else:
        run.proxies[i].resume()
