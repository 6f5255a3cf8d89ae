"""The OHLC consumer as a process, for the SIGKILL tests."""

import os

from streammachine import App

app = App(name="ohlc_proc")
consumer = app.ohlc(
    "ticks",
    intervals=[10_000, 60_000],
    timestamp_field="ts",
    lease_ms=int(os.environ.get("OHLC_LEASE_MS", "1000")),
    count=int(os.environ.get("OHLC_COUNT", "200")),
)
