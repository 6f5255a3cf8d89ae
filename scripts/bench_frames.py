"""Rows/s of XREAD output → DataFrame: streams_to_dataframe (the documented one), the fast name
and a naive list-of-dicts baseline, on the same reply in the same run.

The reply is what redis-py gives for XREAD on a RESP2 connection (bytes ids, a dict of bytes
fields per entry), 100k entries of 4 fields (20k with --quick); it is also timed on the RESP3
shape and on raw flat field lists. Each figure is the best of several runs, the two public
functions timed in alternation so that both see the same machine load. The last lines hold each
figure against its target: >= 1 M rows/s, and within 20 % of the fast path (>= 0.8x).

    .venv/bin/python scripts/bench_frames.py [--quick] [--entries N]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from streammachine.frames import streams_to_dataframe, streams_to_dataframe_fast

TARGET_ROWS_S = 1_000_000


def make_reply(n: int) -> list[Any]:
    entries = [
        (
            f"{1_700_000_000_000 + i // 4}-{i % 4}".encode(),
            {
                b"symbol": (b"AAPL", b"MSFT", b"NVDA")[i % 3],
                b"price": f"{100 + (i % 5000) * 0.01:.2f}".encode(),
                b"size": str(1 + i % 500).encode(),
                b"side": b"buy" if i % 2 else b"sell",
            },
        )
        for i in range(n)
    ]
    return [[b"ticks", entries]]


def naive(reply: list[Any]) -> pd.DataFrame:
    """What one writes first: a dict per row, then pd.DataFrame."""
    rows = []
    for stream, entries in reply:
        for entry_id, fields in entries:
            row = {"stream": stream.decode(), "id": entry_id.decode()}
            row["timestamp_ms"] = int(entry_id.split(b"-")[0])
            row.update({k.decode(): v.decode() for k, v in fields.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def best_s(fn: Callable[[], Any], repeats: int) -> float:
    return min(timed(fn, repeats))


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k entries instead of 100k")
    parser.add_argument("--entries", type=int, help="number of entries (overrides --quick)")
    args = parser.parse_args()
    n = args.entries or (20_000 if args.quick else 100_000)
    reply = make_reply(n)
    resp3 = {name: [entries] for name, entries in reply}  # redis-py's RESP3 XREAD shape
    raw = [[name, [(i, [x for kv in f.items() for x in kv]) for i, f in e]] for name, e in reply]
    pd.testing.assert_frame_equal(streams_to_dataframe_fast(reply), streams_to_dataframe(reply))
    pd.testing.assert_frame_equal(streams_to_dataframe(reply), naive(reply))

    plain_runs: list[float] = []
    fast_runs: list[float] = []
    for _ in range(7):  # alternated: a burst of load on the machine hits both alike
        plain_runs += timed(lambda: streams_to_dataframe(reply), 1)
        fast_runs += timed(lambda: streams_to_dataframe_fast(reply), 1)
    times = {
        "streams_to_dataframe": min(plain_runs),
        "streams_to_dataframe_fast": min(fast_runs),
        "  … RESP3 dict shape": best_s(lambda: streams_to_dataframe(resp3), 5),
        "  … raw flat field lists": best_s(lambda: streams_to_dataframe(raw), 5),
        "naive list of dicts → DataFrame": best_s(lambda: naive(reply), 3),
    }
    fast_s = times["streams_to_dataframe_fast"]
    print(f"{n:,} entries x 4 fields (bytes, RESP2 XREAD shape unless noted); best of 3-7 runs")
    print(f"{'':34} {'ms':>9} {'rows/s':>12} {'time/fast':>9}")
    for name, seconds in times.items():
        ratio = seconds / fast_s
        print(f"{name:34} {seconds * 1e3:9.1f} {n / seconds:12,.0f} {ratio:8.2f}x")
    small = make_reply(10)  # what a live consumer converts per XREAD (COUNT 10)
    small_s = best_s(lambda: [streams_to_dataframe(small) for _ in range(200)], 5) / 200
    print(f"a 10-entry reply: {small_s * 1e6:.0f} µs per call (fixed pandas cost dominates)")
    plain_rate = n / times["streams_to_dataframe"]
    ratio = fast_s / times["streams_to_dataframe"]
    naive_ratio = times["naive list of dicts → DataFrame"] / times["streams_to_dataframe"]

    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISSES"

    print(
        f"streams_to_dataframe {plain_rate / 1e6:.2f} M rows/s = {ratio:.2f}x fast path "
        f"(target >= 0.8x) {verdict(ratio >= 0.8)}"
    )
    print(
        f"streams_to_dataframe {plain_rate / 1e6:.2f} M rows/s (target >= 1.00 M) "
        f"{verdict(plain_rate >= TARGET_ROWS_S)}; {naive_ratio:.1f}x the naive baseline"
    )


if __name__ == "__main__":
    main()
