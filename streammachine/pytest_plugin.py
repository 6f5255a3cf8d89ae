"""The StreamMachine pytest plugin (registered through the `pytest11` entry point).

Fixtures:
    redis_server: the URL of a real redis-server for the session (`REDIS_URL` when it points at a
        server, else a throwaway one on a free loopback port).
    redis_url: that server, flushed before each test.
    sm_test_app: a factory of `TestApp` contexts around your App (see `streammachine.testing`).

Marker:
    @pytest.mark.redis: the test needs a real Redis; skipped with the reason when none can be
        started, and failed instead under `STREAMMACHINE_REQUIRE_REDIS=1`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

REQUIRE_ENV = "STREAMMACHINE_REQUIRE_REDIS"
_state = {"real_redis_tests": 0}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis: the test needs a real Redis server")


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of the session's real Redis server."""
    from .exceptions import NotAvailableError, RedisUnavailableError
    from .testing import RedisServer

    external = os.environ.get("REDIS_URL", "")
    if external.startswith(("redis://", "rediss://", "unix://")):
        yield external
        return
    try:
        server = RedisServer().start()
    except (NotAvailableError, RedisUnavailableError) as exc:
        if _required():
            pytest.fail(f"{REQUIRE_ENV}=1 but no Redis server could be started: {exc}")
        pytest.skip(f"no Redis server: {exc}")
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A real Redis, flushed before the test."""
    import redis as syncredis

    client = syncredis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    _state["real_redis_tests"] += 1
    return redis_server


@pytest.fixture
def sm_test_app() -> Callable[..., Any]:
    """A factory: `async with sm_test_app(app, url=...) as t:` runs `app` in the test's loop."""
    from .testing import TestApp

    return TestApp


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("redis") is not None and "redis_url" not in getattr(
        item, "fixturenames", ()
    ):
        item.fixturenames.append("redis_url")  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (
        _required()
        and exitstatus == 0
        and _state["real_redis_tests"] == 0
        and session.testscollected
    ):
        session.exitstatus = 1
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"{REQUIRE_ENV}=1 but no real-Redis test ran", red=True)
