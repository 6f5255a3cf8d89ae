"""Throughput: StreamMachine consumers against hand-written redis-py loops, on one server.

    .venv/bin/python scripts/bench_throughput.py [--rounds 5] [--messages 200000] [--quick] [--json]

A stream is prefilled with --messages entries of 3 fields (symbol, price, volume); every variant
drains all of them through its own consumer group (a new one each round), COUNT 500, redis-py with
hiredis on uvloop, in alternating rounds:

- naive loop: XREADGROUP, then XACK the batch (the baseline a user writes first);
- pipelined loop: [XACK previous batch, XREADGROUP next] in one pipeline (what a careful engineer
  writes; the second baseline);
- no-op agent: one `@app.agent` whose handler does nothing;
- exactly-once stage: one `app.send` per input, committed atomically with the acks;
- FastOHLCConsumer: 1m and 5m candles, committed with the acks.

Then Redis' CPU per entry for the naive loop and the stage (process CPU from `INFO cpu`; command
time from `INFO commandstats`), one more run of each. --quick: 5,000 entries, 2 rounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import benchlib
import redis
import redis.asyncio as aioredis

from streammachine import App, Message

STREAM = "bench"
COUNT = 500
SYMBOLS = 50


def prefill(url: str, n: int) -> None:
    r = redis.Redis.from_url(url)
    r.delete(STREAM)
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.xadd(STREAM, {"symbol": f"S{i % SYMBOLS:02d}", "price": f"{100 + i % 97 / 100:.2f}",
                               "volume": str(1 + i % 9)})  # fmt: skip
        pipe.execute()
    r.close()


def drop_group(url: str, group: str, *streams: str) -> None:
    """Free the server's memory between runs: the group and any output stream."""
    r = redis.Redis.from_url(url)
    r.xgroup_destroy(STREAM, group)
    if streams:
        r.delete(*streams)
    r.close()


async def naive(url: str, n: int, group: str) -> float:
    r = aioredis.Redis.from_url(url)
    await r.xgroup_create(STREAM, group, id="0")
    done = 0
    t0 = time.perf_counter()
    while done < n:
        reply = await r.xreadgroup(group, "c", {STREAM: ">"}, count=COUNT, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _entry_id, fields in entries:
            _ = fields
        await r.xack(STREAM, group, *[entry_id for entry_id, _ in entries])
        done += len(entries)
    elapsed = time.perf_counter() - t0
    await r.aclose()
    return n / elapsed


async def pipelined(url: str, n: int, group: str) -> float:
    r = aioredis.Redis.from_url(url)
    await r.xgroup_create(STREAM, group, id="0")
    done = 0
    previous: list[bytes] = []
    t0 = time.perf_counter()
    while done < n:
        pipe = r.pipeline(transaction=False)
        if previous:
            pipe.xack(STREAM, group, *previous)
        pipe.xreadgroup(group, "c", {STREAM: ">"}, count=COUNT, block=1000)
        reply = (await pipe.execute())[-1]
        previous = []
        if not reply:
            continue
        entries = reply[0][1]
        for _entry_id, fields in entries:
            _ = fields
        previous = [entry_id for entry_id, _ in entries]
        done += len(entries)
    if previous:
        await r.xack(STREAM, group, *previous)
    elapsed = time.perf_counter() - t0
    await r.aclose()
    return n / elapsed


async def until_acked(app: App, group: str) -> None:
    while (await app.redis.client.xpending(STREAM, group))["pending"]:
        await asyncio.sleep(0.002)


async def agent(url: str, n: int, group: str) -> float:
    app = App(name="bench", redis_url=url)

    @app.agent(STREAM, group=group, count=COUNT)
    async def handler(record: Message) -> None:
        pass

    task = asyncio.create_task(app.run())
    await app.redis.connect()
    t0 = time.perf_counter()
    while app.agents[0].stats.processed < n:
        await asyncio.sleep(0.002)
    await until_acked(app, group)
    elapsed = time.perf_counter() - t0
    await app.shutdown()
    await task
    return n / elapsed


async def stage(url: str, n: int, group: str) -> float:
    app = App(name="bench", redis_url=url)
    out = f"{group}-out"

    @app.agent(STREAM, group=group, count=COUNT)
    async def handler(record: Message) -> None:
        await app.send(out, {"symbol": record.message["symbol"]})

    task = asyncio.create_task(app.run())
    await app.redis.connect()
    t0 = time.perf_counter()
    while app.agents[0].stats.processed < n:
        await asyncio.sleep(0.002)
    while await app.redis.client.xlen(out) < n:
        await asyncio.sleep(0.002)
    await until_acked(app, group)
    elapsed = time.perf_counter() - t0
    await app.shutdown()
    await task
    return n / elapsed


async def ohlc(url: str, n: int, group: str) -> float:
    app = App(name="bench", redis_url=url)
    consumer = app.ohlc(STREAM, intervals=[60_000, 300_000], count=COUNT, group=group)
    task = asyncio.create_task(app.run())
    await app.redis.connect()
    t0 = time.perf_counter()
    while consumer.aggregator.tick_count < n:
        await asyncio.sleep(0.002)
    await until_acked(app, group)
    elapsed = time.perf_counter() - t0
    await app.shutdown()
    await task
    return n / elapsed


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--messages", type=int, default=200_000)
    args = benchlib.parse_args(__doc__, p)
    n = 5_000 if args.quick else args.messages
    benchlib.use_uvloop()
    from streammachine.ohlc import FastOHLC

    # Numba's kernel loaded (or compiled) before any round is timed.
    FastOHLC(intervals=[60_000, 300_000]).update_arrays(["A"], [1.0], [1.0], [1])
    with benchlib.redis_url() as url:
        prefill(url, n)
        runs = {
            "naive loop": naive,
            "pipelined loop": pipelined,
            "no-op agent": agent,
            "exactly-once stage": stage,
            "FastOHLCConsumer 1m+5m": ohlc,
        }
        counter = iter(range(1_000_000))

        def variant(name: str, fn: Callable[[str, int, str], object]) -> Callable[[], float]:
            def go() -> float:
                group = f"{name.split()[0].lower()}-{next(counter)}"
                rate = float(asyncio.run(fn(url, n, group)))  # type: ignore[arg-type]
                drop_group(url, group, f"{group}-out")
                return rate

            return go

        bench = benchlib.Bench(
            f"throughput, {n:,} entries of 3 fields, COUNT {COUNT}",
            unit="msg/s",
            baselines=["naive loop", "pipelined loop"],
        )
        bench.run({name: variant(name, fn) for name, fn in runs.items()}, args.rounds)
        for name in ("naive loop", "exactly-once stage"):
            group = f"cpu-{name.split()[0]}"
            with benchlib.RedisCpu(url) as cpu:
                asyncio.run(runs[name](url, n, group))  # type: ignore[operator]
            use = cpu.result(n)
            cpu.close()
            drop_group(url, group, f"{group}-out")
            bench.notes[f"Redis CPU per entry, {name}"] = (
                f"{use.process_us_per_entry:.2f} µs process, {use.command_us_per_entry:.2f} µs "
                f"in commands ({use.breakdown()})"
            )
        header = f"{benchlib.server_version(url)}"
    benchlib.report(args, [bench], header)


if __name__ == "__main__":
    main()
