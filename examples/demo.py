"""The `make run` demo: orders flow through a two-stage pipeline on an in-process Redis.

An order timer produces orders; `price` prices them (its output is committed atomically with its
ack); `ship` ships them, asking for a retry now and then; a report timer prints the totals.

Run: REDIS_URL=memory:// streammachine run examples/demo.py:app
"""

import random

from streammachine import App, Message, Retry

app = App(name="demo")
shipped = {"orders": 0, "revenue": 0.0, "retries": 0}


@app.timer(0.2)
async def new_orders() -> None:
    for _ in range(random.randint(1, 5)):
        await app.send(
            "orders", {"item": random.choice(["tea", "cake", "jam"]), "qty": random.randint(1, 4)}
        )


@app.agent("orders", group="pricing", concurrency=2)
async def price(record: Message) -> None:
    order = record.message
    unit = {"tea": 3.5, "cake": 4.25, "jam": 6.0}[order["item"]]
    await app.send("priced", {**order, "total": round(unit * int(order["qty"]), 2)})


@app.agent("priced", group="shipping", retry_backoff_ms=200)
async def ship(record: Message) -> None:
    if random.random() < 0.05:
        shipped["retries"] += 1
        raise Retry(0.2)  # courier busy: the entry stays pending and comes back in 0.2 s
    shipped["orders"] += 1
    shipped["revenue"] += float(record.message["total"])


@app.timer(2)
async def report() -> None:
    health = await app.health_check()
    print(
        f"shipped {shipped['orders']:5d} orders, revenue {shipped['revenue']:9.2f}, "
        f"retried {shipped['retries']:3d} | redis {health['redis']} | Ctrl-C to stop",
        flush=True,
    )


if __name__ == "__main__":
    app.start()
