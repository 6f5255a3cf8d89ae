"""Storage on a real Redis (and memory://): round trips, atomic counters across processes, TTLs."""

from __future__ import annotations

import asyncio
import enum
import math
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as syncredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streammachine.connection import RedisConnection
from streammachine.exceptions import ConfigError, SerializationError
from streammachine.state.storage import Storage
from tests.util import eventually

HASH = "streammachine:storage:{test}"

# A child process: waits until all `nproc` children are ready, so they really contend, then runs.
CHILD = """
import asyncio, sys, time
import redis
from streammachine.state.storage import Storage

url, op, n, nproc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = redis.Redis.from_url(url)
r.incr("test:ready")
deadline = time.monotonic() + 60
while int(r.get("test:ready")) < nproc:
    assert time.monotonic() < deadline, "the other children did not start"
    time.sleep(0.002)

async def main():
    storage = Storage("test", url)
    if op == "incr":
        for _ in range(n):
            await storage.incr("counter")
    elif op == "update":
        for _ in range(n):
            await storage.update("counter", lambda v: v + 1, default=0)
    elif op == "write":
        await storage.write("shared", {"from": "child", "n": [1, 2.5, None, b"raw"]})
    elif op == "read":
        print(repr(await storage.read("shared")))
    await storage.close()

asyncio.run(main())
"""


def run_children(url: str, op: str, n: int, nproc: int) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, op, str(n), str(nproc)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(nproc)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=110)
        assert p.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    return outputs


@pytest.fixture
async def storage(redis_url: str) -> AsyncIterator[Storage]:
    s = Storage("test", redis_url)
    yield s
    await s.close()


