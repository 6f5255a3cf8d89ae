"""Fast unit tests: Message, codec, settings and configs, URLs, the importer."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from streammachine import AppConfig, ConsumerConfig, Message, RedisConnection, TimerConfig
from streammachine.codec import decode_dict_bytes_to_utf8, decode_struct, encode_fields
from streammachine.exceptions import AppImportError, ConfigError, SerializationError
from streammachine.process.importer import import_app
from streammachine.settings import Settings
from streammachine.urls import mask_url


def test_message_decodes_bytes_and_str() -> None:
    m = Message(topic="t", key="1700000000000-0", data=("1700000000000-0", {b"a": b"1", "b": "2"}))
    assert m.message == {"a": "1", "b": "2"}
    flat = Message._from_entry("t", "5-0", [b"k", b"v"], time.time(), "c")
    assert flat.message == {"k": "v"} and flat.data == ("5-0", {b"k": b"v"})


def test_undecodable_bytes_are_replaced_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    m = Message(topic="t", key="1-0", data=("1-0", {b"a": b"\xff\xfe", b"b": b"ok"}))
    assert m.message == {"a": "\ufffd\ufffd", "b": "ok"}
    assert decode_dict_bytes_to_utf8({b"\xff": b"x"}) == {"\ufffd": "x"}


def test_sent_comes_from_the_sent_field_else_the_entry_id() -> None:
    with_field = Message(topic="t", key="1000-0", data=("1000-0", {b"sent": b"1700000000.5"}))
    assert with_field.sent == 1700000000.5
    ms_field = Message(topic="t", key="1000-0", data=("1000-0", {b"sent": b"1700000000500"}))
    assert ms_field.sent == 1700000000.5
    from_id = Message(topic="t", key="1700000000123-4", data=("1700000000123-4", {b"a": b"1"}))
    assert from_id.sent == 1700000000.123
    explicit = Message(topic="t", sent=12.0)
    assert explicit.sent == 12.0


def test_timer_string() -> None:
    now_ms = int(time.time() * 1000) - 5
    m = Message(topic="orders", key=f"{now_ms}-0", data=(f"{now_ms}-0", {b"a": b"1"}))
    text = m.timer
    assert text.startswith("orders: task ") and text.endswith(" ms")
    assert float(text.split()[2]) >= 4.0
    assert Message(topic="x").timer == ""
    # The reference's definition: the latency from send to receipt.
    assert Message(topic="test", sent=100.0, received=100.5).timer == "test: task 500.00 ms"


def test_encode_fields_rules() -> None:
    class Tick(msgspec.Struct):
        symbol: str
        price: float

    assert encode_fields(Tick("A", 1.5)) == {"symbol": "A", "price": "1.5"}
    assert encode_fields({"none": None, "l": [1, "a"]}) == {"none": "null", "l": '[1,"a"]'}
    with pytest.raises(ValueError, match="at least one field"):
        encode_fields({})
    with pytest.raises(ValueError, match="must be a dict"):
        encode_fields([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="cannot encode"):
        encode_fields({"x": object()})


def test_decode_struct_converts_text_and_names_bad_fields() -> None:
    class Tick(msgspec.Struct):
        symbol: str
        price: float
        tags: list[str] = []

    t = decode_struct({"symbol": "A", "price": "1.5", "tags": '["x"]'}, Tick)
    assert t == Tick("A", 1.5, ["x"])
    with pytest.raises(SerializationError, match="price"):
        decode_struct({"symbol": "A", "price": "abc"}, Tick)


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="max_processes must be >= 1"):
        AppConfig(max_processes=0)
    with pytest.raises(ValueError, match="max_threads must be >= 1"):
        AppConfig(max_threads=0)
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        ConsumerConfig(stream="s", concurrency=0)
    with pytest.raises(ValueError, match="start must be"):
        ConsumerConfig(stream="s", start="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"timer interval 0: give a number of seconds from 0\.01"):
        TimerConfig(interval=0)
    assert ConsumerConfig(stream="s").dead_letter == "s:dead"


def test_settings_from_env_and_errors() -> None:
    s = Settings.from_env(
        {"REDIS_HOST": "h", "REDIS_PORT": "7000", "REDIS_DB": "2", "STREAMMACHINE_COUNT": "50"}
    )
    assert s.resolve_url() == "redis://h:7000/2" and s.count == 50
    assert (
        Settings.from_env({"REDIS_URL": "redis://x:1/0", "REDIS_HOST": "h"}).resolve_url()
        == "redis://x:1/0"
    )
    with pytest.raises(ConfigError, match="REDIS_PORT='abc' is not an integer"):
        Settings.from_env({"REDIS_PORT": "abc"})
    assert Settings.from_env({}).default_group == "eventengine"


def test_redis_connection_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://envhost:6380/1")
    monkeypatch.setenv("REDIS_HOST", "ignored")
    assert RedisConnection().url == "redis://envhost:6380/1"
    assert RedisConnection(url="redis://explicit:1/0").url == "redis://explicit:1/0"
    assert RedisConnection(host="a", port=2).url == "redis://a:2/0"
    monkeypatch.delenv("REDIS_URL")
    assert RedisConnection().url == "redis://ignored:6379/0"
    assert RedisConnection(url="redis://h:1/0", db=3).url == "redis://h:1/3"


def test_bad_urls_are_config_errors_with_masked_password() -> None:
    with pytest.raises(ConfigError, match="bad Redis URL") as info:
        RedisConnection(url="http://user:hunter2@host/0")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="bad port"):
        RedisConnection(url="redis://host:notaport/0")
    assert mask_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("redis://u:p@ss@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    assert mask_url("memory://") == "memory://"


async def test_unreachable_server_is_one_clear_error() -> None:
    from streammachine.exceptions import RedisUnavailableError
    from streammachine.testing import free_port

    conn = RedisConnection(url=f"redis://user:secret@127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnavailableError) as info:
        await conn.connect()
    assert "secret" not in str(info.value) and "127.0.0.1" in str(info.value)
    assert await conn.health_check() is False
    await conn.close()


async def test_connection_helpers_on_a_real_server(redis_url: str) -> None:
    async with RedisConnection(url=redis_url) as redis:
        assert await redis.health_check() is True
        ids = await redis.pipeline_xadd("stream", [{"key": "value"}, {"key": 2}])
        assert len(ids) == 2 and all(isinstance(i, str) for i in ids)
        assert await redis.ensure_group("stream", "g") is True
        assert await redis.ensure_group("stream", "g") is False
        got = []
        async for msg in redis.consumer("stream", "g", "c1", count=10):
            got.append(msg.message["key"])
            if len(got) == 2:
                break
        assert got == ["value", "2"]
        pending = await redis.client.xpending("stream", "g")
        assert pending["pending"] == 1, "the message whose loop body did not finish stays pending"


def test_importer_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "goodapp.py").write_text(
        "from streammachine import App\napp = App(name='g')\nx = 1\n"
    )
    (tmp_path / "twoapps.py").write_text("from streammachine import App\na = App()\nb = App()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_app("goodapp:app").name == "g"
    assert import_app("goodapp").name == "g"
    assert import_app(str(tmp_path / "goodapp.py") + ":app").name == "g"
    with pytest.raises(AppImportError, match="cannot import module 'nosuch'"):
        import_app("nosuch:app")
    with pytest.raises(AppImportError, match="has no attribute 'missing'"):
        import_app("goodapp:missing")
    with pytest.raises(AppImportError, match="is a int, not a streammachine App"):
        import_app("goodapp:x")
    with pytest.raises(AppImportError, match="has 2 Apps"):
        import_app("twoapps")
    with pytest.raises(AppImportError, match="bad app reference"):
        import_app("goodapp:")


def test_public_api_imports() -> None:
    import streammachine

    # The reference's whole import block.
    for name in ["App", "StreamConsumer", "Message", "AppConfig", "ConsumerConfig", "TimerConfig",
                 "Storage", "RedisConnection", "streams_to_dataframe", "streams_to_dataframe_fast",
                 "prune_old_dataframe_rows", "TimeSeriesBuffer", "FastOHLC", "FastOHLCConsumer",
                 "create_ohlc_aggregator", "parse_stream_id_timestamp", "format_candle_for_redis",
                 "_HAS_FAST_OHLC_CYTHON", "RedisObjectStorage", "decode_dict_bytes_to_utf8",
                 "_has_cython_decode"]:  # fmt: skip
        assert getattr(streammachine, name) is not None
    assert all(hasattr(streammachine, n) for n in streammachine.__all__)


@pytest.mark.parametrize(("n", "doubled"), [(1, 2), (2, 4)])
async def test_parametrized_async_tests_keep_their_parameters(
    n: int, doubled: int, request: pytest.FixtureRequest
) -> None:
    import asyncio

    asyncio.current_task()  # raises outside a running loop: the test really ran on anyio
    assert request.node.callspec.params == {"n": n, "doubled": doubled}
    assert n * 2 == doubled, "each case got its own pair of parameters"


def test_registration_refuses_a_function_that_is_not_a_coroutine_function() -> None:
    from streammachine import App
    from streammachine.exceptions import ConfigError

    app = App(name="reg", redis_url="memory://")

    def plain(record: Message) -> None: ...

    def tick() -> None: ...

    with pytest.raises(ConfigError, match=r"@app.agent .*plain"):
        app.agent("s")(plain)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"@app.timer .*tick"):
        app.timer(1)(tick)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"@app.cron .*tick"):
        app.cron("* * * * *")(tick)  # type: ignore[arg-type]
    assert not app.agents and not app.timers and not app.crons
