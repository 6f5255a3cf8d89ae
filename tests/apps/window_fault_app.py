"""The window fault proofs' stage (tests/test_window_faults.py): a partitioned window agent, in
group `stage` so the fault matrix's measurements (tests/matrix_check.py) read its pending
entries and fences. Configured by the environment: WIN_STREAM (the input, default `trades`;
`{trades}` keeps every partition, its late stream and the output in one cluster slot), WIN_TO
(the output, default `bars`), WIN_KIND (tumbling | session), WIN_PARTITIONS, WIN_COUNT (entries
per read), WIN_DELAY_S (blocking work per entry, so faults land mid-stream), WIN_LEASE_MS.
Inputs: fields sym, ts (ms), qty, px."""

import os
import time

from streammachine import App, Message
from streammachine import windows as w

app = App(name="winfaults")
KINDS = {"tumbling": w.tumbling(10), "session": w.session(gap=3)}
DELAY_S = float(os.environ.get("WIN_DELAY_S", "0"))


def sym(record: Message) -> str:
    if DELAY_S:
        time.sleep(DELAY_S)  # CPU work, so faults land mid-stream
    return record.message["sym"]


bars = app.window(
    os.environ.get("WIN_STREAM", "trades"),
    "stage",
    name="bars",
    kind=KINDS[os.environ.get("WIN_KIND", "tumbling")],
    key=sym,
    time="ts",
    agg={
        "n": w.count(),
        "qty": w.sum("qty"),
        "hi": w.max("px"),
        "lo": w.min("px"),
        "avg": w.mean("px"),
        "open": w.first("px"),
        "close": w.last("px"),
    },
    grace_s=2,
    to=os.environ.get("WIN_TO", "bars"),
    partitions=int(os.environ.get("WIN_PARTITIONS", "2")) or None,
    count=int(os.environ.get("WIN_COUNT", "20")),
    lease_ms=int(os.environ.get("WIN_LEASE_MS", "1500")),
)
