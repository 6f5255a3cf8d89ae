"""A counting stage with a table vs the plain stage, on a throwaway redis-server.

Both stages read N entries and send one output each; the table stage also does, per entry,
`counts.add(key)` and `sums.add(key, n)` (50 keys), staged in the batch's commit. Rounds
alternate which variant goes first, so drifts in machine load hit both alike; medians and the
min-max of the per-round ratios reported.

    .venv/bin/python scripts/bench_state.py [--n 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import redis

from streammachine import App, Message
from streammachine.testing import RedisServer, TestApp

KEYS = 50


def build(url: str, stateful: bool) -> App:
    app = App(name="bench-state", redis_url=url)
    counts = app.table("counts", default=0, schema=int, stream="in")
    sums = app.table("sums", default=0, schema=int, stream="in")

    @app.agent("in", group="g", count=100)
    async def stage(record: Message) -> None:
        fields = record.data[1]
        if stateful:
            n = int(fields[b"n"])
            key = f"k{n % KEYS}"
            await counts.add(key)
            await sums.add(key, n)
        await app.send("out", {"n": fields[b"n"]})

    return app


async def one(url: str, n: int, stateful: bool) -> float:
    """Entries/s of one stage over `n` fresh entries."""
    r = redis.Redis.from_url(url)
    r.flushdb()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("in", {"n": i})
    pipe.execute()
    app = build(url, stateful)
    t0 = time.perf_counter()
    async with TestApp(app, url=url) as t:
        await t.run_until_idle(timeout_s=600)
    seconds = time.perf_counter() - t0
    assert r.xlen("out") == n, "every entry has its output"
    if stateful:
        total = sum(int(v) for v in r.hvals("streammachine:table:{in}:counts"))
        assert total == n, f"the counts add up to {total}, not {n}"
    r.close()
    return n / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plain: list[float] = []
    table: list[float] = []
    with RedisServer() as server:
        for k in range(args.rounds):
            for stateful in (False, True) if k % 2 == 0 else (True, False):
                (table if stateful else plain).append(await one(server.url, args.n, stateful))
    p, t = statistics.median(plain), statistics.median(table)
    ratios = [tv / pv for tv, pv in zip(table, plain, strict=True)]
    print(f"entries={args.n} rounds={args.rounds}")
    print(f"plain stage        {p:10.0f} entries/s (median)")
    print(f"table stage        {t:10.0f} entries/s (median; 2 table changes per entry)")
    print(f"table / plain      {t / p:10.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    asyncio.run(main())
