"""The fault matrix's stage (tests/matrix.py): every input yields one output naming it.

Configured by the environment so one module serves every cell:
MATRIX_MODE (message | batch), MATRIX_CONCURRENCY, MATRIX_PARTITIONS (0 = none), MATRIX_COUNT,
MATRIX_DELAY_S (per message), MATRIX_BLOCKING (1: the delay blocks the event loop, like CPU work or
a GC pause; else it awaits), MATRIX_DELAYED_S (outputs are delayed sends due this much later),
MATRIX_HEARTBEAT_S (the instance heartbeat's interval: a frozen process counts as dead after three
missed beats), MATRIX_LEASE_MS (a partition lease), MATRIX_SEEN_DIR (each handling appends
`<src> <pid> <deliveries> <monotonic ns>` to `<dir>/<pid>`, so the checker knows who read an input
first). An input with a `poison` field always fails. The output copies the input's raw `data`
bytes, so binary payloads are checked end to end, and names the process that handled it (`pid`),
the delivery (`dlv`) and how long that process held the entry (`held_ms`).
"""

import os
import time

import anyio

from streammachine import App, Message
from streammachine.presence.heartbeat import add_heartbeat

app = App(name="matrix")
if HEARTBEAT_S := float(os.environ.get("MATRIX_HEARTBEAT_S", "0")):
    add_heartbeat(app, ttl_s=max(15.0, 4 * HEARTBEAT_S), interval_s=HEARTBEAT_S)
SEEN_DIR = os.environ.get("MATRIX_SEEN_DIR")
SEEN_FD = (
    os.open(os.path.join(SEEN_DIR, str(os.getpid())), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    if SEEN_DIR
    else None
)
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
if LEASE_MS := int(os.environ.get("MATRIX_LEASE_MS", "0")):
    OPTIONS["lease_ms"] = LEASE_MS


async def work() -> None:
    if DELAY_S:
        if BLOCKING:
            time.sleep(DELAY_S)  # noqa: ASYNC251 - simulated CPU work or a GC pause
        else:
            await anyio.sleep(DELAY_S)


async def output(record: Message) -> None:
    fields = record.data[1]
    src = f"{record.topic}/{record.key}"
    if SEEN_FD is not None:  # unbuffered: a SIGKILL loses no line
        os.write(
            SEEN_FD,
            b"%s %d %d %d\n" % (src.encode(), os.getpid(), record.deliveries, time.monotonic_ns()),
        )
    if b"poison" in fields:
        raise ValueError(f"poison {record.key}")
    await app.send(
        "out",
        {
            "src": src,
            "data": fields.get(b"data", b""),
            "pid": os.getpid(),
            "dlv": record.deliveries,
            "held_ms": int((time.time() - (record.received or time.time())) * 1000),
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
