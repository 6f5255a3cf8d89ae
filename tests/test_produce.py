"""Idempotent production (streammachine/produce.py) on the session's real Redis: a send outside a
handler whose reply was lost is retried with the same idempotency id and is in the stream once —
through XADD IDMP on Redis ≥ 8.6, through the marker script elsewhere (`make test-versions` runs
this module on every server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as syncredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from streammachine import App, keys
from streammachine.exceptions import ConfigError


@pytest.fixture
def lose_replies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Pipelines are applied by Redis, but the reply of the N-th `execute` (numbers in the list)
    is lost, as when a connection drops after the command reached Redis."""
    lost: list[int] = []
    calls = [0]
    real = Pipeline.execute

    async def execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        calls[0] += 1
        replies = await real(self, raise_on_error)
        if calls[0] in lost:
            raise RedisConnectionError("Connection reset by peer (the reply was lost)")
        return replies

    monkeypatch.setattr(Pipeline, "execute", execute)
    yield lost


async def test_a_send_whose_reply_was_lost_is_written_once(
    redis_url: str, redis_sync: syncredis.Redis, lose_replies: list[int]
) -> None:
    app = App(name="producer", redis_url=redis_url)
    lose_replies.append(1)
    entry_id = await app.send("orders", {"n": 1})
    assert redis_sync.xlen("orders") == 1
    assert redis_sync.xrange("orders")[0][0].decode() == entry_id
    features = await app.redis.features()
    if features.idmp:
        assert redis_sync.xinfo_stream("orders")["iids-duplicates"] == 1
    else:
        assert redis_sync.keys("streammachine:idem:*"), "the fallback keeps a marker"
    await app.aclose()


async def test_send_batch_chunks_are_each_written_once(
    redis_url: str, redis_sync: syncredis.Redis, lose_replies: list[int]
) -> None:
    app = App(name="producer", redis_url=redis_url)
    lose_replies.extend([2, 3])  # the second chunk's reply is lost twice
    ids = await app.send_batch("orders", [{"n": i} for i in range(250)])
    assert len(ids) == 250 and len(set(ids)) == 250
    assert redis_sync.xlen("orders") == 250
    assert [f[b"n"] for _, f in redis_sync.xrange("orders")] == [b"%d" % i for i in range(250)]
    await app.aclose()


async def test_an_idempotency_key_is_written_once_across_processes(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    first, second = App(name="shop", redis_url=redis_url), App(name="shop", redis_url=redis_url)
    a = await first.send("orders", {"n": 1}, idempotency_key="order-7")
    b = await second.send("orders", {"n": 1}, idempotency_key="order-7")
    c = await second.send("orders", {"n": 2}, idempotency_key="order-8")
    assert a == b != c
    assert redis_sync.xlen("orders") == 2
    assert redis_sync.pttl(keys.idempotency("orders", "shop", "order-7")) > 3600_000
    with pytest.raises(ConfigError, match="one key per record"):
        await first.send_batch("orders", [{"n": 1}], idempotency_keys=["a", "b"])
    with pytest.raises(ConfigError, match="idempotency_key"):
        await first.send("orders", {"n": 1}, idempotency_key="")
    await first.aclose()
    await second.aclose()


async def test_features_are_read_from_the_server(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    info: Any = redis_sync.info("server")
    app = App(name="f", redis_url=redis_url)
    features = await app.redis.features()
    assert features.describe().endswith(info.get("valkey_version", info["redis_version"]))
    assert features.idmp == (features.server == "redis" and features.version >= (8, 6))
    await app.aclose()
