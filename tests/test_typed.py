"""Typed messages: msgspec schemas in field-map and packed payload modes, end to end on Redis."""

from __future__ import annotations

import msgspec
import pytest
import redis as syncredis

from streammachine import App, Message
from streammachine.codec import StructCodec
from streammachine.exceptions import SerializationError
from streammachine.testing import TestApp

pytestmark = pytest.mark.anyio


class Tick(msgspec.Struct):
    symbol: str
    price: float
    volume: float = 0.0


class Level(msgspec.Struct):
    price: float
    size: float


class Book(msgspec.Struct):
    symbol: str
    bids: list[Level]


async def test_field_map_schema_converts_text_and_dead_letters_invalid(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="typed")
    got: list[Tick] = []

    @app.agent("ticks", group="g", schema=Tick)
    async def h(record: Message) -> None:
        got.append(record.value)

    async with TestApp(app, url=redis_url) as t:
        await t.send("ticks", {"symbol": "AAPL", "price": "150.25", "volume": "10"})
        await t.send("ticks", Tick("MSFT", 1.5))
        await t.send("ticks", {"symbol": "BAD", "price": "not-a-number"})
        await t.run_until_idle()
        dead = await t.dead_letters("ticks")
    assert got == [Tick("AAPL", 150.25, 10.0), Tick("MSFT", 1.5, 0.0)]
    assert all(isinstance(v.price, float) for v in got)
    assert len(dead) == 1 and dead[0].message["symbol"] == "BAD"
    assert (
        "price" in dead[0].message["error"]
        and dead[0].message["error_type"] == "SerializationError"
    )
    assert redis_sync.xpending("ticks", "g")["pending"] == 0


@pytest.mark.parametrize("payload", ["msgpack", "json"])
async def test_packed_payload_round_trip(
    payload: str, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    app = App(name="packed")
    got: list[Book] = []

    @app.agent("books", group="g", schema=Book, payload=payload)  # type: ignore[arg-type]
    async def h(record: Message) -> None:
        got.append(record.value)

    book = Book("AAPL", [Level(150.0, 2.0), Level(149.5, 1.0)])
    async with TestApp(app, url=redis_url) as t:
        await app.send("books", book)
        await app.send_batch("books", [book, book])
        await t.send("books", {"data": b"\x00garbage"})
        await t.run_until_idle()
        dead = await t.dead_letters("books")
    assert got == [book, book, book]
    fields = redis_sync.xrange("books", count=1)[0][1]
    assert list(fields) == [b"data"], "packed into one field"
    assert len(dead) == 1 and dead[0].message["error_type"] == "SerializationError"


def test_struct_codec_errors() -> None:
    codec = StructCodec(Tick, "msgpack")
    with pytest.raises(SerializationError, match="no 'data' field"):
        codec.decode({b"other": b"x"})
    with pytest.raises(ValueError, match="payload must be"):
        StructCodec(Tick, "xml")  # type: ignore[arg-type]
    fields = StructCodec(Tick, "fields")
    assert fields.decode([b"symbol", b"A", b"price", b"2"]) == Tick("A", 2.0)
