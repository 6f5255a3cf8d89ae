"""Scaling: one stream drained by 1 and 2 worker processes, and by 2 processes over 2 and 4
partitions (each partition owned by one process at a time).

Usage: python scripts/bench_scaling.py [--messages N] [--rounds R] [--quick]

Each worker is a `streammachine run` process (the same as another host joining the group); the
handler burns ~R x 0.5 µs of CPU so that the workers, not Redis, are the limit. Prints msgs/s and
the ratio to one worker (target >= 1.7x for 2 workers on a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402 - after the sys.path line above

from streammachine import keys  # noqa: E402
from streammachine.testing import RedisServer  # noqa: E402


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a third of the messages")
    args = parser.parse_args()
    n = args.messages // 3 if args.quick else args.messages
    print(
        f"scaling: {n:,} messages, handler ~{args.rounds * 0.5:.0f} µs CPU each, {os.cpu_count()} cores"
    )
    with RedisServer() as server:
        one = run(server.url, n, 1, 0, args.rounds)
        print(f"  1 worker,  1 stream      : {one:>9,.0f} msg/s  (1.00x)")
        two = run(server.url, n, 2, 0, args.rounds)
        print(f"  2 workers, 1 stream      : {two:>9,.0f} msg/s  ({two / one:.2f}x)")
        p1 = run(server.url, n, 1, 1, args.rounds)
        print(f"  1 worker,  1 partition   : {p1:>9,.0f} msg/s  ({p1 / one:.2f}x)")
        p2 = run(server.url, n, 2, 2, args.rounds)
        print(f"  2 workers, 2 partitions  : {p2:>9,.0f} msg/s  ({p2 / p1:.2f}x vs 1 partition)")
        p4 = run(server.url, n, 2, 4, args.rounds)
        verdict = "met" if p4 / two >= 0.9 else "NOT met"
        print(
            f"  2 workers, 4 partitions  : {p4:>9,.0f} msg/s  ({p4 / two:.2f}x the shared group "
            f"of 2 workers; target >= 0.90x: {verdict})"
        )


if __name__ == "__main__":
    main()
