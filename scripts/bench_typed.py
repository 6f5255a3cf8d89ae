"""Typed messages: decoding a msgspec Struct from a field map vs a packed payload.

Usage: python scripts/bench_typed.py [--messages N] [--quick]

Prints, for the same ticks: the decode cost alone (µs/msg) and end-to-end msgs/s from Redis
through one agent with `schema=Tick` (per-message and batch handlers), field map vs msgpack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec
import redis

from streammachine import App, Message
from streammachine.codec import StructCodec
from streammachine.testing import RedisServer


class Tick(msgspec.Struct):
    symbol: str
    price: float
    volume: float
    ts: int


TICK = Tick("AAPL", 150.25, 100.0, 1_700_000_000_000)


def decode_cost(n: int) -> None:
    for payload in ("fields", "msgpack"):
        codec = StructCodec(Tick, payload)  # type: ignore[arg-type]
        encoded = codec.encode(TICK)
        flat: list[bytes] = []
        for k, v in encoded.items():
            flat += [
                k.encode() if isinstance(k, str) else k,
                v.encode() if isinstance(v, str) else v,
            ]
        t0 = time.perf_counter()
        for _ in range(n):
            codec.decode(flat)
        us = (time.perf_counter() - t0) / n * 1e6
        print(f"  decode only, {payload:8s}: {us:6.2f} µs/msg")


def prefill(url: str, stream: str, n: int, payload: str) -> None:
    codec = StructCodec(Tick, payload)  # type: ignore[arg-type]
    fields = codec.encode(TICK)
    r = redis.Redis.from_url(url)
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for _ in range(start, min(n, start + 10_000)):
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()
    r.close()


async def run_agent(url: str, stream: str, n: int, payload: str, batch: bool) -> float:
    app = App(name="bench", redis_url=url)
    if batch:

        @app.agent(stream, group=f"g{batch}", count=1000, schema=Tick, payload=payload, batch=True)  # type: ignore[arg-type]
        async def handle_batch(records: list[Message]) -> None:
            pass
    else:

        @app.agent(stream, group=f"g{batch}", count=500, schema=Tick, payload=payload)  # type: ignore[arg-type]
        async def handle(record: Message) -> None:
            pass

    agent = app.agents[0]
    task = asyncio.create_task(app.run())
    t0 = time.perf_counter()
    while agent.stats.processed < n:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    await app.shutdown()
    await task
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 50_000 if args.quick else args.messages
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"typed messages: {n:,} ticks of 4 fields")
    decode_cost(200_000)
    with RedisServer() as server:
        results = {}
        for payload in ("fields", "msgpack"):
            prefill(server.url, f"t-{payload}", n, payload)
            for batch in (False, True):
                rate = asyncio.run(run_agent(server.url, f"t-{payload}", n, payload, batch))
                results[(payload, batch)] = rate
                kind = "batch handler" if batch else "per-message handler"
                print(f"  end to end, {payload:8s}, {kind:20s}: {rate:>10,.0f} msg/s")
        for batch in (False, True):
            ratio = results[("msgpack", batch)] / results[("fields", batch)]
            print(f"  packed vs field map ({'batch' if batch else 'per-message'}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
