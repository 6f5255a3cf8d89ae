"""Project test fixtures. The real-Redis fixtures (`redis_server`, `redis_url`) come from
StreamMachine's own pytest plugin (`streammachine.pytest_plugin`), the same ones users get.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator

import pytest
import redis as syncredis

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


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every `async def` test on anyio's asyncio backend without marking each one (marked
    before collection, so parametrized tests keep their parameters)."""
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)
