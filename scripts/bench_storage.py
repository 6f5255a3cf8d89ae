"""Storage vs plain redis-py on the same throwaway redis-server: read, write and incr ops/s.

Each operation runs N times one after another (latency-bound: one round trip each), then as N
operations spread over 32 concurrent tasks (throughput with the connection pool). The baseline is
the same redis-py client doing HGET/HSET/HINCRBY on a hash. Best of 3 rounds (1 with --quick).

    .venv/bin/python scripts/bench_storage.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from collections.abc import Awaitable, Callable

import msgspec
import redis

from streammachine.connection import RedisConnection
from streammachine.state.storage import Storage
from streammachine.testing import RedisServer
from streammachine.urls import create_client

TASKS = 32


async def rate(op: Callable[[int], Awaitable[object]], n: int, tasks: int) -> float:
    """ops/s of `n` calls of `op`, split over `tasks` concurrent tasks."""

    async def worker(start: int, count: int) -> None:
        for i in range(start, start + count):
            await op(i)

    per_task = n // tasks
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(t * per_task, per_task) for t in range(tasks)))
    return per_task * tasks / (time.perf_counter() - t0)


async def best_pair(
    base: Callable[[int], Awaitable[object]],
    ours: Callable[[int], Awaitable[object]],
    n: int,
    tasks: int,
    rounds: int,
) -> tuple[float, float]:
    """Best ops/s of each, alternating rounds so drifts in machine load hit both alike."""
    best_base = best_ours = 0.0
    for _ in range(rounds):
        best_base = max(best_base, await rate(base, n, tasks))
        best_ours = max(best_ours, await rate(ours, n, tasks))
    return best_base, best_ours


async def bench(url: str, n: int, rounds: int) -> None:
    plain = create_client(url, max_connections=TASKS)
    conn = RedisConnection(url=url, max_connections=TASKS)  # the same pool size as the baseline
    storage = Storage("bench", redis=conn)
    h = "bench:plain"
    value = {"price": 101.25, "qty": 3, "side": "buy"}
    encoded = msgspec.msgpack.encode(value)  # the baseline stores the same bytes, pre-encoded
    keys = [f"k{i % 1000}" for i in range(n)]
    await plain.hset(h, mapping={k: encoded for k in set(keys)})
    await storage.write_many({k: value for k in set(keys)})

    cases: list[
        tuple[str, Callable[[int], Awaitable[object]], Callable[[int], Awaitable[object]]]
    ] = [
        (
            "write",
            lambda i: plain.hset(h, keys[i], encoded),
            lambda i: storage.write(keys[i], value),
        ),
        ("read", lambda i: plain.hget(h, keys[i]), lambda i: storage.read(keys[i])),
        ("incr", lambda i: plain.hincrby(h, "counter", 1), lambda i: storage.incr("counter")),
    ]
    print(f"{'op':<6} {'mode':<16} {'redis-py op/s':>14} {'Storage op/s':>13} {'ratio':>6}")
    for name, base_op, sm_op in cases:
        for mode, tasks in (("sequential", 1), (f"{TASKS} tasks", TASKS)):
            base, ours = await best_pair(base_op, sm_op, n, tasks, rounds)
            print(f"{name:<6} {mode:<16} {base:>14,.0f} {ours:>13,.0f} {ours / base:>6.2f}")
    upd = max(
        [
            await rate(lambda i: storage.update("u", lambda v: v + 1, default=0), n // 4, 1)
            for _ in range(rounds)
        ]
    )
    print(f"update (WATCH/MULTI loop, sequential, no contention): {upd:,.0f} op/s")
    await plain.aclose()
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few seconds)")
    args = parser.parse_args()
    n, rounds = (2_000, 1) if args.quick else (20_000, 3)
    try:
        import uvloop

        loop = "uvloop"
        runner: Callable[[Awaitable[None]], None] = uvloop.run  # type: ignore[assignment]
    except ImportError:
        loop, runner = "asyncio", asyncio.run  # type: ignore[assignment]
    with RedisServer() as server:
        info = redis.Redis.from_url(server.url).info("server")
        print(
            f"redis-server {info['redis_version']} on loopback, Python {platform.python_version()}, "
            f"redis-py {redis.__version__}, {loop}, n={n:,} per case, best of {rounds}"
        )
        runner(bench(server.url, n, rounds))


if __name__ == "__main__":
    main()
