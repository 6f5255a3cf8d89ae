"""The stateful fault proof's stage (tests/test_state_faults.py): per input, a count and a sum
per key in tables (`counts.incr(k)`, read then staged; `sums.add(k, n)`, staged blind) and one output naming the input.

Configured like matrix_app: MATRIX_PARTITIONS (0 = none), MATRIX_COUNT, MATRIX_DELAY_S.
"""

import os
import time

from streammachine import App, Message

app = App(name="tables")
DELAY_S = float(os.environ.get("MATRIX_DELAY_S", "0"))
PARTITIONS = int(os.environ.get("MATRIX_PARTITIONS", "0")) or None
KEYS = 20

counts = app.table("counts", default=0, schema=int, stream="in")
sums = app.table("sums", default=0, schema=int, stream="in")


@app.agent(
    "in",
    group="stage",
    count=int(os.environ.get("MATRIX_COUNT", "50")),
    partitions=PARTITIONS,
    max_deliveries=3,
    retry_backoff_ms=50,
)
async def stage(record: Message) -> None:
    fields = record.data[1]
    n = int(fields[b"n"])
    key = f"k{n % KEYS}"
    if DELAY_S:
        time.sleep(DELAY_S)  # noqa: ASYNC251 - CPU work, so faults land mid-stream
    await counts.incr(key)
    await sums.add(key, n)  # staged without a read
    await app.send("out", {"src": f"{record.topic}/{record.key}", "data": fields.get(b"data", b"")})
