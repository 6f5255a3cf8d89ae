"""Throughput of one agent vs a hand-written redis-py XREADGROUP+XACK loop, on one server.

Usage: python scripts/bench_throughput.py [--messages N] [--count C] [--quick]

Prints msgs/s for: the hand-written loop (the baseline), one StreamMachine agent with a no-op
handler, and a read→send→ack pipeline stage (outputs committed atomically with the acks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis
import redis.asyncio as aioredis

from streammachine import App, Message
from streammachine.testing import RedisServer


def prefill(url: str, stream: str, n: int) -> None:
    r = redis.Redis.from_url(url)
    r.delete(stream)
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.xadd(stream, {"n": str(i), "payload": "x" * 16})
        pipe.execute()
    r.close()


async def baseline(url: str, stream: str, n: int, count: int) -> float:
    """The naive loop a user would write: XREADGROUP COUNT c, then XACK the batch."""
    r = aioredis.Redis.from_url(url)
    await r.xgroup_create(stream, "baseline", id="0")
    done = 0
    t0 = time.perf_counter()
    while done < n:
        reply = await r.xreadgroup("baseline", "c", {stream: ">"}, count=count, block=1000)
        if not reply:
            continue
        ids = [entry_id for entry_id, _ in reply[0][1]]
        for _entry_id, fields in reply[0][1]:
            _ = fields
        await r.xack(stream, "baseline", *ids)
        done += len(ids)
    elapsed = time.perf_counter() - t0
    await r.aclose()
    return n / elapsed


async def agent_run(
    url: str, stream: str, n: int, count: int, stage: bool, rate_limit: str | None = None
) -> float:
    app = App(name="bench", redis_url=url)
    group = ("stage" if stage else "agent") + ("-limited" if rate_limit else "")

    if stage:

        @app.agent(stream, group=group, count=count)
        async def handler(record: Message) -> None:
            await app.send("bench-out", {"n": record.message["n"]})
    else:

        @app.agent(stream, group=group, count=count, rate_limit=rate_limit)
        async def handler(record: Message) -> None:
            pass

    agent = app.agents[0]
    task = asyncio.create_task(app.run())
    await app.redis.connect()
    t0 = time.perf_counter()
    while agent.stats.processed < n:
        await asyncio.sleep(0.001)
    if stage:
        while await app.redis.client.xlen("bench-out") < n:
            await asyncio.sleep(0.001)
    else:
        while (await app.redis.client.xpending(stream, group))["pending"]:
            await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    await app.shutdown()
    await task
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="50k messages")
    args = parser.parse_args()
    n = 50_000 if args.quick else args.messages
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with RedisServer() as server:
        url = server.url
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        print(f"redis-server {version}, {n:,} small messages, COUNT {args.count}")
        prefill(url, "bench", n)
        base = asyncio.run(baseline(url, "bench", n, args.count))
        agent = asyncio.run(agent_run(url, "bench", n, args.count, stage=False))
        stage = asyncio.run(agent_run(url, "bench", n, args.count, stage=True))
        limited = asyncio.run(
            agent_run(url, "bench", n, args.count, stage=False, rate_limit="100000000/s")
        )
        rows = [
            ("hand-written redis-py XREADGROUP+XACK loop", base, "baseline", None),
            ("StreamMachine agent, no-op handler", agent, f"{agent / base:.2f}x", 1.5),
            ("pipeline stage read->send->ack (atomic)", stage, f"{stage / base:.2f}x", 0.6),
        ]
        for label, rate, ratio, target in rows:
            goal = (
                ""
                if target is None
                else f"  target >= {target}x: " + ("met" if rate / base >= target else "NOT met")
            )
            print(f"  {label:<44}: {rate:>10,.0f} msg/s  ({ratio}){goal}")
        over = 1 - limited / agent
        print(
            f"  {'no-op agent, rate_limit far above its pace':<44}: {limited:>10,.0f} msg/s  "
            f"({limited / agent:.2f}x the unlimited agent; overhead {over:.1%}, target <= 5%: "
            + ("met" if over <= 0.05 else "NOT met")
            + ")"
        )


if __name__ == "__main__":
    main()
