"""A typed app for the AsyncAPI tests: schemas, packed payloads, partitions, batches, outputs."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from streammachine import App, Message

T = TypeVar("T")


class Address(msgspec.Struct):
    """Where an order goes."""

    street: str
    city: str


class Order(msgspec.Struct):
    """An order from the web shop."""

    id: int
    total: float
    items: list[str]
    ship_to: Address | None = None


class Page(msgspec.Struct, Generic[T]):
    """A page of results."""

    rows: list[T]


class Invoice(msgspec.Struct):
    """A priced order."""

    order_id: int
    amount: float


app = App(name="typed_shop")
app.produces("invoices", schema=Invoice)
app.produces("audit")


@app.agent("orders", group="billing", concurrency=4, schema=Order, dead_letter="orders:failed")
async def bill(record: Message) -> None:
    """Bill each order."""


@app.agent("orders", group="audit", schema=Order, max_deliveries=0)
async def audit(record: Message) -> None: ...


@app.agent("ticks", group="candles", partitions=3, batch=True)
async def candles(records: list[Message]) -> None: ...


@app.agent("pages", group="readers", schema=Page[int], payload="json")
async def read_pages(record: Message) -> None: ...


@app.agent("weird stream/é", group="g")
async def weird(record: Message) -> None: ...
