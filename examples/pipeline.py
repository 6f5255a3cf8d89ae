"""Pipeline: stage1 doubles each value into stage2, which prints the result.

Run: streammachine run examples/pipeline.py:app
"""

from streammachine import App, Message

app = App(name="pipeline_example")


@app.timer(1)
async def source() -> None:
    await app.send("stage1", {"value": 10})


@app.agent("stage1", group="s1")
async def stage1(record: Message) -> None:
    value = int(record.message["value"])
    # Inside a handler this send is committed atomically with stage1's ack: exactly-once.
    await app.send("stage2", {"value": value * 2})


@app.agent("stage2", group="s2")
async def stage2(record: Message) -> None:
    value = int(record.message["value"])
    print(f"Final result: {value}")


if __name__ == "__main__":
    app.start()
