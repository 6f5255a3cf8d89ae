"""Project test fixtures. The real-Redis fixtures (`redis_server`, `redis_url`) come from
StreamMachine's own pytest plugin (`streammachine.pytest_plugin`), the same ones users get.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator

import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine.testing import RedisClusterServer
from tests.util import start_or_skip

pytest_plugins = ["pytester"]


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[syncredis.Redis]:
    """A synchronous client of the test server (bytes replies), for assertions."""
    client = syncredis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[object]:
    """A RedisConnection to the test server."""
    from streammachine import RedisConnection

    conn = RedisConnection(url=redis_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    """A local 3-master Redis Cluster for the module's tests."""
    server = start_or_skip(RedisClusterServer())
    yield server
    server.close()


@pytest.fixture
def rc(cluster: RedisClusterServer) -> Iterator[SyncCluster]:
    """A client of that cluster, every primary flushed before the test."""
    client = SyncCluster(host="127.0.0.1", port=cluster.servers[0].port)
    client.flushall(target_nodes=SyncCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every `async def` test on anyio's asyncio backend without marking each one (marked
    before collection, so parametrized tests keep their parameters)."""
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)
