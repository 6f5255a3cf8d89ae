"""An app for the scheduling process tests: an app-wide timer, a per-process timer, an optional
cron with a seconds field, and nothing else (delayed entries are moved by every running app)."""

import os
import time

from streammachine import App

app = App(name=os.environ.get("SCHED_APP", "sched"))
INTERVAL_S = float(os.environ.get("SCHED_INTERVAL_S", "0.5"))


@app.timer(INTERVAL_S)
async def beat() -> None:
    await app.redis.client.xadd("beats", {"pid": os.getpid(), "t": repr(time.time())})


@app.timer(INTERVAL_S, scope="instance")
async def local() -> None:
    await app.redis.client.xadd("local_beats", {"pid": os.getpid()})


if os.environ.get("SCHED_CRON"):

    @app.cron(os.environ["SCHED_CRON"])
    async def fire() -> None:
        fire_time = app.crons[0].last_fire
        await app.redis.client.xadd("fires", {"pid": os.getpid(), "at": repr(fire_time)})
