"""FastOHLC against a pure-Python per-tick aggregator and pandas, on the same ticks, and
FastOHLCConsumer end to end against a hand-written redis-py read+ack loop on the same server.

5M ticks (500k with --quick), 50 symbols, 1m and 5m candles, about one tick per ms in time order.
Figures are the best of several rounds (5 for batches, 3 for per-tick loops and the dict
baseline, 2 for resample, 1 for the slow per-tick variants), each on a fresh aggregator:

- the batch kernel over int-coded symbols (`update_arrays` with codes), ticks/s
- `update_arrays` with a NumPy array of symbol strings (mapping included), ticks/s
- per-tick `update_tick`, µs/tick (compiled path; the pure-Python twin beside it), and one
  Numba call per tick for comparison
- `process_stream_batch` on an XREADGROUP-shaped reply (bytes ids and fields), ticks/s
- a pure-Python dict aggregator per tick, pandas groupby and pandas resample, ticks/s
- first-call time of the kernel in a fresh process with a cold Numba cache (compiling), then in a
  second fresh process (loading from the cache)
- end to end: ticks/s from a prefilled stream through FastOHLCConsumer (acks, candles and state
  committed atomically per batch) beside a hand-written redis-py + hiredis XREADGROUP/XACK loop
  over the same ticks on the same server with the same COUNT, alternated, the median of 3 pairs

The last lines hold each figure against its target (issue 16): `update_arrays` with an object
array of str >= 20 M ticks/s in every round, and the consumer >= 1.0x the loop.

    .venv/bin/python scripts/bench_ohlc.py [--quick] [--only kernel|e2e]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from streammachine.ohlc import FastOHLC, kernel

SYMBOLS = 50
INTERVALS = (60_000, 300_000)
T0 = 1_700_000_000_000
PER_TICK_N = 300_000  # per-tick loops run on this many ticks, to keep the run short
STREAM_N = 200_000  # stream entries parsed by process_stream_batch


NAMES = np.array([f"SYM{i:02d}" for i in range(SYMBOLS)])


def make_ticks(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(codes, symbol strings, prices, volumes, times): about one tick per ms, in time order."""
    rng = np.random.default_rng(42)
    codes = rng.integers(0, SYMBOLS, n).astype(np.int64)
    ts = T0 + np.cumsum(rng.integers(0, 3, n)).astype(np.int64)
    px = 100.0 + rng.standard_normal(n).cumsum() * 0.01
    vol = rng.integers(1, 100, n).astype(np.float64)
    return codes, NAMES[codes], px, vol, ts


