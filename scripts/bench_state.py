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
from typing import Any

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


def redis_cpu_s(r: redis.Redis) -> float:
    info: Any = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one(url: str, n: int, stateful: bool, cpu: list[float] | None = None) -> float:
    """Entries/s of one stage over `n` fresh entries; appends to `cpu` the CPU µs per entry
    of this process and of Redis (steadier than entries/s on a loaded machine)."""
    r = redis.Redis.from_url(url)
    r.flushdb()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("in", {"n": i})
    pipe.execute()
    app = build(url, stateful)
    t0, c0, r0 = time.perf_counter(), time.process_time(), redis_cpu_s(r)
    async with TestApp(app, url=url) as t:
        await t.run_until_idle(timeout_s=600)
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu += [(time.process_time() - c0) * 1e6 / n, (redis_cpu_s(r) - r0) * 1e6 / n]
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
    cpu: dict[bool, list[list[float]]] = {False: [], True: []}
    with RedisServer() as server:
        for k in range(args.rounds):
            for stateful in (False, True) if k % 2 == 0 else (True, False):
                used: list[float] = []
                rate = await one(server.url, args.n, stateful, used)
                (table if stateful else plain).append(rate)
                cpu[stateful].append(used)
    p, t = statistics.median(plain), statistics.median(table)
    ratios = [tv / pv for tv, pv in zip(table, plain, strict=True)]
    print(f"entries={args.n} rounds={args.rounds}")
    print(f"plain stage        {p:10.0f} entries/s (median)")
    print(f"table stage        {t:10.0f} entries/s (median; 2 table changes per entry)")
    print(f"table / plain      {t / p:10.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f})")
    for name, rows in (("plain", cpu[False]), ("table", cpu[True])):
        py, rd = statistics.median(u[0] for u in rows), statistics.median(u[1] for u in rows)
        print(f"{name} CPU per entry  {py:6.1f} µs Python, {rd:5.1f} µs Redis (medians)")
    per = [sum(u) for u in cpu[False]], [sum(u) for u in cpu[True]]
    print(f"by CPU, table / plain {statistics.median(per[0]) / statistics.median(per[1]):7.2f}x "
          "(plain's Python + Redis µs per entry ÷ the table stage's)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
