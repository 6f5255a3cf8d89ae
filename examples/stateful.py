"""Stateful: spend per user in a table, exactly-once with the input (docs/stateful.md).

Run: streammachine run examples/stateful.py:app --workers 2
Then: streammachine table show spend

Changes to a table inside a handler ride in the batch's commit with the entry's ack, so a worker
killed mid-batch and the entries handled again never count twice. The table is partitioned with
its stream: each user's total lives with the partition that handles that user's orders.
"""

import msgspec

from streammachine import App, Message

app = App(name="stateful_example")


class Spend(msgspec.Struct):
    orders: int = 0
    total: float = 0.0


spend = app.table("spend", default=Spend, schema=Spend, stream="orders", ttl_s=30 * 86400)
USERS = ("ann", "bob", "cy")


@app.timer(1)
async def shop() -> None:
    n = await app.storage.incr("orders_sent")  # outside a handler: written at once
    user = USERS[n % len(USERS)]
    await app.send("orders", {"user": user, "amount": n}, key=user)


@app.agent("orders", group="spend", partitions=2)
async def add(record: Message) -> None:
    user, amount = record.message["user"], float(record.message["amount"])
    now = await spend.update(user, lambda s: Spend(s.orders + 1, s.total + amount))
    print(f"{user}: {now.orders} orders, {now.total:.2f} spent")


if __name__ == "__main__":
    app.start()