def best(fn: Callable[[], Any], rounds: int) -> float:
    """The shortest wall time of `rounds` calls, in seconds."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def dict_aggregator(
    symbols: list[str], px: list[float], vol: list[float], ts: list[int]
) -> dict[Any, list[Any]]:
    """The plain-Python baseline: a dict of candle lists, per tick and interval."""
    candles: dict[Any, list[Any]] = {}
    for s, p, v, t in zip(symbols, px, vol, ts, strict=True):
        for iv in INTERVALS:
            key = (s, iv, t // iv)
            c = candles.get(key)
            if c is None:
                candles[key] = [p, p, p, p, v, 1, t, t]
                continue
            if p > c[1]:
                c[1] = p
            if p < c[2]:
                c[2] = p
            c[4] += v
            c[5] += 1
            if t < c[6]:
                c[6], c[0] = t, p
            if t >= c[7]:
                c[7], c[3] = t, p
    return candles


def pandas_groupby(df: pd.DataFrame) -> list[pd.DataFrame]:
    out = []
    for iv in INTERVALS:
        start = df["ts"] // iv * iv
        g = df.groupby([df["symbol"], start], sort=True)
        out.append(g.agg(open=("price", "first"), high=("price", "max"), low=("price", "min"),
                         close=("price", "last"), volume=("volume", "sum"), trades=("price", "size")))  # fmt: skip
    return out


def pandas_resample(df: pd.DataFrame) -> list[pd.DataFrame]:
    frame = df.set_index(pd.to_datetime(df["ts"], unit="ms"))
    out = []
    for iv in INTERVALS:
        g = frame.groupby("symbol").resample(f"{iv // 1000}s")
        ohlc = g["price"].ohlc()
        ohlc["volume"] = g["volume"].sum()
        out.append(ohlc.dropna())
    return out


FIRST_CALL = """
import time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import numpy as np
from streammachine.ohlc import FastOHLC
agg = FastOHLC()
agg.update_arrays(np.array(["A"]), [1.0], [1.0], [1])
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_times() -> list[tuple[float, float]]:
    """(numba import s, first call s) in two fresh processes sharing a new, empty cache dir."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            a, b = out.stdout.split()
            runs.append((float(a), float(b)))
        return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500k ticks instead of 5M")
    parser.add_argument("--only", choices=["kernel", "e2e"], help="run one part")
    args = parser.parse_args()
    verdicts: list[str] = []
    if args.only != "e2e":
        verdicts += kernels_part(args)
    if args.only != "kernel":
        verdicts += end_to_end_part(args)
    print()
    for line in verdicts:
        print(line)


def ok(passed: bool) -> str:
    return "OK" if passed else "MISSES"


def kernels_part(args: argparse.Namespace) -> list[str]:
    n = 500_000 if args.quick else 5_000_000
    rounds = 5
    codes, names, px, vol, ts = make_ticks(n)
    objects = names.astype(object)
    print(f"{n:,} ticks, {SYMBOLS} symbols, intervals {INTERVALS} ms; python {platform.python_version()}, "
          f"numpy {np.__version__}, pandas {pd.__version__}, {os.cpu_count()} cpus")  # fmt: skip
    if not kernel.kernels(None).jit:
        sys.exit(
            "numba is not active (missing, or STREAMMACHINE_DISABLE_JIT=1): nothing to compare"
        )

    rows: list[tuple[str, float]] = []

    def fresh() -> FastOHLC:
        agg = FastOHLC(intervals=INTERVALS)
        agg.symbol_codes(NAMES)  # code i is SYM{i}
        return agg

    agg = fresh()  # compile (or load from the cache) before timing
    agg.update_arrays(codes[:1000], px[:1000], vol[:1000], ts[:1000])
    agg.update_arrays(names[:1000], px[:1000], vol[:1000], ts[:1000])

    def run(symbols: Any) -> Callable[[], Any]:
        def go() -> None:
            fresh().update_arrays(symbols, px, vol, ts)

        return go

    # Codes and object arrays alternated, so both see the same machine load; every round kept.
    code_s: list[float] = []
    object_s: list[float] = []
    for _ in range(rounds):
        code_s.append(best(run(codes), 1))
        object_s.append(best(run(objects), 1))
    rows.append(("batch kernel, int codes (update_arrays)", n / min(code_s)))
    rows.append(("update_arrays, str array (<U5)", n / best(run(names), rounds)))
    rows.append(("update_arrays, object array of str", n / min(object_s)))
    worst = n / max(object_s)
    verdicts = [
        f"update_arrays, object array of str: {n / min(object_s) / 1e6:.1f} M ticks/s best, "
        f"{worst / 1e6:.1f} M worst of {rounds} rounds (target >= 20 M every round) "
        f"{ok(worst >= 20e6)}; {min(code_s) / min(object_s):.2f}x the int-code kernel's "
        f"{n / min(code_s) / 1e6:.1f} M, measured beside it"
    ]

    m = min(n, PER_TICK_N)
    lists = (names[:m].tolist(), px[:m].tolist(), vol[:m].tolist(), ts[:m].tolist())

    def per_tick(jit: bool) -> Callable[[], Any]:
        def go() -> None:
            a = FastOHLC(intervals=INTERVALS, jit=jit)
            update = a.update_tick
            for s, p, v, t in zip(*lists, strict=True):
                update(s, p, v, t)
            assert a.tick_count == m

        return go

    def numba_call_per_tick() -> None:
        """The compiled batch function called once per tick, on 1-element arrays."""
        st = FastOHLC(intervals=INTERVALS, jit=True)._store
        st.ensure_symbols(SYMBOLS)
        while st.ci.shape[0] < 4 * m // 1000 + 4096:  # room for every candle: no regrowth
            st._grow()
        fn, ident = st.kernels.apply_batch, np.arange(SYMBOLS)
        state = (st.ci, st.cf, st.sk, st.free, st.meta)
        one_s, one_t = np.zeros(1, np.int64), np.zeros(1, np.int64)
        one_p, one_v = np.zeros(1), np.zeros(1)
        for s, p, v, t in zip(codes[:m].tolist(), *lists[1:], strict=True):
            one_s[0], one_p[0], one_v[0], one_t[0] = s, p, v, t
            fn(*state, INTERVALS, ident, one_s, one_p, one_v, one_t, 0)
        assert st.meta[kernel.TICKS] == m

    tick_jit = best(per_tick(True), 3) / m
    tick_py = best(per_tick(False), 1) / m
    tick_numba = best(numba_call_per_tick, 1) / m
    dict_s = best(lambda: dict_aggregator(*lists), 3) / m
    rows.append(("update_tick per tick (compiled path)", 1 / tick_jit))
    rows.append(("update_tick per tick (pure-Python twin)", 1 / tick_py))
    rows.append(("one Numba call per tick", 1 / tick_numba))
    rows.append(("pure-Python dict aggregator per tick", 1 / dict_s))

    k = min(n, STREAM_N)  # an XREADGROUP reply as redis-py gives it: bytes ids and fields
    reply = [[b"ticks", [
        (f"{t}-0".encode(), {b"symbol": s.encode(), b"price": repr(p).encode(), b"volume": repr(v).encode()})
        for s, p, v, t in zip(names[:k].tolist(), px[:k].tolist(), vol[:k].tolist(), ts[:k].tolist(), strict=True)
    ]]]  # fmt: skip
    stream_s = best(lambda: FastOHLC(intervals=INTERVALS).process_stream_batch(reply), 3) / k
    rows.append(("process_stream_batch (RESP2, bytes)", 1 / stream_s))

    df = pd.DataFrame({"symbol": names, "price": px, "volume": vol, "ts": ts})
    groupby_s = best(lambda: pandas_groupby(df), rounds)
    rows.append(("pandas groupby", n / groupby_s))
    resample_s = best(lambda: pandas_resample(df), 2)
    rows.append(("pandas groupby + resample().ohlc()", n / resample_s))

    # The figures mean something only if the candles agree.
    check = fresh()
    check.update_arrays(names, px, vol, ts)
    ref = pandas_groupby(df)[0].loc["SYM07"]
    got = check.get_candles("SYM07", INTERVALS[0])
    assert [c.candle_start_ms for c in got] == ref.index.tolist()
    assert [c.close for c in got] == ref["close"].tolist() and [c.trade_count for c in got] == ref[
        "trades"
    ].tolist()

    groupby_rate = n / groupby_s
    dict_rate = 1 / dict_s
    print(f"\n{'path':46} {'ticks/s':>14} {'µs/tick':>9} {'x pandas':>9} {'x dict':>8}")
    for name, rate in rows:
        print(
            f"{name:46} {rate:14,.0f} {1e6 / rate:9.3f} {rate / groupby_rate:9.1f} {rate / dict_rate:8.1f}"
        )

    (imp1, first1), (imp2, first2) = first_call_times()
    print(f"\nfirst call, fresh process, cold Numba cache (compiles):  {first1:.2f} s "
          f"(+ import numba {imp1:.2f} s)")  # fmt: skip
    print(f"first call, second fresh process (loads from the cache): {first2:.2f} s "
          f"(+ import numba {imp2:.2f} s)")  # fmt: skip

    return verdicts


COUNT = 1000  # FastOHLCConsumer's default batch; the loop reads with the same COUNT


def end_to_end_part(args: argparse.Namespace) -> list[str]:
    """The consumer and the hand-written loop on one prefilled tick stream, each round in its own
    consumer groups, alternated (a burst of load on the machine then hits both alike)."""
    import redis

    from streammachine.testing import RedisServer

    n = 100_000 if args.quick else 300_000
    rounds = 5
    FastOHLC().update_arrays(np.array(["A"]), [1.0], [1.0], [1])  # the kernel loaded, not timed
    pairs: list[tuple[float, float]] = []
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        version = r.info("server")["redis_version"]
        prefill(r, n)
        cpu: dict[str, list[float]] = {"loop": [0.0, 0.0], "consumer": [0.0, 0.0]}

        def timed(name: str, run: Callable[[], float]) -> float:
            """The run's rate; its CPU (this process, and the server) added to cpu[name]."""
            before = time.process_time(), server_cpu_s(r)
            rate = run()
            cpu[name][0] += time.process_time() - before[0]
            cpu[name][1] += server_cpu_s(r) - before[1]
            return rate

        def run_loop() -> float:
            return timed("loop", lambda: loop_rate(server.url, n, f"loop{k}"))

        def run_consumer() -> float:
            return timed("consumer", lambda: consumer_rate(server.url, n, f"ohlc{k}"))

        for k in range(rounds):
            if k % 2:
                cons, loop = run_consumer(), run_loop()
            else:
                loop, cons = run_loop(), run_consumer()
            pairs.append((loop, cons))
            print(f"  round {k + 1}: loop {loop:10,.0f} ticks/s   consumer {cons:10,.0f} "
                  f"ticks/s   {cons / loop:.2f}x", flush=True)  # fmt: skip
        r.close()
    mid = rounds // 2
    ratios = sorted(c / b for b, c in pairs)
    loop_med = sorted(b for b, _ in pairs)[mid]
    cons_med = sorted(c for _, c in pairs)[mid]
    print(f"\nend to end, redis-server {version}, {n:,} ticks, COUNT {COUNT}, one worker:")
    print(f"  hand-written redis-py XREADGROUP+XACK loop {loop_med:10,.0f} ticks/s (baseline)")
    print(f"  FastOHLCConsumer (atomic commit per batch)  {cons_med:10,.0f} ticks/s")
    # CPU time is steadier than throughput on a shared machine: it leaves out waiting for a core.
    for name, (py_s, server_s) in cpu.items():
        print(f"  CPU per tick, {name:8}: Python {py_s / rounds / n * 1e6:.2f} µs + "
              f"redis-server {server_s / rounds / n * 1e6:.2f} µs")  # fmt: skip
    return [
        f"FastOHLCConsumer end to end {cons_med / 1e3:.0f} k ticks/s = {ratios[mid]:.2f}x the "
        f"hand-written loop's {loop_med / 1e3:.0f} k (median of {rounds} alternated rounds; "
        f"{ratios[0]:.2f}-{ratios[-1]:.2f}x) (target >= 1.0x) {ok(ratios[mid] >= 1.0)}"
    ]


