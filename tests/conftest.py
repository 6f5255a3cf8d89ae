"""Test session fixtures: a real redis-server on a free loopback port for the whole session.

`REDIS_URL` in the environment uses that server instead. Without a server the real-Redis tests
skip, unless `STREAMMACHINE_REQUIRE_REDIS=1` (as in CI), where a missing server is a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis as syncredis

from streammachine.exceptions import NotAvailableError
from streammachine.testing import RedisServer

REQUIRE = os.environ.get("STREAMMACHINE_REQUIRE_REDIS") == "1"
_EXTERNAL = os.environ.get("REDIS_URL", "")
_real_tests_run = 0


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of the session's real Redis server."""
    if _EXTERNAL.startswith(("redis://", "rediss://", "unix://")):
        yield _EXTERNAL
        return
    try:
        server = RedisServer()
    except NotAvailableError as exc:
        if REQUIRE:
            pytest.fail(f"STREAMMACHINE_REQUIRE_REDIS=1 but {exc}")
        pytest.skip(str(exc))
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A real Redis, flushed before each test."""
    global _real_tests_run
    client = syncredis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    _real_tests_run += 1
    yield redis_server


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE and _real_tests_run == 0 and exitstatus == 0:
        session.exitstatus = 1
        print("\nSTREAMMACHINE_REQUIRE_REDIS=1 but no real-Redis test ran")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every `async def` test on anyio's asyncio backend without marking each one."""
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            item.add_marker(pytest.mark.anyio)
