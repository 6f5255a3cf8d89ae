"""A tumbling window (`App.window`) vs a plain stage over the same entries: entries/s end to end.

N entries (default 1,000,000) of 50 symbols, event times 10 ms apart in a `ts` field, are
written once to a source stream on a throwaway redis-server; every round COPYs it to a fresh
stream and runs, in alternating order, each variant until its group has acked everything:

- plain: a batch agent (same `count`) that reads every entry's fields and acks;
- window: `tumbling(60)` keyed by symbol, count + sum + max + last, emit="close", its state and
  output in each batch's commit.

Prints the median entries/s of each and the min-max of the per-round ratios, then checks the
window output of the last round equals pandas (every window the final watermark closed).

    .venv/bin/python scripts/bench_windows.py [--n 1000000] [--rounds 5] [--count 500]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import pandas as pd
import redis

from streammachine import App, Message
from streammachine import windows as w
from streammachine.testing import RedisServer

KEYS, STEP_MS, SIZE_S, GRACE_S = 50, 10, 60, 5
BASE = 1_700_000_000_000


def fill(r: redis.Redis, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("src", {"sym": f"S{i % KEYS}", "ts": BASE + i * STEP_MS,
                          "qty": i % 100, "px": 1000 + (i * 7) % 113})  # fmt: skip
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def plain_app(url: str, count: int) -> App:
    app = App(name="bench-plain", redis_url=url)

    @app.agent("in", group="plain", batch=True, count=count)
    async def stage(batch: list[Message]) -> None:
        for m in batch:
            m.message  # noqa: B018 - read the fields, as the window does

    return app


def window_app(url: str, count: int) -> App:
    app = App(name="bench-window", redis_url=url)
    agg = {"n": w.count(), "qty": w.sum("qty"), "hi": w.max("px"), "close": w.last("px")}
    app.window("in", "win", kind=w.tumbling(SIZE_S), key="sym", time="ts", agg=agg,
               grace_s=GRACE_S, to="bars", count=count)  # fmt: skip
    return app


def done(r: redis.Redis, group: str, last: bytes) -> bool:
    try:
        [g] = r.xinfo_groups("in")
    except (redis.ResponseError, ValueError):
        return False
    return bool(
        g["last-delivered-id"] == last and g["pending"] == 0 and g["name"] == group.encode()
    )


async def run_round(url: str, r: redis.Redis, make: Callable[[str, int], App], group: str,
                    n: int, count: int) -> float:  # fmt: skip
    r.delete("in")
    if group == "win":  # the window output of the last window round is checked at the end
        r.delete("bars")
    for k in r.scan_iter(match="streammachine:*"):
        r.delete(k)
    r.copy("src", "in")
    last = r.xrevrange("in", count=1)[0][0]
    app = make(url, count)
    t0, c0, r0 = time.perf_counter(), time.process_time(), redis_cpu_s(r)
    async with anyio.create_task_group() as tg:
        tg.start_soon(app.run)
        while not done(r, group, last):
            await anyio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        CPU[group].append((time.process_time() - c0 + redis_cpu_s(r) - r0) * 1e6 / n)
        await app.shutdown()
    return n / elapsed


#: group → CPU µs per entry (this process and Redis) of each round: steadier than entries/s
#: on a loaded machine.
CPU: dict[str, list[float]] = {"plain": [], "win": []}


def redis_cpu_s(r: redis.Redis) -> float:
    info: Any = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def check(r: redis.Redis, n: int) -> str:
    i = pd.RangeIndex(n)
    df = pd.DataFrame({"sym": "S" + (i % KEYS).astype(str), "ts": BASE + i * STEP_MS,
                       "qty": i % 100, "px": 1000 + (i * 7) % 113})  # fmt: skip
    size = SIZE_S * 1000
    df["start"] = df["ts"] - df["ts"] % size
    watermark = int(df["ts"].max()) - GRACE_S * 1000
    ref = df.groupby(["sym", "start"]).agg(n=("ts", "size"), qty=("qty", "sum"),
                                           hi=("px", "max"), close=("px", "last"))  # fmt: skip
    ref = ref[ref.index.get_level_values("start") + size <= watermark]
    got: dict[tuple[str, int], tuple[int, ...]] = {}
    for _, f in r.xrange("bars"):
        d = {k.decode(): v.decode() for k, v in f.items()}
        key = (d["key"], int(d["start"]))
        if key in got:
            return f"MISMATCH: window {key} emitted twice"
        got[key] = (int(d["n"]), int(d["qty"]), int(d["hi"]), int(d["close"]))
    want = {k: tuple(int(x) for x in v) for k, v in zip(ref.index, ref.to_numpy(), strict=True)}
    if got != want:
        return f"MISMATCH: {len(got)} windows, pandas {len(want)}"
    return f"equal to pandas ({len(got):,} windows, each once)"


async def bench(url: str, n: int, rounds: int, count: int) -> None:
    r = redis.Redis.from_url(url)
    fill(r, n)
    rates: dict[str, list[float]] = {"plain": [], "window": []}
    variants: list[tuple[str, Any, str]] = [("plain", plain_app, "plain"),
                                            ("window", window_app, "win")]  # fmt: skip
    for k in range(rounds):
        for name, make, group in variants if k % 2 == 0 else variants[::-1]:
            rates[name].append(await run_round(url, r, make, group, n, count))
        print(f"round {k + 1}: plain {rates['plain'][-1]:,.0f}/s  "
              f"window {rates['window'][-1]:,.0f}/s", flush=True)  # fmt: skip
    ratios = [wv / pv for wv, pv in zip(rates["window"], rates["plain"], strict=True)]
    p, wm = statistics.median(rates["plain"]), statistics.median(rates["window"])
    print(f"plain stage   {p:>10,.0f} entries/s (median of {rounds})")
    print(f"tumbling(60)  {wm:>10,.0f} entries/s  ratio {wm / p:.2f} "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    pc, wc = statistics.median(CPU["plain"]), statistics.median(CPU["win"])
    print(f"CPU per entry (Python + Redis, medians): plain {pc:.1f} µs, window {wc:.1f} µs; "
          f"by CPU, window / plain {pc / wc:.2f}x")  # fmt: skip
    print("window output:", check(r, n))
    r.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=500, help="entries per read")
    args = parser.parse_args()
    with RedisServer() as server:
        info = redis.Redis.from_url(server.url).info("server")
        print(f"redis-server {info['redis_version']} on loopback, Python "
              f"{platform.python_version()}, n={args.n:,}, {KEYS} keys, count={args.count}, "
              f"{args.rounds} alternating rounds")  # fmt: skip
        asyncio.run(bench(server.url, args.n, args.rounds, args.count))


if __name__ == "__main__":
    main()
