"""An agent limited to RATED_LIMIT (default "40/s") across every process, for the rate test."""

import os
import time

from streammachine import App, Message

app = App(name="rated")


@app.agent("jobs", group="g", count=5, rate_limit=os.environ.get("RATED_LIMIT", "40/s"))
async def job(record: Message) -> None:
    await app.send("done", {"n": record.message["n"], "t": repr(time.time()), "pid": os.getpid()})
