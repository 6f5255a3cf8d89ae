"""The fault matrix's stage (tests/matrix.py): every input yields one output naming it.

Configured by the environment so one module serves every cell:
MATRIX_MODE (message | batch), MATRIX_CONCURRENCY, MATRIX_PARTITIONS (0 = none), MATRIX_COUNT,
MATRIX_DELAY_S (per message), MATRIX_BLOCKING (1: the delay blocks the event loop, like CPU work or
a GC pause; else it awaits), MATRIX_DELAYED_S (outputs are delayed sends due this much later). An input with a `poison` field always fails. The output copies the
input's raw `data` bytes, so binary payloads are checked end to end.
"""

import os
import time

import anyio

from streammachine import App, Message

app = App(name="matrix")
MODE = os.environ.get("MATRIX_MODE", "message")
DELAY_S = float(os.environ.get("MATRIX_DELAY_S", "0"))
BLOCKING = os.environ.get("MATRIX_BLOCKING") == "1"
# Outputs as delayed sends: committed with the ack into the schedule, moved to `out` when due.
DELAYED_S = float(os.environ.get("MATRIX_DELAYED_S", "0")) or None
PARTITIONS = int(os.environ.get("MATRIX_PARTITIONS", "0")) or None
OPTIONS = {
    "group": "stage",
    "concurrency": int(os.environ.get("MATRIX_CONCURRENCY", "1")),
    "count": int(os.environ.get("MATRIX_COUNT", "50")),
    "partitions": PARTITIONS,
    "max_deliveries": 3,
    "retry_backoff_ms": 50,
}


async def work() -> None:
    if DELAY_S:
        if BLOCKING:
            time.sleep(DELAY_S)  # noqa: ASYNC251 - simulated CPU work or a GC pause
        else:
            await anyio.sleep(DELAY_S)


async def output(record: Message) -> None:
    fields = record.data[1]
    if b"poison" in fields:
        raise ValueError(f"poison {record.key}")
    await app.send(
        "out",
        {
            "src": f"{record.topic}/{record.key}",
            "data": fields.get(b"data", b""),
            "pid": os.getpid(),
        },
    )


if MODE == "batch":

    @app.agent("in", batch=True, **OPTIONS)  # type: ignore[arg-type]
    async def stage_batch(records: list[Message]) -> None:
        for record in records:
            await work()
            await output(record)

else:

    @app.agent("in", **OPTIONS)  # type: ignore[arg-type]
    async def stage(record: Message) -> None:
        await work()
        await output(record)
