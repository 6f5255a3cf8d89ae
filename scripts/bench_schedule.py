"""Scheduling figures: delayed entries moved per second, the mover's CPU when nothing is due, and
rate-limiter calls per second, on a throwaway redis-server (or REDIS_URL when set).

    .venv/bin/python scripts/bench_schedule.py [--rounds 5] [--entries N] [--idle-s S] [--quick]
        [--json]

Prints:
  * delayed entries moved to their streams per second by one mover (the Lua script, 1000 a call),
    against the 50 k/s target, beside plain pipelined XADDs of the same entries on the same
    server (the baseline), in alternating rounds;
  * the mover's CPU (time.process_time) while nothing is due, over `--idle-s` seconds, against
    the 1 % target — this process's side only (Redis answers one cheap script call per 0.2 s);
  * `RateLimiter.acquire` calls per second at a limit it never reaches (one script call each).
Figures only: it never fails on time. --quick: 2,000 entries, 0.5 s idle, 2 rounds.
"""

from __future__ import annotations

import argparse
import time

import anyio
import benchlib

from streammachine import RedisConnection, keys
from streammachine.schedule import RateLimiter, Scheduler, encode_entry

MOVE_TARGET_PER_S = 50_000
IDLE_CPU_TARGET = 0.01


async def fill(conn: RedisConnection, n: int, due: int) -> None:
    key = keys.scheduled("bench")
    client = conn.client
    for start in range(0, n, 5000):
        args: list[object] = []
        for i in range(start, min(n, start + 5000)):
            fields = [b"n", b"%d" % i, b"symbol", b"AAPL", b"price", b"101.25"]
            args += [due, encode_entry(f"{i:024x}", f"bench:out{i % 4}", fields)]
        await client.execute_command("ZADD", key, *args)  # type: ignore[no-untyped-call]


async def moved_per_s(conn: RedisConnection, n: int) -> float:
    await conn.client.delete(keys.scheduled("bench"), *(f"bench:out{i}" for i in range(4)))
    await fill(conn, n, 0)
    sched = Scheduler(conn, "bench")
    t0 = time.perf_counter()
    moved = 0
    while True:
        r = await sched.move_due()
        moved += r.moved
        if r.moved == 0:
            break
    elapsed = time.perf_counter() - t0
    total = sum([await conn.client.xlen(f"bench:out{i}") for i in range(4)])
    assert moved == n == total, (moved, n, total)
    return n / elapsed


async def xadd_per_s(conn: RedisConnection, n: int) -> float:
    await conn.client.delete(*(f"bench:base{i}" for i in range(4)))
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        async with conn.client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                pipe.xadd(f"bench:base{i % 4}", {"n": i, "symbol": "AAPL", "price": "101.25"})
            await pipe.execute()
    return n / (time.perf_counter() - t0)


async def idle_cpu(conn: RedisConnection, seconds: float) -> tuple[float, int]:
    await conn.client.delete(keys.scheduled("idle"))
    sched = Scheduler(conn, "idle")
    calls = 0
    real_move = sched.move_due

    async def counted(limit: int = 1000) -> object:
        nonlocal calls
        calls += 1
        return await real_move(limit)

    sched.move_due = counted  # type: ignore[method-assign,assignment]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sched.run_mover, stop)
        await anyio.sleep(0.5)  # warm: the script is loaded
        c0, w0 = time.process_time(), time.perf_counter()
        calls = 0
        await anyio.sleep(seconds)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        stop.set()
    return cpu / wall, calls


async def acquires_per_s(conn: RedisConnection, seconds: float) -> float:
    limiter = RateLimiter(conn, "bench", 1e9)
    await limiter.acquire()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await limiter.acquire(10)
        n += 1
    return n / (time.perf_counter() - t0)


async def run(url: str, args: argparse.Namespace) -> list[benchlib.Bench]:
    conn = RedisConnection(url=url)
    try:
        n = args.entries
        moves = benchlib.Bench(
            f"delayed entries moved, {n:,} entries, 1000 per script call",
            "entries/s",
            baselines=["pipelined XADD"],
        )
        await moves.run_async(
            {
                "pipelined XADD": lambda: xadd_per_s(conn, n),
                "Scheduler.move_due": lambda: moved_per_s(conn, n),
            },
            args.rounds,
        )
        moves.notes["target for Scheduler.move_due"] = f"{MOVE_TARGET_PER_S:,}/s"
        share, calls = await idle_cpu(conn, args.idle_s)
        moves.notes[f"mover CPU with nothing due, over {args.idle_s:g} s"] = (
            f"{share * 100:.3f} % of one core ({calls / args.idle_s:.1f} calls/s; target <= "
            f"{IDLE_CPU_TARGET * 100:g} %; this process only)"
        )
        acq = await acquires_per_s(conn, 0.3 if args.quick else 2.0)
        moves.notes["RateLimiter.acquire calls/s (one script call each, limit unreached)"] = acq
        return [moves]
    finally:
        await conn.client.delete(
            keys.scheduled("bench"),
            *(f"bench:out{i}" for i in range(4)),
            *(f"bench:base{i}" for i in range(4)),
        )
        await conn.close()


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--idle-s", type=float, default=3.0)
    args = benchlib.parse_args(__doc__, p)
    if args.quick:
        args.entries, args.idle_s = 2_000, 0.5
    with benchlib.redis_url() as url:
        benches = anyio.run(run, url, args)
        header = benchlib.server_version(url)
    benchlib.report(args, benches, header)


if __name__ == "__main__":
    main()
