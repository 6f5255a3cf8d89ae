"""Scaling: one stream drained by 1 and 2 worker processes, and by 2 processes over 2 and 4
partitions (each partition owned by one process at a time).

    .venv/bin/python scripts/bench_scaling.py [--rounds 5] [--messages N] [--work W] [--quick]
        [--json]

Each worker is a `streammachine run` process (the same as another host joining the group); the
handler burns ~W x 0.5 µs of CPU so that the workers, not Redis, are the limit. Variants in
alternating rounds; msgs/s and the per-round ratios to one worker and to two workers sharing one
group (targets: 2 workers >= 1.7x one on a 2-core machine; 4 partitions over 2 workers >= 0.9x the
shared group). Always on a throwaway redis-server (each run empties it). --quick: 2,000 messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402
import redis  # noqa: E402 - after the sys.path line above

from streammachine import keys  # noqa: E402
from streammachine.testing import find_redis_server  # noqa: E402


def fill(r: redis.Redis, stream: str, n: int, partitions: int) -> None:
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            key = f"{stream}:p{i % partitions}" if partitions else stream
            pipe.xadd(key, {"n": str(i)})
        pipe.execute()


def drained(r: redis.Redis, streams: list[str], n: int) -> bool:
    done = 0
    for s in streams:
        for g in r.xinfo_groups(s):
            if g["name"] == b"cpu":
                done += (
                    r.xlen(s) - g["pending"]
                    if g["last-delivered-id"] == r.xinfo_stream(s)["last-generated-id"]
                    else 0
                )
    return done >= n


def ready(r: redis.Redis, streams: list[str], workers: int, partitions: int) -> bool:
    if not partitions:
        return sum(len(r.xinfo_consumers(s, "cpu")) for s in streams) >= workers * len(streams)
    leases = [r.get(keys.partition_lease("work", "cpu", i)) for i in range(partitions)]
    owners = [v.split(b"/")[0] for v in leases if v]
    counts = sorted(owners.count(o) for o in set(owners))
    balanced = len(owners) == partitions and len(counts) == min(workers, partitions)
    return balanced and counts[-1] - counts[0] <= 1


def run(url: str, n: int, workers: int, partitions: int, rounds: int) -> float:
    r = redis.Redis.from_url(url)
    r.flushall()
    streams = [f"work:p{i}" for i in range(partitions)] if partitions else ["work"]
    for s in streams:
        r.xgroup_create(s, "cpu", id="0", mkstream=True)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "CPU_ROUNDS": str(rounds),
        "CPU_PARTITIONS": str(partitions),
        "PYTHONPATH": str(ROOT / "tests" / "apps"),
        "STREAMMACHINE_BLOCK_MS": "100",
    }
    cmd = [
        sys.executable,
        "-m",
        "streammachine",
        "run",
        "cpu:app",
        "--log-format",
        "json",
        "--log-level",
        "warning",
    ]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for _ in range(workers)]
    try:
        # Time the work, not the start: wait until every worker's consumers have joined (a
        # partitioned agent: until the partitions are balanced over the workers).
        while not ready(r, streams, workers, partitions):
            time.sleep(0.01)
        t0 = time.perf_counter()
        fill(r, "work", n, partitions)
        while not drained(r, streams, n):
            time.sleep(0.05)  # polling lightly: the driver must not steal the workers' CPU
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    r.close()
    return n / elapsed


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--messages", type=int, default=60_000)
    p.add_argument("--work", type=int, default=200, help="handler CPU: ~0.5 µs per unit")
    args = benchlib.parse_args(__doc__, p)
    n = 2_000 if args.quick else args.messages
    # Always a throwaway server: each run starts from an empty one (FLUSHALL).
    with benchlib.redis_url(find_redis_server()) as url:
        cases = {
            "1 worker": (1, 0),
            "2 workers": (2, 0),
            "1 worker, 1 partition": (1, 1),
            "2 workers, 2 partitions": (2, 2),
            "2 workers, 4 partitions": (2, 4),
        }

        def variant(workers: int, partitions: int) -> Callable[[], float]:
            return lambda: run(url, n, workers, partitions, args.work)

        bench = benchlib.Bench(
            f"scaling, {n:,} messages, handler ~{args.work * 0.5:.0f} µs CPU, "
            f"{os.cpu_count()} cores",
            "msg/s",
            baselines=["1 worker", "2 workers"],
        )
        bench.run({name: variant(*case) for name, case in cases.items()}, args.rounds)
        bench.notes["targets"] = (
            "2 workers >= 1.7x 1 worker; 2 workers, 4 partitions >= 0.9x 2 workers"
        )
        header = benchlib.server_version(url)
    benchlib.report(args, [bench], header)


if __name__ == "__main__":
    main()
