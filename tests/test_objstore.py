"""RedisObjectStorage on a real Redis: signed pickles, refusals, msgpack, namespaced SCAN/DEL."""

from __future__ import annotations

import logging
import pickle
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis as syncredis

from streammachine.exceptions import ConfigError, SerializationError, UnsafePickleError
from streammachine.state import objstore
from streammachine.state.objstore import RedisObjectStorage
from tests.util import eventually

KEY = "streammachine:obj:objects:"
ran: list[str] = []


class Exploit:
    """Unpickling this records that it ran: what a refused pickle must never do."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (ran.append, ("exploit ran",))


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisObjectStorage]:
    s = RedisObjectStorage(redis_url, secret_key="k1")
    yield s
    await s.close()


async def test_signed_pickles_round_trip_numpy_included(
    store: RedisObjectStorage, redis_sync: syncredis.Redis
) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    await store.store_with_pickle("arr", {"a": arr, "t": (1, "x"), "s": {1, 2}})
    got = await store.retrieve_with_pickle("arr")
    assert got["t"] == (1, "x") and got["s"] == {1, 2}
    assert got["a"].dtype == np.float32 and np.array_equal(got["a"], arr)
    raw: Any = redis_sync.get(KEY + "arr")
    assert raw is not None and raw.startswith(b"SM2") and len(raw) > 35
    assert await store.retrieve_with_pickle("missing", default="d") == "d"


async def test_a_tampered_pickle_is_refused_without_running_it(
    store: RedisObjectStorage, redis_sync: syncredis.Redis
) -> None:
    await store.store_with_pickle("obj", ["harmless", 1])
    raw = bytearray(redis_sync.get(KEY + "obj") or b"")  # type: ignore[arg-type]
    for index in (len(raw) - 2, 10):  # one byte of the payload, then one of the MAC
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        redis_sync.set(KEY + "obj", bytes(tampered))
        with pytest.raises(UnsafePickleError, match=r"does not match.*STREAMMACHINE_SECRET_KEY"):
            await store.retrieve_with_pickle("obj")
    # An attacker's own pickle behind a forged header is refused before it can run.
    redis_sync.set(KEY + "evil", b"SM1" + b"\x00" * 32 + pickle.dumps(Exploit()))
    with pytest.raises(UnsafePickleError):
        await store.retrieve_with_pickle("evil")
    assert ran == []


async def test_unsigned_and_wrong_key_pickles_are_refused(
    redis_url: str, store: RedisObjectStorage, redis_sync: syncredis.Redis
) -> None:
    redis_sync.set(KEY + "plain", pickle.dumps(Exploit()))
    with pytest.raises(UnsafePickleError, match=r"unsigned.*allow_unsigned=True"):
        await store.retrieve_with_pickle("plain")
    assert ran == []

    other = RedisObjectStorage(redis_url, secret_key=b"k2")
    await other.store_with_pickle("theirs", {"x": 1})
    with pytest.raises(UnsafePickleError, match="does not match"):
        await store.retrieve_with_pickle("theirs")
    keyless = RedisObjectStorage(redis_url, secret_key="")
    with pytest.raises(UnsafePickleError, match="STREAMMACHINE_SECRET_KEY is not set"):
        await keyless.retrieve_with_pickle("theirs")
    trusting = RedisObjectStorage(redis_url, allow_unsigned=True, secret_key="k1")
    assert await trusting.retrieve_with_pickle("theirs") == {"x": 1}
    await other.close()
    await keyless.close()
    await trusting.close()


async def test_without_a_key_storing_works_unsigned_and_warns_once(
    redis_url: str,
    redis_sync: syncredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("STREAMMACHINE_SECRET_KEY", raising=False)
    monkeypatch.setattr(objstore, "_warned_unsigned", False)
    s = RedisObjectStorage(redis_url)
    with caplog.at_level(logging.WARNING, logger="streammachine.state.objstore"):
        await s.store_with_pickle("a", 1)
        await s.store_with_pickle("b", 2)
    warnings = [r for r in caplog.records if "STREAMMACHINE_SECRET_KEY" in r.getMessage()]
    assert len(warnings) == 1
    assert redis_sync.get(KEY + "a") == pickle.dumps(1, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UnsafePickleError):
        await s.retrieve_with_pickle("a")
    trusting = RedisObjectStorage(redis_url, allow_unsigned=True)
    assert await trusting.retrieve_with_pickle("b") == 2

    monkeypatch.setenv("STREAMMACHINE_SECRET_KEY", "from-env")
    signed = RedisObjectStorage(redis_url)
    await signed.store_with_pickle("c", [3])
    same_key = RedisObjectStorage(redis_url, secret_key="from-env")
    assert await same_key.retrieve_with_pickle("c") == [3]
    for each in (s, trusting, signed, same_key):
        await each.close()


async def test_list_and_delete_stay_inside_the_namespace(
    redis_url: str, store: RedisObjectStorage, redis_sync: syncredis.Redis
) -> None:
    other = RedisObjectStorage(redis_url, namespace="objects-2", secret_key="k1")
    for name in ("prefix:a", "prefix:b", "other"):
        await store.store_with_pickle(name, name)
        await other.store_with_pickle(name, name)
    redis_sync.set("prefix:a", b"unrelated")
    redis_sync.hset("streammachine:storage:{default}", "k", b"1")
    assert await store.list_keys() == ["other", "prefix:a", "prefix:b"]
    assert await store.list_keys("prefix:*") == ["prefix:a", "prefix:b"]
    assert await store.delete_keys("prefix:*") == 2
    assert await store.list_keys() == ["other"]
    assert await store.delete_keys("*") == 1
    assert await store.list_keys() == []
    assert await other.list_keys() == ["other", "prefix:a", "prefix:b"]
    assert redis_sync.get("prefix:a") == b"unrelated"
    assert redis_sync.hget("streammachine:storage:{default}", "k") == b"1"
    with pytest.raises(ConfigError, match="namespace"):
        RedisObjectStorage(redis_url, namespace="objects:*")
    await other.close()


async def test_msgpack_store_is_for_plain_data(
    store: RedisObjectStorage, redis_sync: syncredis.Redis
) -> None:
    value = {"a": [1, 2.5, None, b"x", "é"], "b": {"c": True}}
    await store.store("plain", value)
    assert await store.retrieve("plain") == value
    assert await store.retrieve("missing", default=0) == 0
    with pytest.raises(TypeError, match=r"'bad'.*object"):
        await store.store("bad", object())
    assert redis_sync.exists(KEY + "bad") == 0
    await store.store_with_pickle("pickled", 1)
    with pytest.raises(SerializationError, match="retrieve_with_pickle"):
        await store.retrieve("pickled")
    with pytest.raises(TypeError, match="'fn'"):
        await store.store_with_pickle("fn", lambda: 1)


async def test_ttl_expires(store: RedisObjectStorage, redis_sync: syncredis.Redis) -> None:
    await store.store_with_pickle("short", 1, ttl_s=0.3)
    await store.store("short2", 1, ttl_s=0.3)
    assert 0 < redis_sync.pttl(KEY + "short") <= 300
    assert await store.retrieve_with_pickle("short") == 1

    async def gone() -> bool:
        return await store.list_keys("short*") == []

    await eventually(gone, timeout_s=5, what="expiry")


async def test_memory_url_works() -> None:
    s = RedisObjectStorage("memory://", namespace="memtest", secret_key="k")
    await s.store_with_pickle("a", np.ones(3))
    assert np.array_equal(await s.retrieve_with_pickle("a"), np.ones(3))
    assert await s.list_keys() == ["a"]
    assert await s.delete_keys("*") == 1
