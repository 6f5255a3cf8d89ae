"""Rows/s of an XREAD reply → DataFrame: `streams_to_dataframe` against a naive list-of-dicts
baseline, on the same reply in the same run.

    .venv/bin/python scripts/bench_frames.py [--rounds 5] [--entries 100000] [--quick] [--json]

The reply is what redis-py gives for XREAD on a RESP2 connection (bytes ids, a dict of bytes
fields per entry), 100k entries of 4 fields; `streams_to_dataframe` is also timed on the RESP3
shape and on raw flat field lists. Variants alternate, one call each per round; below the table,
the cost of one call on a 10-entry reply (the fixed pandas cost). --quick: 5,000 entries, 2 rounds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import benchlib
import pandas as pd

from streammachine.frames import streams_to_dataframe


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


def timed(fn: Callable[[], Any], rows: int) -> Callable[[], float]:
    """A variant: one call of `fn`, as rows/s."""

    def go() -> float:
        gc.collect()
        start = time.perf_counter()
        fn()
        return rows / (time.perf_counter() - start)

    return go


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--entries", type=int, help="number of entries (default 100,000)")
    args = benchlib.parse_args(__doc__, p)
    n = args.entries or (5_000 if args.quick else 100_000)
    reply = make_reply(n)
    resp3 = {name: [entries] for name, entries in reply}  # redis-py's RESP3 XREAD shape
    raw = [[name, [(i, [x for kv in f.items() for x in kv]) for i, f in e]] for name, e in reply]
    pd.testing.assert_frame_equal(streams_to_dataframe(reply), naive(reply))
    pd.testing.assert_frame_equal(streams_to_dataframe(resp3), naive(reply))

    bench = benchlib.Bench(
        f"XREAD reply -> DataFrame, {n:,} entries x 4 fields", "rows/s", baselines=["naive"]
    )
    bench.run(
        {
            "naive": timed(lambda: naive(reply), n),
            "streams_to_dataframe": timed(lambda: streams_to_dataframe(reply), n),
            "streams_to_dataframe, RESP3": timed(lambda: streams_to_dataframe(resp3), n),
            "streams_to_dataframe, raw": timed(lambda: streams_to_dataframe(raw), n),
        },
        args.rounds,
    )
    small = make_reply(10)  # what a live consumer converts per XREAD (COUNT 10)
    per_call = timed(lambda: [streams_to_dataframe(small) for _ in range(200)], 200)
    bench.notes["a 10-entry reply, µs per call"] = 1e6 / benchlib.median(
        [per_call() for _ in range(args.rounds)]
    )
    benchlib.report(args, [bench])


if __name__ == "__main__":
    main()