def server_cpu_s(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def prefill(r: Any, n: int) -> None:
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.xadd("ticks", {"symbol": f"SYM{i % SYMBOLS:02d}", "price": f"{101.25 + i % 7 / 100:.2f}",
                                "volume": "3", "ts": str(T0 + i)})  # fmt: skip
        pipe.execute()


def loop_rate(url: str, n: int, group: str) -> float:
    """The loop a user writes by hand: XREADGROUP COUNT c, then XACK the batch (redis-py with
    hiredis, on uvloop, like the consumer)."""
    import redis.asyncio as aioredis
    import uvloop

    async def run() -> float:
        r = aioredis.Redis.from_url(url)
        await r.xgroup_create("ticks", group, id="0")
        done = 0
        t0 = time.perf_counter()
        while done < n:
            reply = await r.xreadgroup(group, "c", {"ticks": ">"}, count=COUNT, block=1000)
            if not reply:
                continue
            ids = [entry_id for entry_id, _fields in reply[0][1]]
            await r.xack("ticks", group, *ids)
            done += len(ids)
        elapsed = time.perf_counter() - t0
        await r.aclose()
        return n / elapsed

    return uvloop.run(run())


def consumer_rate(url: str, n: int, group: str) -> float:
    """Ticks/s from a prefilled stream through FastOHLCConsumer until every tick is acked."""
    import anyio
    import redis.asyncio as aioredis

    from streammachine import App

    async def run() -> float:
        app = App(name="bench", redis_url=url)
        consumer = app.ohlc(
            "ticks", intervals=list(INTERVALS), timestamp_field="ts", count=COUNT, group=group
        )
        probe = aioredis.Redis.from_url(url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.run)
            t0 = time.perf_counter()
            while consumer.aggregator.tick_count < n:
                await anyio.sleep(0.002)
            while (await probe.xpending("ticks", group))["pending"]:
                await anyio.sleep(0.002)
            elapsed = time.perf_counter() - t0
            await app.shutdown()
        await probe.aclose()
        return n / elapsed

    rate: float = anyio.run(run, backend_options={"use_uvloop": True})
    return rate


if __name__ == "__main__":
    main()
