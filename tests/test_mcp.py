"""The MCP server against a real Redis, through the SDK's own clients: in-process over the
JSON-RPC handshake protocol ("legacy") and the 2026-07-28 per-request protocol ("modern"), and over
streamable HTTP served by uvicorn on a loopback port (both protocols)."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp.types as types
import pytest
import redis as syncredis
from mcp import Client

from streammachine.mcp_server import CONFIRMED_TOOLS, TOOLS, create_server, tidy_validation_error
from streammachine.settings import Settings
from streammachine.testing import free_port
from tests.util import eventually

# Marked here, not only by conftest: anyio re-creates async items without this marker at
# collection end and would drop their parametrization.
pytestmark = pytest.mark.anyio

IN_PROCESS = ["legacy", "modern"]
ALL_MODES = ["legacy", "modern", "http", "http-legacy"]
READ_ONLY = {name for name, hints in TOOLS.items() if hints[1]}
ID = re.compile(r"^\d+-\d+$")


@asynccontextmanager
async def connect(server: Any, mode: str, **kwargs: Any) -> AsyncIterator[Client]:
    """A client of `server` over `mode`; HTTP modes serve it with uvicorn on a free port."""
    protocol = "legacy" if mode.endswith("legacy") else "auto"
    if not mode.startswith("http"):
        async with Client(server, mode=protocol, **kwargs) as client:
            want = "2025-11-25" if protocol == "legacy" else "2026-07-28"
            assert client.protocol_version == want
            yield client
        return
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning"
    )
    web = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(web.serve)
        await eventually(lambda: web.started, 10, "uvicorn to start")
        try:
            async with Client(f"http://127.0.0.1:{port}/mcp", mode=protocol, **kwargs) as client:
                yield client
        finally:
            web.should_exit = True


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result (also checked against the text)."""
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content
    data = result.structured_content
    assert isinstance(data, dict)
    text = _text(result)
    assert json.loads(text) == data and "b'" not in text
    return data


