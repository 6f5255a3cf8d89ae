"""A window agent for tests/test_windows.py, configured by the environment:
WIN_KIND (tumbling | hopping | sliding | session), WIN_EMIT (close | update), WIN_PARTITIONS
(0 = none), WIN_COUNT (entries per read), WIN_DELAY_S (blocking work per entry, so faults land
mid-stream), WIN_LEASE_MS (the owner's lease). Input `trades`: fields sym, ts (ms), qty, px;
output `bars`."""

import os
import time

from streammachine import App, Message
from streammachine import windows as w

app = App(name="windows")
KINDS = {
    "tumbling": w.tumbling(10),
    "hopping": w.hopping(10, 5),
    "sliding": w.sliding(10),
    "session": w.session(gap=3),
}
DELAY_S = float(os.environ.get("WIN_DELAY_S", "0"))
AGGS = {
    "n": w.count(),
    "qty": w.sum("qty"),
    "hi": w.max("px"),
    "lo": w.min("px"),
    "avg": w.mean("px"),
    "open": w.first("px"),
    "close": w.last("px"),
}


def sym(record: Message) -> str:
    if DELAY_S:
        time.sleep(DELAY_S)
    return record.message["sym"]


bars = app.window(
    "trades",
    "bars",
    kind=KINDS[os.environ.get("WIN_KIND", "tumbling")],
    key=sym,
    time="ts",
    agg=AGGS,
    grace_s=2,
    emit="update" if os.environ.get("WIN_EMIT") == "update" else "close",
    to="bars",
    partitions=int(os.environ.get("WIN_PARTITIONS", "0")) or None,
    count=int(os.environ.get("WIN_COUNT", "50")),
    lease_ms=int(os.environ.get("WIN_LEASE_MS", "5000")),
)
