"""FastOHLC against a pure-Python per-tick aggregator and pandas, on the same ticks, and
FastOHLCConsumer end to end against a hand-written redis-py read+ack loop on the same server.

    .venv/bin/python scripts/bench_ohlc.py [--rounds 5] [--quick] [--only kernel|e2e] [--json]

5M ticks (50k with --quick), 50 symbols, 1m and 5m candles, about one tick per ms in time order.
Every table's variants run in alternating rounds (each on a fresh aggregator); medians, and the
per-round ratio to the baseline:

- batches (ticks/s; baseline pandas groupby): pandas groupby + resample, `update_arrays` with
  int-coded symbols, with a NumPy str array and with an object array of str (mapping included),
  `process_stream_batch` on an XREADGROUP-shaped reply (bytes ids and fields);
- one tick at a time (300k ticks; baseline a pure-Python dict aggregator): `update_tick` on the
  compiled path and its pure-Python twin, one Numba call per tick; below it, the first-call time
  of the kernel in a fresh process with a cold Numba cache (compiling), then in a second fresh
  process (loading from the cache);
- end to end (ticks/s; 300k prefilled ticks, 5k with --quick): FastOHLCConsumer (acks, candles
  and state committed atomically per batch) against a hand-written redis-py + hiredis
  XREADGROUP/XACK loop over the same ticks on the same server with the same COUNT, each round in
  its own groups; CPU per tick of this process and of the server below it.

Targets (issue 16): `update_arrays` with an object array of str >= 20 M ticks/s in every round,
and the consumer >= 1.0x the loop.
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

import benchlib
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
    p = benchlib.parser(__doc__)
    p.add_argument("--only", choices=["kernel", "e2e"], help="run one part")
    args = benchlib.parse_args(__doc__, p)
    benches: list[benchlib.Bench] = []
    if args.only != "e2e":
        benches += kernels_part(args)
    if args.only != "kernel":
        benches += end_to_end_part(args)
    benchlib.report(
        args, benches, f"python {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, {os.cpu_count()} cpus; {SYMBOLS} symbols, intervals {INTERVALS} ms"
    )  # fmt: skip


def ok(passed: bool) -> str:
    return "OK" if passed else "MISSES"


def rate_of(fn: Callable[[], Any], n: int) -> Callable[[], float]:
    """A variant: ticks/s of one call of `fn` over `n` ticks."""

    def go() -> float:
        t0 = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t0)

    return go


def kernels_part(args: argparse.Namespace) -> list[benchlib.Bench]:
    n = 50_000 if args.quick else 5_000_000
    codes, names, px, vol, ts = make_ticks(n)
    objects = names.astype(object)
    if not kernel.kernels(None).jit:
        sys.exit(
            "numba is not active (missing, or STREAMMACHINE_DISABLE_JIT=1): nothing to compare"
        )

    def fresh() -> FastOHLC:
        agg = FastOHLC(intervals=INTERVALS)
        agg.symbol_codes(NAMES)  # code i is SYM{i}
        return agg

    agg = fresh()  # compile (or load from the cache) before timing
    agg.update_arrays(codes[:1000], px[:1000], vol[:1000], ts[:1000])
    agg.update_arrays(names[:1000], px[:1000], vol[:1000], ts[:1000])

    k = min(n, STREAM_N)  # an XREADGROUP reply as redis-py gives it: bytes ids and fields
    reply = [[b"ticks", [
        (f"{t}-0".encode(), {b"symbol": s.encode(), b"price": repr(p).encode(), b"volume": repr(v).encode()})
        for s, p, v, t in zip(names[:k].tolist(), px[:k].tolist(), vol[:k].tolist(), ts[:k].tolist(), strict=True)
    ]]]  # fmt: skip
    df = pd.DataFrame({"symbol": names, "price": px, "volume": vol, "ts": ts})

    # The figures mean something only if the candles agree.
    check = fresh()
    check.update_arrays(names, px, vol, ts)
    ref = pandas_groupby(df)[0].loc["SYM07"]
    got = check.get_candles("SYM07", INTERVALS[0])
    assert [c.candle_start_ms for c in got] == ref.index.tolist()
    assert [c.close for c in got] == ref["close"].tolist() and [c.trade_count for c in got] == ref[
        "trades"
    ].tolist()

    batch = benchlib.Bench(f"batches, {n:,} ticks", "ticks/s", baselines=["pandas groupby"])
    batch.run(
        {
            "pandas groupby": rate_of(lambda: pandas_groupby(df), n),
            "pandas groupby + resample().ohlc()": rate_of(lambda: pandas_resample(df), n),
            "update_arrays, int codes": rate_of(lambda: fresh().update_arrays(codes, px, vol, ts), n),
            "update_arrays, str array (<U5)": rate_of(lambda: fresh().update_arrays(names, px, vol, ts), n),
            "update_arrays, object array of str": rate_of(lambda: fresh().update_arrays(objects, px, vol, ts), n),
            f"process_stream_batch, {k:,} entries": rate_of(
                lambda: FastOHLC(intervals=INTERVALS).process_stream_batch(reply), k
            ),
        },
        args.rounds,
    )  # fmt: skip
    worst = min(batch.results["update_arrays, object array of str"])
    batch.notes["update_arrays, object array of str, worst round (target >= 20 M every round)"] = (
        f"{worst / 1e6:.1f} M ticks/s {ok(worst >= 20e6)}"
    )

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

    numba_call_per_tick()  # its 1-element signature compiled (or loaded) before timing
    tick = benchlib.Bench(f"one tick at a time, {m:,} ticks", "ticks/s", ["dict aggregator"])
    tick.run(
        {
            "dict aggregator": rate_of(lambda: dict_aggregator(*lists), m),
            "update_tick (compiled path)": rate_of(per_tick(True), m),
            "update_tick (pure-Python twin)": rate_of(per_tick(False), m),
            "one Numba call per tick": rate_of(numba_call_per_tick, m),
        },
        args.rounds,
    )
    (imp1, first1), (imp2, first2) = first_call_times()
    tick.notes["first call, fresh process, cold Numba cache (compiles)"] = (
        f"{first1:.2f} s (+ import numba {imp1:.2f} s)"
    )
    tick.notes["first call, second fresh process (loads from the cache)"] = (
        f"{first2:.2f} s (+ import numba {imp2:.2f} s)"
    )
    return [batch, tick]


COUNT = 1000  # FastOHLCConsumer's default batch; the loop reads with the same COUNT


def end_to_end_part(args: argparse.Namespace) -> list[benchlib.Bench]:
    """The consumer and the hand-written loop on one prefilled tick stream, each round in its own
    consumer groups, alternated (a burst of load on the machine then hits both alike)."""
    import redis

    n = 5_000 if args.quick else 300_000
    FastOHLC().update_arrays(np.array(["A"]), [1.0], [1.0], [1])  # the kernel loaded, not timed
    counter = iter(range(1_000_000))
    with benchlib.redis_url() as url:
        r = redis.Redis.from_url(url)
        prefill(r, n)
        cpu: dict[str, list[float]] = {"loop": [0.0, 0.0], "consumer": [0.0, 0.0]}

        def timed(name: str, run: Callable[[str, int, str], float]) -> Callable[[], float]:
            """The run's rate; its CPU (this process, and the server) added to cpu[name]."""

            def go() -> float:
                group = f"{name}{next(counter)}"
                before = time.process_time(), server_cpu_s(r)
                rate = run(url, n, group)
                cpu[name][0] += time.process_time() - before[0]
                cpu[name][1] += server_cpu_s(r) - before[1]
                r.xgroup_destroy("ticks", group)
                return rate

            return go

        bench = benchlib.Bench(
            f"end to end, {n:,} ticks, COUNT {COUNT}, one worker",
            "ticks/s",
            ["hand-written XREADGROUP+XACK loop"],
        )
        bench.run(
            {
                "hand-written XREADGROUP+XACK loop": timed("loop", loop_rate),
                "FastOHLCConsumer (atomic commit per batch)": timed("consumer", consumer_rate),
            },
            args.rounds,
        )
        r.xtrim("ticks", maxlen=0)
        r.close()
        bench.title += f", {benchlib.server_version(url)}"
    # CPU time is steadier than throughput on a shared machine: it leaves out waiting for a core.
    for name, (py_s, server_s) in cpu.items():
        bench.notes[f"CPU per tick, {name}"] = (
            f"Python {py_s / args.rounds / n * 1e6:.2f} µs + "
            f"redis-server {server_s / args.rounds / n * 1e6:.2f} µs"
        )
    bench.notes["target"] = "FastOHLCConsumer >= 1.0x the loop"
    return [bench]


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