async def err(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    """Call a tool that must fail; its error message."""
    result = await client.call_tool(tool, args or {})
    assert result.is_error, result.structured_content
    return _text(result)


def _text(result: types.CallToolResult) -> str:
    (block,) = result.content
    assert isinstance(block, types.TextContent)
    return block.text


async def resource(client: Client, uri: str) -> str:
    contents = (await client.read_resource(uri)).contents[0]
    assert isinstance(contents, types.TextResourceContents) and str(contents.uri) == uri
    return contents.text


async def prompt(client: Client, name: str, args: dict[str, str] | None = None) -> str:
    (message,) = (await client.get_prompt(name, args)).messages
    assert isinstance(message.content, types.TextContent)
    return message.content.text


class Answer:
    """An elicitation callback: the user's answer, and the questions they were asked."""

    def __init__(self, action: Literal["accept", "decline", "cancel"], confirm: bool = True):
        self.action, self.confirm = action, confirm
        self.asked: list[str] = []

    async def __call__(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params.message)
        if self.action == "accept":
            return types.ElicitResult(action="accept", content={"confirm": self.confirm})
        return types.ElicitResult(action=self.action)


# -- listing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_every_tool_is_listed_with_four_hints_and_an_output_schema(
    redis_url: str, mode: str
) -> None:
    async with connect(create_server(redis_url), mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for name, tool in tools.items():
        a = tool.annotations
        assert a is not None, name
        hints = (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
        assert all(isinstance(h, bool) for h in hints), (name, hints)
        assert hints[:3] == TOOLS[name][1:], name
        assert tool.output_schema and tool.output_schema.get("type") == "object", name
        assert tool.description and "\n" not in tool.description
    for name in CONFIRMED_TOOLS:
        assert tools[name].annotations.destructive_hint
        assert "confirm" in tools[name].input_schema["properties"]
    assert {n for n, t in tools.items() if t.annotations.read_only_hint} == READ_ONLY


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_read_only_offers_only_read_only_tools(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    redis_sync.xadd("s", {"a": "1"})
    async with connect(create_server(redis_url, read_only=True), mode) as client:
        tools = (await client.list_tools()).tools
        assert {t.name for t in tools} == READ_ONLY
        for t in tools:
            assert t.annotations.read_only_hint and not t.annotations.destructive_hint
        assert "Unknown tool" in await err(client, "stream_send", {"stream": "s", "message": {}})
        assert "Unknown tool" in await err(client, "storage_clear", {"confirm": True})
        assert (await ok(client, "stream_read", {"stream": "s"}))["entries"][0]["fields"] == {
            "a": "1"
        }
        config = json.loads(await resource(client, "streammachine://config"))
        assert config["read_only"] is True and set(config["tools"]) == READ_ONLY
        assert "read-only" in await prompt(client, "streammachine-guide")
    assert redis_sync.xlen("s") == 1


# -- every tool, every transport ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_every_tool_resource_and_prompt(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    async with connect(create_server(redis_url), mode) as c:
        sent = await ok(c, "stream_send", {"stream": "orders", "message": {"n": 1, "d": {"x": 1}}})
        assert ID.match(sent["id"])
        batch = await ok(
            c, "stream_send_batch", {"stream": "orders", "messages": [{"i": i} for i in range(3)]}
        )
        assert batch["count"] == 3 and all(ID.match(i) for i in batch["ids"])
        read = await ok(c, "stream_read", {"stream": "orders", "count": 2})
        assert [e["id"] for e in read["entries"]] == [sent["id"], batch["ids"][0]]
        assert read["entries"][0]["fields"] == {"n": "1", "d": '{"x":1}'}
        assert read["next"] == batch["ids"][1]
        redis_sync.xgroup_create("orders", "billing", id="0")
        redis_sync.xreadgroup("billing", "worker-1", {"orders": ">"}, count=2)
        info = await ok(c, "stream_info", {"stream": "orders"})
        assert (info["length"], info["first_id"], info["last_id"]) == (
            4, sent["id"], batch["ids"][-1],
        )  # fmt: skip
        (group,) = info["groups"]
        assert (group["name"], group["pending"], group["lag"]) == ("billing", 2, 2)
        assert group["consumer_list"][0]["name"] == "worker-1"
        listed = await ok(c, "stream_list", {"pattern": "ord*"})
        assert [s["stream"] for s in listed["streams"]] == ["orders"]
        pending = await ok(c, "stream_pending", {"stream": "orders", "group": "billing"})
        assert pending["groups"][0]["consumers"] == {"worker-1": 2}
        assert [e["id"] for e in pending["groups"][0]["entries"]] == [sent["id"], batch["ids"][0]]
        redis_sync.xadd("orders:dead", {"n": "9", "error": "boom", "group": "billing"})
        dead = await ok(c, "stream_dead_letters", {"stream": "orders"})
        assert dead["total"] == 1 and dead["entries"][0]["error"] == "boom"
        assert dead["entries"][0]["fields"] == {"n": "9"}

        await ok(c, "storage_write", {"key": "cfg", "value": {"rate": 5, "on": True}})
        got = await ok(c, "storage_read", {"key": "cfg"})
        assert got["found"] and got["value"] == {"rate": 5, "on": True}
        assert (await ok(c, "storage_keys"))["keys"] == ["cfg"]
        assert (await ok(c, "storage_delete", {"key": "cfg", "confirm": True}))["deleted"] == 1
        await ok(c, "storage_write", {"key": "n", "value": 1})
        assert (await ok(c, "storage_clear", {"confirm": True}))["deleted"] == 1
        assert not (await ok(c, "storage_read", {"key": "n"}))["found"]

        health = await ok(c, "health_check")
        assert health["healthy"] and health["redis_version"]
        assert (await ok(c, "redis_info", {"section": "server"}))["info"]["redis_version"]
        assert (await ok(c, "redis_ping"))["pong"] is True

        from streammachine.state.objstore import RedisObjectStorage

        store = RedisObjectStorage(redis_url)
        await store.store("plain", {"a": [1, 2]})
        await store.close()
        assert (await ok(c, "obj_get", {"key": "plain"}))["value"] == {"a": [1, 2]}
        assert (await ok(c, "obj_list"))["keys"] == ["plain"]
        assert (await ok(c, "obj_delete", {"pattern": "*", "confirm": True}))["deleted"] == 1

        made = await ok(c, "ohlc_create", {"name": "md", "intervals": [60000, "5m"]})
        assert made["created"] and made["intervals_ms"] == [60000, 300000]
        for price, ts in ((10.0, 0), (12.0, 1000), (9.0, 2000), (11.0, 61000)):
            tick = {"name": "md", "symbol": "AAPL", "price": price, "volume": 1, "timestamp_ms": ts}
            await ok(c, "ohlc_update", tick)
        candles = (await ok(c, "ohlc_get_candles", {"name": "md", "symbol": "AAPL"}))["candles"]
        assert [(k["open"], k["high"], k["low"], k["close"]) for k in candles] == [
            (10.0, 12.0, 9.0, 9.0), (11.0, 11.0, 11.0, 11.0),
        ]  # fmt: skip
        args = {"name": "md", "symbol": "AAPL", "interval_ms": "1m"}
        assert len((await ok(c, "ohlc_get_completed", args))["candles"]) == 1
        flushed = await ok(c, "ohlc_flush", args | {"emit_to": "candles_1m"})
        assert len(flushed["candles"]) == 1 and len(flushed["ids"]) == 1
        assert (await ok(c, "ohlc_stats", {"name": "md"}))["stats"]["tick_count"] == 4
        assert [a["name"] for a in (await ok(c, "ohlc_list"))["aggregators"]] == ["md"]
        cleared = await ok(c, "ohlc_clear", {"name": "md", "drop": True, "confirm": True})
        assert cleared["removed"] and (await ok(c, "ohlc_list"))["aggregators"] == []

        assert (await ok(c, "app_instances"))["instances"] == []

        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert uris == {"streammachine://config", "streammachine://status"}
        status = json.loads(await resource(c, "streammachine://status"))
        assert status["redis"]["healthy"] and status["streams"]["count"] == 3
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert prompts == {"streammachine-guide", "stream-processing-patterns"}
        patterns = await prompt(c, "stream-processing-patterns", {"pattern": "pipeline"})
        assert "@app.agent" in patterns
    assert redis_sync.xrange("candles_1m")[0][1][b"open"] == b"10.0"


# -- streams ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_stream_read_pages_with_next_both_ways(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    ids = [redis_sync.xadd("s", {"i": str(i)}).decode() for i in range(25)]
    async with connect(create_server(redis_url), mode) as c:
        seen, args = [], {"stream": "s", "count": 10}
        while True:
            page = await ok(c, "stream_read", args)
            seen += [e["id"] for e in page["entries"]]
            if page["next"] is None:
                break
            assert "start=" in page["note"]
            args = {"stream": "s", "count": 10, "start": page["next"]}
        assert seen == ids
        newest = await ok(c, "stream_read", {"stream": "s", "count": 3, "newest_first": True})
        assert [e["id"] for e in newest["entries"]] == ids[:-4:-1]
        more = await ok(
            c, "stream_read", {"stream": "s", "newest_first": True, "end": newest["next"]}
        )
        assert more["entries"][0]["id"] == ids[-4]
        window = await ok(c, "stream_read", {"stream": "s", "start": ids[5], "end": ids[7]})
        assert [e["id"] for e in window["entries"]] == ids[5:8] and window["next"] is None
        excl = await ok(c, "stream_read", {"stream": "s", "start": f"({ids[5]}", "count": 1})
        assert excl["entries"][0]["id"] == ids[6]
        missing = await ok(c, "stream_read", {"stream": "nope"})
        assert missing["exists"] is False and missing["entries"] == []


async def test_stream_results_are_bounded(redis_url: str, redis_sync: syncredis.Redis) -> None:
    redis_sync.xadd("big", {"blob": "x" * 50_000, "b": b"\xff\xfe"})
    for _ in range(100):
        redis_sync.xadd("wide", {"v": "y" * 1_900})
    redis_sync.xadd("many-fields", {f"f{k}": "1" for k in range(80)})
    async with connect(create_server(redis_url), "legacy") as c:
        big = await ok(c, "stream_read", {"stream": "big"})
        fields = big["entries"][0]["fields"]
        assert len(fields["blob"]) < 2_100 and "more characters" in fields["blob"]
        assert fields["b"] == "\ufffd\ufffd"  # undecodable bytes replaced, never a b'' repr
        assert big["truncated"] and "cut" in big["note"]
        wide = await ok(c, "stream_read", {"stream": "wide", "count": 100})
        assert 10 < len(wide["entries"]) < 100 and wide["truncated"]
        assert wide["next"] == wide_id(redis_sync, len(wide["entries"]))
        many = await ok(c, "stream_read", {"stream": "many-fields", "count": 1})
        assert len(many["entries"][0]["fields"]) == 50 and many["truncated"]


def wide_id(redis_sync: syncredis.Redis, index: int) -> str:
    return redis_sync.xrange("wide", count=index + 1)[index][0].decode()


async def test_stream_list_uses_the_pattern_and_a_cap(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    for name in ("a1", "a2", "a3", "b1"):
        redis_sync.xadd(name, {"x": "1"})
    redis_sync.set("a_string", "not a stream")
    async with connect(create_server(redis_url), "modern") as c:
        found = await ok(c, "stream_list", {"pattern": "a*"})
        assert [s["stream"] for s in found["streams"]] == ["a1", "a2", "a3"]
        capped = await ok(c, "stream_list", {"limit": 2})
        assert (
            len(capped["streams"]) == 2 and capped["truncated"] and "more match" in capped["note"]
        )


async def test_pending_and_dead_letters(redis_url: str, redis_sync: syncredis.Redis) -> None:
    for i in range(5):
        redis_sync.xadd("jobs", {"i": str(i)})
    redis_sync.xgroup_create("jobs", "g1", id="0")
    redis_sync.xgroup_create("jobs", "g2", id="0")
    redis_sync.xreadgroup("g1", "alice", {"jobs": ">"}, count=2)
    redis_sync.xreadgroup("g1", "bob", {"jobs": ">"}, count=1)
    redis_sync.xreadgroup("g2", "carol", {"jobs": ">"}, count=5)
    redis_sync.xadd(
        "jobs:dead",
        {"i": "7", "error": "ZeroDivisionError: x", "traceback": "T" * 5000, "deliveries": "5"},
    )
    async with connect(create_server(redis_url), "legacy") as c:
        both = await ok(c, "stream_pending", {"stream": "jobs"})
        by_group = {g["group"]: g for g in both["groups"]}
        assert by_group["g1"]["consumers"] == {"alice": 2, "bob": 1}
        assert by_group["g2"]["pending"] == 5
        only_bob = await ok(
            c, "stream_pending", {"stream": "jobs", "group": "g1", "consumer": "bob"}
        )
        (entry,) = only_bob["groups"][0]["entries"]
        assert entry["consumer"] == "bob" and entry["deliveries"] == 1 and entry["idle_ms"] >= 0
        assert "NOGROUP" in await err(c, "stream_pending", {"stream": "jobs", "group": "nope"})
        dead = await ok(c, "stream_dead_letters", {"stream": "jobs:dead"})
        (letter,) = dead["entries"]
        assert letter["deliveries"] == 5 and letter["source_stream"] == "jobs"
        assert len(letter["traceback"]) < 2_100 and dead["truncated"]


# -- bad arguments and Redis errors ---------------------------------------------------------------

BAD = [
    ("stream_read", {"stream": 123}, "argument 'stream'"),
    ("stream_read", {}, "argument 'stream'"),
    ("stream_read", {"stream": "s", "count": 0}, "argument 'count'"),
    ("stream_read", {"stream": "s", "count": 5000}, "argument 'count'"),
    ("stream_read", {"stream": "s", "start": "yesterday"}, "argument 'start'"),
    ("stream_read", {"stream": "s", "end": "1-2-3"}, "argument 'end'"),
    ("stream_send", {"stream": "s", "message": "hello"}, "argument 'message'"),
    ("stream_send", {"stream": "s", "message": {}}, "at least one field"),
    ("stream_send_batch", {"stream": "s", "messages": []}, "argument 'messages'"),
    ("stream_send_batch", {"stream": "s", "messages": [1, 2]}, "argument 'messages"),
    ("storage_write", {"key": "k", "value": 1, "ttl_s": -1}, "argument 'ttl_s'"),
    ("storage_write", {"key": "k", "value": 1, "namespace": "a:b"}, "namespace"),
    ("storage_write", {"key": "k", "value": [2**70]}, "cannot store"),
    ("storage_write", {"key": "", "value": 1}, "argument 'key'"),
    ("storage_delete", {"key": "k", "confirm": "yes"}, "argument 'confirm'"),
    ("redis_info", {"section": "server; FLUSHALL"}, "argument 'section'"),
    ("obj_get", {"key": "k", "namespace": "*"}, "namespace"),
    ("ohlc_create", {"name": "bad name!"}, "argument 'name'"),
    ("ohlc_create", {"name": "m", "intervals": ["soon"]}, "interval"),
    ("ohlc_update", {"name": "nope", "symbol": "A", "price": 1}, "no OHLC aggregator"),
    ("ohlc_get_candles", {"name": "m", "symbol": "A", "interval_ms": 1}, "not one of this agg"),
    ("ohlc_update", {"name": "m", "symbol": "A", "price": "cheap"}, "argument 'price'"),
    ("ohlc_update", {"name": "m", "symbol": "A", "price": 1, "volume": -1}, "argument 'volume'"),
    ("stream_pending", {"stream": "s", "count": "many"}, "argument 'count'"),
]


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_bad_arguments_are_error_results_naming_the_argument(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    redis_sync.xadd("s", {"a": "1"})
    async with connect(create_server(redis_url), mode) as c:
        await ok(c, "ohlc_create", {"name": "m", "intervals": [60000]})
        for tool, args, expected in BAD:
            message = await err(c, tool, args)
            assert expected in message, (tool, args, message)
            assert "errors.pydantic.dev" not in message
        assert (await ok(c, "redis_ping"))["pong"]  # the server survived all of them
    assert redis_sync.xlen("s") == 1 and redis_sync.keys("streammachine:*") == []


def test_validation_errors_are_one_line_per_argument() -> None:
    raw = (
        "Error executing tool stream_read: 2 validation errors for stream_readArguments\n"
        "count\n  Input should be less than or equal to 1000 [type=less_than_equal, "
        "input_value=5000, input_type=int]\n    For further information visit https://errors."
        "pydantic.dev/2/v/less_than_equal\nstream\n  Field required [type=missing, "
        "input_value={}, input_type=dict]\n"
    )
    assert tidy_validation_error(raw) == (
        "Error executing tool stream_read: argument 'count': Input should be less than or equal "
        "to 1000 (got 5000); argument 'stream': Field required (got {})"
    )
    assert tidy_validation_error("something else") == "something else"


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_wrong_type_keys_are_error_results(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    redis_sync.set("plain", "text")
    redis_sync.hset("streammachine:storage:{default}", "k", "not msgpack \x00")
    async with connect(create_server(redis_url), mode) as c:
        assert "holds a string, not a stream" in await err(c, "stream_read", {"stream": "plain"})
        assert "holds a string, not a stream" in await err(c, "stream_info", {"stream": "plain"})
        sent = await err(c, "stream_send", {"stream": "plain", "message": {"a": 1}})
        assert "WRONGTYPE" in sent
        assert "neither msgpack nor a number" in await err(c, "storage_read", {"key": "k"})
    assert redis_sync.get("plain") == b"text"


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_unreachable_redis_is_an_error_and_never_shows_the_password(mode: str) -> None:
    url = f"redis://app:hun@ter2@127.0.0.1:{free_port()}/0"  # mask_url alone would leak "ter2"
    async with connect(create_server(url), mode) as c:
        for tool, args in [
            ("health_check", {}),
            ("redis_ping", {}),
            ("stream_send", {"stream": "s", "message": {"a": 1}}),
            ("storage_write", {"key": "k", "value": 1}),
            ("app_instances", {}),
        ]:
            message = await err(c, tool, args)
            assert "cannot reach Redis at redis://app:***@127.0.0.1" in message, message
            assert "ter2" not in message
        status = await resource(c, "streammachine://status")
        assert json.loads(status)["redis"]["healthy"] is False and "ter2" not in status
        config = await resource(c, "streammachine://config")
        assert "ter2" not in config


# -- confirmation ----------------------------------------------------------------------------------


async def _seed(redis_url: str, c: Client) -> None:
    from streammachine.state.objstore import RedisObjectStorage

    await ok(c, "storage_write", {"key": "a", "value": 1})
    await ok(c, "storage_write", {"key": "b", "value": 2})
    await ok(c, "ohlc_create", {"name": "m", "intervals": [60000]})
    await ok(c, "ohlc_update", {"name": "m", "symbol": "A", "price": 1, "timestamp_ms": 0})
    store = RedisObjectStorage(redis_url)
    await store.store("o", [1])
    await store.close()


DELETERS = [
    ("storage_delete", {"key": "a"}),
    ("storage_clear", {}),
    ("obj_delete", {"pattern": "*"}),
    ("ohlc_clear", {"name": "m"}),
]


async def _unchanged(c: Client) -> None:
    assert (await ok(c, "storage_keys"))["keys"] == ["a", "b"]
    assert (await ok(c, "obj_list"))["keys"] == ["o"]
    assert (await ok(c, "ohlc_stats", {"name": "m"}))["stats"]["tick_count"] == 1


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_without_elicitation_deleting_needs_confirm_true(redis_url: str, mode: str) -> None:
    async with connect(create_server(redis_url), mode) as c:
        await _seed(redis_url, c)
        for tool, args in DELETERS:
            for refused in (args, args | {"confirm": False}):
                message = await err(c, tool, refused)
                assert "not confirmed" in message and "confirm: true" in message
            await _unchanged(c)
        for tool, args in DELETERS:
            done = await ok(c, tool, args | {"confirm": True})
            assert done["confirmed_by"] == "argument"
        assert (await ok(c, "storage_keys"))["keys"] == []
        assert (await ok(c, "obj_list"))["keys"] == []
        assert (await ok(c, "ohlc_stats", {"name": "m"}))["stats"]["tick_count"] == 0


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_with_elicitation_the_user_decides(redis_url: str, mode: str) -> None:
    for answer in (Answer("decline"), Answer("cancel"), Answer("accept", confirm=False)):
        async with connect(create_server(redis_url), mode, elicitation_callback=answer) as c:
            await _seed(redis_url, c)
            for tool, args in DELETERS:  # confirm: true cannot stand in for the user
                message = await err(c, tool, args | {"confirm": True})
                assert "nothing was changed" in message
            await _unchanged(c)
    yes = Answer("accept")
    async with connect(create_server(redis_url), mode, elicitation_callback=yes) as c:
        await _seed(redis_url, c)
        for tool, args in DELETERS:
            assert (await ok(c, tool, args))["confirmed_by"] == "elicitation"
        assert (await ok(c, "storage_keys"))["keys"] == []
        assert (await ok(c, "obj_list"))["keys"] == []
        assert (await ok(c, "ohlc_stats", {"name": "m"}))["stats"]["tick_count"] == 0
    assert any("'a'" in q and "storage key" in q for q in yes.asked), yes.asked
    assert any("EVERY storage key" in q for q in yes.asked)
    assert any("namespace 'objects'" in q and "'*'" in q for q in yes.asked)


# -- values, objects, secrets ---------------------------------------------------------------------


async def test_storage_values_come_back_as_json(redis_url: str) -> None:
    from streammachine.state.storage import Storage

    store = Storage(url=redis_url)
    await store.write("utf8", b"caf\xc3\xa9")
    await store.write("binary", b"\xff\x00")
    await store.write("nan", float("nan"))
    await store.write("huge", "z" * 300_000)
    await store.close()
    async with connect(create_server(redis_url), "modern") as c:
        assert (await ok(c, "storage_read", {"key": "utf8"}))["value"] == "café"
        binary = await ok(c, "storage_read", {"key": "binary"})
        assert binary["value"] == {"base64": "/wA="} and binary["type"] == "bytes"
        assert (await ok(c, "storage_read", {"key": "nan"}))["value"] == "nan"
        huge = await ok(c, "storage_read", {"key": "huge"})
        assert huge["truncated"] and len(huge["value"]) <= 100_000 and "characters" in huge["note"]
        await ok(c, "storage_write", {"key": "ttl", "value": [1, "x"], "ttl_s": 60})
        assert (await ok(c, "storage_read", {"key": "ttl"}))["value"] == [1, "x"]


class Boom:
    """Unpickling this creates a file: the proof that an unsigned pickle was not loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


async def test_obj_get_unpickles_only_signed_values(redis_url: str, tmp_path: Path) -> None:
    import datetime

    from streammachine import keys
    from streammachine.state.objstore import RedisObjectStorage

    signed = RedisObjectStorage(redis_url, secret_key="k1")
    await signed.store_with_pickle("when", datetime.date(2024, 1, 2))
    await signed.store_with_pickle("data", {"a": (1, 2)})
    await RedisObjectStorage(redis_url, secret_key="other").store_with_pickle("foreign", 1)
    await signed.close()
    proof = tmp_path / "pwned"
    client = syncredis.Redis.from_url(redis_url)
    client.set(keys.objects("objects") + "evil", pickle.dumps(Boom(proof)))
    client.close()
    server = create_server(redis_url, settings=Settings(secret_key="k1"))
    async with connect(server, "legacy") as c:
        when = await ok(c, "obj_get", {"key": "when"})
        assert when["type"] == "datetime.date" and when["value"] == "datetime.date(2024, 1, 2)"
        assert (await ok(c, "obj_get", {"key": "data"}))["value"] == {"a": [1, 2]}
        assert "unsigned" in await err(c, "obj_get", {"key": "evil"})
        assert "does not match" in await err(c, "obj_get", {"key": "foreign"})
    unkeyed = create_server(redis_url, settings=Settings(secret_key=None))
    async with connect(unkeyed, "modern") as c:
        assert "STREAMMACHINE_SECRET_KEY is not set" in await err(c, "obj_get", {"key": "when"})
        assert "unsigned" in await err(c, "obj_get", {"key": "evil"})
    assert not proof.exists()


async def test_obj_delete_never_leaves_its_namespace(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from streammachine.state.objstore import RedisObjectStorage

    for ns in ("objects", "other"):
        store = RedisObjectStorage(redis_url, namespace=ns)
        await store.store("x1", 1)
        await store.store("y1", 2)
        await store.close()
    redis_sync.set("foo", "bar")
    redis_sync.xadd("events", {"a": "1"})
    redis_sync.hset("streammachine:storage:{default}", "k", "1")
    async with connect(create_server(redis_url), "legacy") as c:
        assert (await ok(c, "obj_delete", {"pattern": "x*", "confirm": True}))["deleted"] == 1
        assert (await ok(c, "obj_list"))["keys"] == ["y1"]
        assert (await ok(c, "obj_delete", {"pattern": "*", "confirm": True}))["deleted"] == 1
    left = sorted(k.decode() for k in redis_sync.keys("*"))
    assert left == [
        "events", "foo", "streammachine:obj:other:x1", "streammachine:obj:other:y1",
        "streammachine:storage:{default}",
    ]  # fmt: skip


async def test_redis_info_never_shows_credentials(
    redis_url: str, redis_sync: syncredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_sync.execute_command("ACL", "SETUSER", "mcp", "on", ">s3cr3t-pw", "~*", "&*", "+@all")
    try:
        url = redis_url.replace("redis://", "redis://mcp:s3cr3t-pw@")
        async with connect(create_server(url), "legacy") as c:
            everything = await ok(c, "redis_info", {"section": "everything"})
            assert everything["info"] and "s3cr3t" not in json.dumps(everything)
            assert "s3cr3t" not in json.dumps(await ok(c, "health_check"))
            config = await resource(c, "streammachine://config")
            assert "s3cr3t" not in config and "mcp:***@" in config

            async def fake_info(self: Any, section: str | None = None, *args: Any) -> Any:
                return {
                    "redis_version": "7",
                    "requirepass": "x",
                    "masterauth": "y",
                    "master_link": "redis://mcp:s3cr3t-pw@10.0.0.1",
                }

            import redis.asyncio.client

            monkeypatch.setattr(redis.asyncio.client.Redis, "info", fake_info)
            shown = await ok(c, "redis_info")
            assert shown["info"] == {"redis_version": "7"}
            assert sorted(shown["hidden"]) == ["master_link", "masterauth", "requirepass"]
    finally:
        redis_sync.execute_command("ACL", "DELUSER", "mcp")


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_config_and_status_resources(
    redis_url: str, redis_sync: syncredis.Redis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("STREAMMACHINE_SECRET_KEY", "do-not-show")
    monkeypatch.setenv("REDIS_URL", "redis://u:env-pw@db:6379/0")
    redis_sync.xadd("a", {"x": "1"})
    redis_sync.xadd("b", {"x": "1"})
    redis_sync.set(
        "streammachine:instances:h-1-abc",
        json.dumps({"id": "h-1-abc", "app": "orders", "host": "h", "pid": 1, "ttl_s": 15}),
        px=15000,
    )
    async with connect(create_server(redis_url), mode) as c:
        config_text = await resource(c, "streammachine://config")
        config = json.loads(config_text)
        assert "do-not-show" not in config_text and "env-pw" not in config_text
        assert config["settings"]["secret_key"] == "***"
        assert config["environment"]["REDIS_URL"] == "redis://u:***@db:6379/0"
        assert config["environment"]["STREAMMACHINE_SECRET_KEY"] == "***"
        assert config["redis_url"] == redis_url and config["read_only"] is False
        status = json.loads(await resource(c, "streammachine://status"))
        assert status["redis"]["healthy"] and status["redis"]["redis_version"]
        assert status["streams"] == {"count": 2, "capped": False}
        assert [i["app"] for i in status["instances"]] == ["orders"]


async def test_app_instances_from_the_registry(redis_url: str, redis_sync: syncredis.Redis) -> None:
    record = {
        "id": "web-7-abc", "app": "orders", "host": "web", "pid": 7, "version": "0.1.0",
        "started_at": 1.0, "ttl_s": 15, "interval_s": 2,
        "agents": [{"name": "bill", "stream": "orders", "group": "billing", "concurrency": 2,
                    "stats": {"processed": 42, "failed": 1, "latency_buckets": [1] * 30}}],
        "timers": [{"name": "tick", "interval_s": 1.0, "runs": 3, "failures": 0}],
    }  # fmt: skip
    redis_sync.set("streammachine:instances:web-7-abc", json.dumps(record), px=15000)
    other = record | {"id": "api-8-def", "app": "search", "pid": 8}
    redis_sync.set("streammachine:instances:api-8-def", json.dumps(other), px=15000)
    async with connect(create_server(redis_url), "modern") as c:
        found = (await ok(c, "app_instances", {"app": "orders"}))["instances"]
        (inst,) = found
        assert (inst["id"], inst["host"], inst["pid"], inst["fresh"]) == (
            "web-7-abc",
            "web",
            7,
            True,
        )
        assert inst["agents"][0]["processed"] == 42 and "latency_buckets" not in inst["agents"][0]
        assert inst["timers"][0]["runs"] == 3
        assert len((await ok(c, "app_instances"))["instances"]) == 2


# -- OHLC ------------------------------------------------------------------------------------------


async def test_ohlc_tools(redis_url: str, redis_sync: syncredis.Redis) -> None:
    async with connect(create_server(redis_url), "legacy") as c:
        made = await ok(c, "ohlc_create", {"name": "md", "intervals": ["1m"], "grace_ms": 0})
        again = await ok(c, "ohlc_create", {"name": "md", "intervals": [60000]})
        assert made["created"] and not again["created"]
        assert "exists" in await err(c, "ohlc_create", {"name": "md", "intervals": ["5m"]})
        for price, ts in ((1.0, 0), (3.0, 30_000), (2.0, 59_000), (5.0, 120_000)):
            await ok(c, "ohlc_update", {"name": "md", "symbol": "BTC", "price": price,
                                        "volume": 0.5, "timestamp_ms": ts})  # fmt: skip
        base = {"name": "md", "symbol": "BTC", "interval_ms": 60000}
        candles = (await ok(c, "ohlc_get_candles", base))["candles"]
        assert [(k["candle_start_ms"], k["trade_count"]) for k in candles] == [(0, 3), (120000, 1)]
        assert candles[0] | {"timestamp_ms": 0} == {
            "candle_start_ms": 0, "open": 1.0, "high": 3.0, "low": 1.0, "close": 2.0,
            "volume": 1.5, "trade_count": 3, "timestamp_ms": 0,
        }  # fmt: skip
        early = await ok(c, "ohlc_get_completed", base | {"now_ms": 59_999})
        assert early["candles"] == []
        flushed = await ok(c, "ohlc_flush", base | {"emit_to": "candles"})
        assert [k["candle_start_ms"] for k in flushed["candles"]] == [0]
        ((_, fields),) = redis_sync.xrange("candles")
        assert {k.decode(): v.decode() for k, v in fields.items()} == {
            "symbol": "BTC", "interval_ms": "60000", "candle_start_ms": "0", "open": "1.0",
            "high": "3.0", "low": "1.0", "close": "2.0", "volume": "1.5", "trade_count": "3",
            "timestamp_ms": "59000",
        }  # fmt: skip
        await ok(c, "ohlc_update", {"name": "md", "symbol": "BTC", "price": 9, "timestamp_ms": 1})
        stats = (await ok(c, "ohlc_stats", {"name": "md"}))["stats"]
        assert stats["late_tick_count"] == 1 and stats["candles_by_interval"] == {"60000": 1}
        assert (await ok(c, "ohlc_flush", base))["candles"] == []  # nothing completed yet
        unknown = await ok(c, "ohlc_get_candles", base | {"symbol": "ETH"})
        assert unknown["candles"] == []


# -- prompts ---------------------------------------------------------------------------------------


async def test_prompts_are_accurate(redis_url: str) -> None:
    import streammachine

    async with connect(create_server(redis_url), "legacy") as c:
        guide = await prompt(c, "streammachine-guide")
        for name in TOOLS:
            assert f"`{name}`" in guide, name
        task = await prompt(c, "streammachine-guide", {"task": "find stuck orders"})
        assert "find stuck orders" in task
        text = await prompt(c, "stream-processing-patterns")
        one = await prompt(c, "stream-processing-patterns", {"pattern": "fan-out"})
        assert "## fan-out" in one and "## pipeline" not in one
        with pytest.raises(Exception, match="not one of"):
            await c.get_prompt("stream-processing-patterns", {"pattern": "nope"})
    blocks = re.findall(r"```python\n(.*?)```", guide + text, re.S)
    assert len(blocks) == 8
    for code in blocks:
        compile(code, "<prompt>", "exec")  # valid Python
        imports = re.findall(r"from streammachine import \(([^)]*)\)", code)
        imports += re.findall(r"from streammachine import ([^(\n]+)\n", code)
        assert imports
        for group in imports:
            for name in filter(None, (n.strip() for n in group.split(","))):
                assert getattr(streammachine, name) is not None, name


# -- hardening (issue 19) --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_arguments_are_checked_strictly_against_the_schema(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    redis_sync.xadd("s", {"a": "1"})
    async with connect(create_server(redis_url), mode) as c:
        for tool in (await c.list_tools()).tools:
            assert tool.input_schema.get("additionalProperties") is False, tool.name
        message = await err(c, "stream_read", {"stream": "s", "count": "10"})
        assert "argument 'count': Input should be a valid integer (got '10')" in message
        message = await err(c, "stream_read", {"stream": "s", "cuont": 10})
        assert "argument 'cuont': this tool has no such argument" in message
        assert "a valid boolean" in await err(c, "storage_clear", {"confirm": "true"})
        assert "a valid string" in await err(c, "storage_read", {"key": 5})
        assert "a valid string" in await err(c, "storage_write", {"key": ["k"], "value": 1})
        assert "a valid number" in await err(
            c, "storage_write", {"key": "k", "value": 1, "ttl_s": "60"}
        )
        assert "more than 100 years" in await err(
            c, "storage_write", {"key": "k", "value": 1, "ttl_s": 1e20}
        )
        # What the schema allows still works: an int where a number is wanted, defaults.
        await ok(c, "storage_write", {"key": "k", "value": 1, "ttl_s": 60})
        assert len((await ok(c, "stream_read", {"stream": "s", "count": 10}))["entries"]) == 1
    assert redis_sync.xlen("s") == 1


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_an_unknown_prompt_names_the_prompts(redis_url: str, mode: str) -> None:
    from mcp.shared.exceptions import MCPError

    async with connect(create_server(redis_url), mode) as c:
        with pytest.raises(MCPError) as caught:
            await c.get_prompt("no-such-prompt")
        text = str(caught.value)
        assert "no prompt named 'no-such-prompt'" in text, text
        assert "streammachine-guide" in text and "stream-processing-patterns" in text
        assert "Internal" not in text
        assert await prompt(c, "streammachine-guide")  # the server is fine


async def test_a_password_in_the_query_string_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streammachine.testing import RedisServer
    from tests.util import start_or_skip

    server = start_or_skip(RedisServer())  # its own: a password would lock out other tests
    try:
        admin = syncredis.Redis.from_url(server.url)
        admin.config_set("requirepass", "qs-secret-pw")
        admin.close()
        url = f"redis://127.0.0.1:{server.port}/0?password=qs-secret-pw"
        monkeypatch.setenv("REDIS_URL", url)
        async with connect(create_server(url), "modern") as c:
            health = await ok(c, "health_check")
            assert health["healthy"] and health["redis_url"].endswith("?password=***")
            config = await resource(c, "streammachine://config")
            status = await resource(c, "streammachine://status")
            assert json.loads(status)["redis"]["healthy"] is True
            for text in (json.dumps(health), config, status):
                assert "qs-secret-pw" not in text
            assert json.loads(config)["environment"]["REDIS_URL"].endswith("?password=***")
    finally:
        server.close()


async def test_stream_list_shows_non_utf8_names_escaped(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xadd(b"tick\xffs", {"n": "1"})
    redis_sync.xgroup_create(b"tick\xffs", b"g\xfe", "0")
    async with connect(create_server(redis_url), "modern") as c:
        (found,) = (await ok(c, "stream_list"))["streams"]
        assert found["stream"] == "tick\\xffs" and found["length"] == 1
        assert [g["name"] for g in found["groups"]] == ["g\\xfe"]


async def test_app_instances_skips_malformed_heartbeats(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.set("streammachine:instances:junk", b"not json", px=15000)
    redis_sync.set("streammachine:instances:bad", json.dumps({"agents": [1]}), px=15000)
    good = {"id": "web-1-abc", "app": "orders", "host": "web", "pid": 1, "ttl_s": 15}
    redis_sync.set("streammachine:instances:web-1-abc", json.dumps(good), px=15000)
    async with connect(create_server(redis_url), "modern") as c:
        found = (await ok(c, "app_instances"))["instances"]
        assert [i["id"] for i in found] == ["web-1-abc"]
