"""Chaos run: a stream→stream stage killed with SIGKILL every second, at scale.

Usage: python scripts/chaos.py [--messages 100000] [--kill-every-s 1.0] [--workers 2]

Starts a throwaway redis-server, fills `in`, runs `streammachine run` workers of the stage in
tests/apps/stage.py, SIGKILLs a random worker every `--kill-every-s` and restarts it, and at the
end counts every input's outputs: lost (none) and duplicated (none) must both be zero.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from streammachine.testing import RedisServer

APPS = Path(__file__).resolve().parent.parent / "tests" / "apps"


def start(url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": url,
        "STREAMMACHINE_CLAIM_IDLE_MS": "1000",
        "STREAMMACHINE_BLOCK_MS": "200",
        "STAGE_DELAY_S": "0.0003",
        "PYTHONPATH": str(APPS),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", "run", "stage:app", "--log-format", "json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kill-every-s", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20k messages")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.messages
    rng = random.Random(1)
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        for start_i in range(0, n, 10_000):
            pipe = r.pipeline(transaction=False)
            for i in range(start_i, min(n, start_i + 10_000)):
                pipe.xadd("in", {"n": str(i)})
            pipe.execute()
        ids = {i for i, _ in r.xrange("in")}
        workers = [start(server.url) for _ in range(args.workers)]
        kills = 0
        t0 = time.monotonic()
        try:
            while r.xlen("out") < n * 0.95:
                time.sleep(args.kill_every_s)
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start(server.url)
                kills += 1
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                r.xlen("out") < n or r.xpending("in", "stage")["pending"]
            ):
                time.sleep(0.2)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=30)
        elapsed = time.monotonic() - t0
        counts = Counter(f[b"src"] for _, f in r.xrange("out"))
        lost = len(ids - set(counts))
        dups = sum(c - 1 for c in counts.values() if c > 1)
        print(
            f"chaos: {n:,} messages, {args.workers} workers, {kills} SIGKILLs in {elapsed:.1f} s: "
            f"processed {len(counts):,}, lost {lost}, duplicated {dups}"
        )
        return 0 if lost == 0 and dups == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
