"""Storage vs plain redis-py on the same throwaway redis-server: read, write and incr ops/s.

Each operation runs N times one after another (latency-bound: one round trip each), then as N
operations spread over 32 concurrent tasks (throughput with the connection pool). The baseline is
the same redis-py client doing HGET/HSET/HINCRBY on a hash. Alternating rounds, medians and the
per-round ratio to redis-py (--quick: 2,000 ops, 2 rounds).

    .venv/bin/python scripts/bench_storage.py [--rounds 5] [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Awaitable, Callable

import benchlib
import msgspec
import redis

from streammachine.connection import RedisConnection
from streammachine.state.storage import Storage
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


async def bench(url: str, n: int, rounds: int) -> list[benchlib.Bench]:
    plain = create_client(url, max_connections=TASKS)
    conn = RedisConnection(url=url, max_connections=TASKS)  # the same pool size as the baseline
    storage = Storage("bench", redis=conn)
    h = "bench:plain"
    value = {"price": 101.25, "qty": 3, "side": "buy"}
    encoded = msgspec.msgpack.encode(value)  # the baseline stores the same bytes, pre-encoded
    keys = [f"k{i % 1000}" for i in range(n)]
    await plain.hset(h, mapping={k: encoded for k in set(keys)})
    await storage.write_many({k: value for k in set(keys)})

    Op = Callable[[int], Awaitable[object]]
    cases: list[tuple[str, Op, Op]] = [
        (
            "write",
            lambda i: plain.hset(h, keys[i], encoded),
            lambda i: storage.write(keys[i], value),
        ),
        ("read", lambda i: plain.hget(h, keys[i]), lambda i: storage.read(keys[i])),
        ("incr", lambda i: plain.hincrby(h, "counter", 1), lambda i: storage.incr("counter")),
    ]
    benches = []
    for name, base_op, sm_op in cases:
        for mode, tasks in (("sequential", 1), (f"{TASKS} tasks", TASKS)):
            bench = benchlib.Bench(f"{name}, {mode}, {n:,} ops", "op/s", baselines=["redis-py"])

            def variant(op: Op, tasks: int = tasks) -> Callable[[], Awaitable[float]]:
                return lambda: rate(op, n, tasks)

            await bench.run_async({"redis-py": variant(base_op), "Storage": variant(sm_op)}, rounds)
            benches.append(bench)
    upd = [
        await rate(lambda i: storage.update("u", lambda v: v + 1, default=0), n // 4, 1)
        for _ in range(rounds)
    ]
    benches[-1].notes["Storage.update (WATCH/MULTI, sequential, no contention), op/s"] = (
        benchlib.median(upd)
    )
    await plain.aclose()
    await conn.close()
    return benches


def main() -> None:
    p = benchlib.parser(__doc__)
    args = benchlib.parse_args(__doc__, p)
    n = 2_000 if args.quick else 20_000
    benchlib.use_uvloop()
    with benchlib.redis_url() as url:
        header = (
            f"{benchlib.server_version(url)} on loopback, Python {platform.python_version()}, "
            f"redis-py {redis.__version__}"
        )
        benches = asyncio.run(bench(url, n, args.rounds))
    benchlib.report(args, benches, header)


if __name__ == "__main__":
    main()