def assert_same(a: Any, b: Any) -> None:
    """Equal and of the same types all the way down (1 is not True, 3 is not 3.0, -0.0 is not 0.0)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float):
        assert struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.anyio
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=values | st.integers())  # top-level ints of any size are stored as decimal text
async def test_every_supported_value_round_trips_exactly(redis_url: str, value: Any) -> None:
    s = Storage("test", redis_url)
    await s.write("k", value)
    await s.write_many({"m": value})
    await s.write("t", value, ttl_s=60)
    assert_same(await s.read("k"), value)
    assert_same((await s.read_many(["m"]))["m"], value)
    assert_same(await s.read("t"), value)
    await s.close()


async def test_types_are_kept_and_tuples_become_lists(storage: Storage) -> None:
    class Level(enum.Enum):
        HIGH = 50  # msgpack's one-byte int 50 is the ASCII digit "2": must still read back 50

    cases: list[Any] = [True, 1, 3.0, -0.0, math.inf, 2**100, -(2**70), "", b"", None, [], {}]
    cases += [{"a": [1, {"b": b"\x00\xff"}], "c": None}, "héllo ✓", 0, -1, 1e300]
    for value in cases:
        await storage.write("k", value)
        assert_same(await storage.read("k"), value)
    await storage.write("k", math.nan)
    assert math.isnan(await storage.read("k"))
    await storage.write("k", (1, (2, 3)))
    assert await storage.read("k") == [1, [2, 3]]
    await storage.write("k", Level.HIGH)
    assert_same(await storage.read("k"), 50)


async def test_a_value_that_cannot_be_encoded_fails_clearly_and_writes_nothing(
    storage: Storage, redis_sync: syncredis.Redis
) -> None:
    await storage.write("kept", 1)
    with pytest.raises(TypeError, match=r"'kept'.*object"):
        await storage.write("kept", object())
    with pytest.raises(TypeError, match=r"'nested'.*dict.*complex"):
        await storage.write("nested", {"a": [1, complex(1, 2)]})
    with pytest.raises(TypeError, match="'ttl'"):
        await storage.write("ttl", object(), ttl_s=10)
    with pytest.raises(TypeError, match="'bad'"):
        await storage.write_many({"good": 1, "bad": object()})
    with pytest.raises(TypeError, match="'kept'"):
        await storage.update("kept", lambda v: object())
    assert redis_sync.hgetall(HASH) == {b"kept": b"1"}
    assert redis_sync.keys("*") == [HASH.encode()]


async def test_layout_is_one_hash_with_counters_as_numbers(
    storage: Storage, redis_sync: syncredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await storage.write("counter", 41)
    await storage.write("cfg", {"rate": 5})
    assert redis_sync.hget(HASH, "counter") == b"41"
    redis_sync.hincrby(HASH, "counter", 1)  # what another tool (redis-cli) may do
    assert await storage.read("counter") == 42
    redis_sync.hset(HASH, "junk", b"not a value")
    with pytest.raises(SerializationError, match=r"'junk'.*delete it"):
        await storage.read("junk")
    monkeypatch.setenv("STREAMMACHINE_STORAGE_NAMESPACE", "fromenv")
    assert Storage(url="memory://").hash_key == "streammachine:storage:{fromenv}"
    with pytest.raises(ConfigError, match="namespace"):
        Storage("a:b", "memory://")
    with pytest.raises(ConfigError, match="ttl_s"):
        await storage.write("x", 1, ttl_s=0)


async def test_read_write_delete_exists_keys_clear(
    storage: Storage, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    assert await storage.read("missing") is None
    assert await storage.read("missing", default=7, lock_reading=True) == 7
    await storage.write("none", None)
    assert await storage.exists("none") and await storage.read("none", default=7) is None
    await storage.write_many({"user:1": "a", "user:2": "b", "other": 3})
    await storage.write("user:3", "c", ttl_s=60)
    assert await storage.keys() == ["none", "other", "user:1", "user:2", "user:3"]
    assert await storage.keys("user:*") == ["user:1", "user:2", "user:3"]
    assert await storage.read_many(["user:1", "user:3", "nope"]) == {"user:1": "a", "user:3": "c"}
    assert await storage.delete("user:1") is True
    assert await storage.delete("user:1") is False
    assert await storage.delete("user:3") is True
    assert not await storage.exists("user:3")

    neighbour = Storage("test-2", redis_url)
    await neighbour.write("user:9", 9)
    await neighbour.write("user:8", 8, ttl_s=60)
    redis_sync.set("unrelated", b"x")
    await storage.write("gone", 1, ttl_s=60)
    await storage.clear()
    assert await storage.keys() == []
    assert await neighbour.keys() == ["user:8", "user:9"]
    assert redis_sync.get("unrelated") == b"x"
    await neighbour.close()


async def test_incr_ints_floats_and_mistakes(storage: Storage) -> None:
    assert await storage.incr("n") == 1
    assert await storage.incr("n", 10) == 11
    assert await storage.incr("n", -20) == -9
    assert_same(await storage.incr("f", 0.5), 0.5)
    assert_same(await storage.incr("n", 1.5), -7.5)
    assert_same(await storage.incr("n", 7), -0.5)  # a float stays a float
    await storage.write("big", 2**63 - 1)
    assert await storage.incr("big") == 2**63  # past HINCRBY's range: the update loop
    assert await storage.incr("huge", 2**80) == 2**80
    await storage.write("s", "text")
    with pytest.raises(TypeError, match=r"'s'.*str"):
        await storage.incr("s")
    assert await storage.read("s") == "text"
    with pytest.raises(TypeError, match="by"):
        await storage.incr("n", True)


async def test_update_gives_fn_the_current_value(storage: Storage) -> None:
    assert await storage.update("seen", lambda s: [*s, "a"], default=[]) == ["a"]
    assert await storage.update("seen", lambda s: [*s, "b"], default=[]) == ["a", "b"]
    assert await storage.read("seen") == ["a", "b"]
    with pytest.raises(ZeroDivisionError):
        await storage.update("seen", lambda s: 1 / 0)
    assert await storage.read("seen") == ["a", "b"]


async def test_ttl_expires_and_incr_or_update_keep_it(
    storage: Storage, redis_sync: syncredis.Redis
) -> None:
    ttl_key = f"{HASH}:ttl:rate"
    await storage.write("rate", 1, ttl_s=0.5)
    assert 0 < redis_sync.pttl(ttl_key) <= 500
    assert not redis_sync.hexists(HASH, "rate")
    assert await storage.incr("rate", 2) == 3
    assert await storage.update("rate", lambda v: v * 10) == 30
    assert 0 < redis_sync.pttl(ttl_key) <= 500
    assert await storage.exists("rate") and await storage.keys() == ["rate"]
    await eventually(lambda: not redis_sync.exists(ttl_key), timeout_s=5, what="expiry")
    assert await storage.read("rate", default="gone") == "gone"
    assert not await storage.exists("rate") and await storage.keys() == []

    await storage.write("k", "short", ttl_s=60)
    await storage.write("k", "forever")  # a write without ttl_s drops the TTL
    assert redis_sync.exists(f"{HASH}:ttl:k") == 0
    assert await storage.read("k") == "forever"
    await storage.write("k", "short again", ttl_s=60)
    assert not redis_sync.hexists(HASH, "k")
    assert await storage.read("k") == "short again"


def test_incr_from_8_processes_loses_nothing(redis_url: str, redis_sync: syncredis.Redis) -> None:
    run_children(redis_url, "incr", 2000, 8)
    assert redis_sync.hget(HASH, "counter") == b"16000"


def test_update_from_8_processes_loses_nothing(redis_url: str, redis_sync: syncredis.Redis) -> None:
    run_children(redis_url, "update", 2000, 8)
    assert redis_sync.hget(HASH, "counter") == b"16000"


async def test_a_value_written_in_one_process_is_read_in_another(
    storage: Storage, redis_url: str
) -> None:
    await asyncio.to_thread(run_children, redis_url, "write", 0, 1)
    assert await storage.read("shared") == {"from": "child", "n": [1, 2.5, None, b"raw"]}
    await storage.write("shared", ["from parent", 2])
    out = await asyncio.to_thread(run_children, redis_url, "read", 0, 1)
    assert out == ["['from parent', 2]"]


async def test_memory_url_supports_the_whole_api() -> None:
    s = Storage("memtest", "memory://")
    await s.clear()
    await s.write_many({"a": 1, "b": [1.5, b"x"]})
    await s.write("t", 5, ttl_s=60)
    assert await s.incr("a") == 2 and await s.incr("t") == 6 and await s.incr("b2", 0.5) == 0.5
    assert await s.update("b", lambda v: [*v, None]) == [1.5, b"x", None]
    assert await s.read_many(["a", "t", "zz"]) == {"a": 2, "t": 6}
    assert await s.keys() == ["a", "b", "b2", "t"] and await s.keys("b*") == ["b", "b2"]
    assert await s.delete("t") and not await s.exists("t")
    await s.write("short", 1, ttl_s=0.05)

    async def expired() -> bool:
        return bool(await s.read("short", default="gone") == "gone")

    await eventually(expired, timeout_s=5, what="expiry")
    await s.clear()
    assert await s.keys() == []


def test_instance_is_one_per_namespace_and_url_and_survives_new_loops(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Storage.reset_instance()
    monkeypatch.setenv("REDIS_URL", redis_url)
    first = Storage.instance("test")
    assert Storage.instance("test", redis_url) is first
    assert Storage.instance("other") is not first

    async def bump(close: bool) -> Any:
        value = await Storage.instance("test").incr("loops")
        if close:  # close() before the loop ends, or its sockets are left to the GC
            await Storage.instance("test").close()
        return value

    # Each asyncio.run is a new loop; the singleton opens a client per loop instead of failing.
    assert [asyncio.run(bump(close=i == 2)) for i in range(3)] == [1, 2, 3]
    Storage.reset_instance()
    assert Storage.instance("test") is not first
    Storage.reset_instance()


async def test_a_shared_connection_is_used_and_left_open(redis_url: str) -> None:
    conn = RedisConnection(url=redis_url)
    s = Storage("test", redis=conn)
    assert s.url == redis_url
    await s.write("k", 1)
    await s.close()
    assert await conn.client.hget(HASH, "k") == b"1"
    assert Storage.instance("test", redis=conn) is Storage.instance("test", redis_url)
    Storage.reset_instance()
    await conn.close()
