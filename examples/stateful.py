"""Stateful: a counter shared by every process and host of the app, kept in Redis.

Run: streammachine run examples/stateful.py:app

The reference's pattern `count = await storage.read(...); await storage.write(..., count + 1)` is
racy: two processes read the same value and one update is lost. `incr` is atomic, and `update`
applies any function atomically (an optimistic WATCH/MULTI retry loop).
"""

from streammachine import App, Message

app = App(name="stateful_example")


@app.timer(1)
async def counter() -> None:
    count = await app.storage.incr("counter")
    await app.send("counts", {"count": count})


@app.agent("counts", group="loggers")
async def logger(record: Message) -> None:
    stored = await app.storage.read("counter")
    seen = await app.storage.update("seen", lambda s: (s or 0) + 1)
    print(f"Current count: {stored}, received: {record.message}, seen: {seen}")


if __name__ == "__main__":
    app.start()
