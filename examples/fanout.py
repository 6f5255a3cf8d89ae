"""Fan-out: two consumer groups each receive every message.

Run: streammachine run examples/fanout.py:app
"""

from streammachine import App, Message

app = App(name="fanout_example")


@app.timer(1)
async def producer() -> None:
    await app.send("events", {"type": "user_action", "user_id": "123"})


# Both groups receive ALL messages
@app.agent("events", group="analytics")
async def analytics(record: Message) -> None:
    print(f"Analytics: {record.message}")


@app.agent("events", group="audit")
async def audit(record: Message) -> None:
    print(f"Audit log: {record.message}")


if __name__ == "__main__":
    app.start()
