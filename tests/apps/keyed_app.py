"""A keyed, partitioned stage for the ownership tests: `ticks` in 4 partitions; each entry's
output goes to `{<partition>}:out` (the partition's slot on a cluster, so it stays exactly-once)
and names its key, sequence number, the handling process and the time."""

import os
import time

from streammachine import App, Message

app = App(name="keyed")
DELAY_S = float(os.environ.get("KEYED_DELAY_S", "0.002"))


@app.agent("ticks", group="keyed", partitions=4, count=20, concurrency=2)
async def keyed(record: Message) -> None:
    time.sleep(DELAY_S)  # noqa: ASYNC251 - CPU work: handlings take time, so kills land mid-stream
    m = record.message
    await app.send(
        f"{{{record.topic}}}:out",
        {"key": m["key"], "seq": m["seq"], "pid": os.getpid(), "t": repr(time.time())},
    )
