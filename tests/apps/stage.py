"""A stream→stream stage used by the process tests: every input yields one output naming it."""

import os
import time

from streammachine import App, Message

app = App(name="stage")
DELAY_S = float(os.environ.get("STAGE_DELAY_S", "0"))


@app.agent("in", group="stage", count=int(os.environ.get("STAGE_COUNT", "100")))
async def stage(record: Message) -> None:
    if DELAY_S:
        time.sleep(DELAY_S)  # noqa: ASYNC251 - simulated CPU work; loop timers cannot sleep < 1 ms
    await app.send("out", {"src": record.key or "", "pid": os.getpid()})
