"""The testing toolkit: TestApp on memory:// and a real server, and the pytest plugin as users get it."""

from __future__ import annotations

import anyio
import pytest

from streammachine import App, Message
from streammachine.testing import RedisServer, TestApp
from tests.util import eventually

pytestmark = pytest.mark.anyio


def make_app() -> tuple[App, list[str]]:
    app = App(name="toolkit")
    seen: list[str] = []

    @app.agent("in", group="g", count=5)
    async def stage(record: Message) -> None:
        await anyio.sleep(0.01)  # slow enough that a non-waiting run_until_idle would be caught
        seen.append(record.message["n"])
        await app.send("out", {"n": record.message["n"]})

    @app.agent("out", group="g2", max_deliveries=2, retry_backoff_ms=5)
    async def sink(record: Message) -> None:
        if record.message["n"] == "poison":
            raise ValueError("poisoned")

    @app.timer(3600)
    async def hourly() -> None:
        await app.send("in", {"n": "from-timer"})

    return app, seen


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_run_until_idle_waits_for_buffered_sends_and_acks(
    where: str, request: pytest.FixtureRequest
) -> None:
    url = "memory://" if where == "memory" else request.getfixturevalue("redis_url")
    app, seen = make_app()
    async with TestApp(app, url=url) as t:
        for i in range(20):
            await t.send("in", {"n": i})
        await t.send("in", {"n": "poison"})
        await t.run_until_idle(timeout_s=10)
        assert len(seen) == 21, "every message was handled before run_until_idle returned"
        assert [m.message["n"] for m in await t.stream("out")] == [*map(str, range(20)), "poison"]
        dead = await t.dead_letters("out")
        assert [m.message["n"] for m in dead] == ["poison"]
        assert dead[0].message["error_type"] == "ValueError"
        assert dead[0].message["deliveries"] == "2"
        await t.tick("hourly")
        await t.run_until_idle()
        assert seen[-1] == "from-timer"
        with pytest.raises(KeyError, match="no timer named 'nope'"):
            await t.tick("nope")


async def test_redis_server_context_manager() -> None:
    import redis as syncredis

    with RedisServer() as server:
        client = syncredis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
    assert server.process is None


def test_plugin_fixtures_as_a_user_gets_them(pytester: pytest.Pytester, redis_server: str) -> None:
    pytester.makepyfile(
        test_user="""
        import pytest
        from streammachine import App, Message

        app = App(name="user")

        @app.agent("a", group="g")
        async def h(record: Message) -> None:
            await app.send("b", {"seen": record.message["x"]})

        @pytest.mark.anyio
        @pytest.mark.redis
        async def test_with_real_redis(redis_url, sm_test_app):
            async with sm_test_app(app, url=redis_url) as t:
                await t.send("a", {"x": "1"})
                await t.run_until_idle()
                assert [m.message for m in await t.stream("b")] == [{"seen": "1"}]

        def test_leaves_a_key(redis_server):
            import redis
            redis.Redis.from_url(redis_server).set("left", "1")

        @pytest.mark.redis
        def test_marker_adds_the_server(request, redis_server):
            # not asked for redis_url: the marker adds it, which flushes the server first
            import redis
            assert "redis_url" in request.fixturenames
            assert redis.Redis.from_url(redis_server).exists("left") == 0
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "anyio")
    result.assert_outcomes(passed=3)


async def test_eventually_helper_times_out() -> None:
    with pytest.raises(AssertionError, match="timed out"):
        await eventually(lambda: False, timeout_s=0.05)
