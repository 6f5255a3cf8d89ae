"""Producer-consumer: a timer feeds a work queue, an agent processes it.

Run: streammachine run examples/basic.py:app   (or: python examples/basic.py)
"""

from streammachine import App, Message

app = App(name="basic_example")


@app.timer(1)
async def producer() -> None:
    """Send a message every second."""
    await app.send("work_queue", {"task_id": "123", "status": "pending"})


@app.agent("work_queue", group="workers")
async def consumer(record: Message) -> None:
    """Process messages from work_queue."""
    print(f"Processing: {record.message}")
    await app.send("results", {"task_id": record.message["task_id"], "status": "done"})


if __name__ == "__main__":
    app.start()
