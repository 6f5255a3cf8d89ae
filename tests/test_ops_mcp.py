"""The MCP server's operator tools through the SDK's own client against a real Redis: pause and
resume, dead letters (filters, show, retry, edit, purge), pending entries (alive or not, hand
back, dead-letter; fenced), rewind, delayed entries, the inspector and the audit — destructive
ones only with a confirmation, none at all in read-only mode."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import redis as syncredis

from streammachine import keys
from streammachine.admin.pending import RELEASED_CONSUMER
from streammachine.consume.deadletter import DEAD_LETTER_FIELDS
from streammachine.mcp_server import CONFIRMED_TOOLS, TOOLS, create_server
from streammachine.schedule.delayed import encode_entry
from tests.test_mcp import IN_PROCESS, Answer, connect, err, ok

pytestmark = pytest.mark.anyio

OPERATOR_TOOLS = {
    "agents_list", "agent_pause", "agent_resume", "dead_show", "dead_retry", "dead_edit_retry",
    "dead_purge", "pending_dead_letter", "pending_hand_back", "group_rewind", "scheduled_list",
    "scheduled_promote", "scheduled_cancel", "stream_inspect", "audit_log",
}  # fmt: skip


def dead(r: syncredis.Redis, n: int, error: str = "boom") -> str:
    meta = {"error": error, "error_type": "ValueError", "traceback": "", "deliveries": "3"}
    meta |= {"source_stream": "pay", "source_id": f"{n}-0", "group": "g", "failed_at": "1.5"}
    flat = ["order", str(n), *[x for k in DEAD_LETTER_FIELDS for x in (k, meta[k])]]
    return r.execute_command("XADD", "pay:dead", "*", *flat).decode()  # type: ignore[no-any-return]


def beat(r: syncredis.Redis) -> None:
    record = {"id": "h-1-a", "app": "shop", "host": "h", "pid": 1, "ttl_s": 15}
    record["agents"] = [{"name": "bill", "stream": "orders", "group": "billing", "paused": False}]
    r.set(keys.INSTANCES + "h-1-a", json.dumps(record), px=15_000)


def audit(r: syncredis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrevrange(keys.AUDIT)]


async def test_the_operator_tools_are_listed_and_read_only_mode_refuses_them(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    assert set(TOOLS) >= OPERATOR_TOOLS
    for name in ("dead_purge", "dead_edit_retry", "pending_dead_letter", "pending_hand_back",
                 "group_rewind", "scheduled_cancel"):  # fmt: skip
        assert name in CONFIRMED_TOOLS and TOOLS[name][2], name
    read_only = {n for n in OPERATOR_TOOLS if TOOLS[n][1]}
    assert read_only == {
        "agents_list",
        "dead_show",
        "scheduled_list",
        "stream_inspect",
        "audit_log",
    }
    beat(redis_sync)
    async with connect(create_server(redis_url, read_only=True), "legacy") as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert OPERATOR_TOOLS & names == read_only
        for name, args in [
            ("agent_pause", {"app": "shop", "agent": "bill"}),
            ("dead_retry", {"stream": "pay"}),
            ("dead_purge", {"stream": "pay", "confirm": True}),
            ("group_rewind", {"stream": "pay", "group": "g", "to": "0", "confirm": True}),
        ]:
            assert "Unknown tool" in await err(c, name, args)
        assert (await ok(c, "agents_list"))["agents"][0]["agent"] == "bill"
    assert redis_sync.exists(keys.paused("shop")) == 0 and redis_sync.exists(keys.AUDIT) == 0


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_pause_resume_and_the_audit_say_who(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    beat(redis_sync)
    async with connect(create_server(redis_url), mode) as c:
        done = await ok(c, "agent_pause", {"app": "shop", "agent": "bill"})
        assert done == {
            "app": "shop",
            "agent": "bill",
            "paused": True,
            "changed": True,
            "running": True,
        }
        assert redis_sync.smembers(keys.paused("shop")) == {b"bill"}
        (row,) = (await ok(c, "agents_list"))["agents"]
        assert (row["paused"], row["instances"], row["reading"]) == (True, 1, 1)
        assert "has no agent 'bil'" in await err(c, "agent_pause", {"app": "shop", "agent": "bil"})
        assert (await ok(c, "agent_resume", {"app": "shop", "agent": "bill"}))["changed"] is True
        trail = (await ok(c, "audit_log"))["result"]["actions"]
    assert redis_sync.smembers(keys.paused("shop")) == set()
    assert [(a["interface"], a["action"]) for a in trail] == [("mcp", "resume"), ("mcp", "pause")]
    assert trail[0]["who"] != "an MCP client", "the client's own name"


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_dead_letters_filtered_shown_retried_edited_and_purged(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    ids = [dead(redis_sync, n, error=f"error {n}") for n in range(4)]
    async with connect(create_server(redis_url), mode) as c:
        listed = await ok(c, "stream_dead_letters", {"stream": "pay", "error": "error 2"})
        assert [d["id"] for d in listed["entries"]] == [ids[2]] and listed["total"] == 4
        by_field = await ok(c, "stream_dead_letters", {"stream": "pay", "where": ["order=3"]})
        assert [d["id"] for d in by_field["entries"]] == [ids[3]]
        assert "not a time" in await err(c, "stream_dead_letters", {"stream": "pay", "since": "x"})
        shown = (await ok(c, "dead_show", {"stream": "pay", "id": ids[0]}))["result"]
        assert shown["message"]["fields"] == {"order": "0"} and shown["raw"][0] == ["order", "0"]
        assert "no dead letter" in await err(c, "dead_show", {"stream": "pay", "id": "1-1"})
        assert "not a stream entry id" in await err(c, "dead_show", {"stream": "pay", "id": "x"})

        dry = await ok(c, "dead_retry", {"stream": "pay", "error": "error 1", "dry_run": True})
        assert [r["id"] for r in dry["result"]["replayed"]] == [ids[1]]
        assert redis_sync.xlen("pay:dead") == 4 and redis_sync.exists("pay") == 0
        sent = (await ok(c, "dead_retry", {"stream": "pay", "ids": [ids[1], "1-1"]}))["result"]
        assert [r["id"] for r in sent["replayed"]] == [ids[1]]
        assert [s["id"] for s in sent["stayed"]] == ["1-1"]
        assert [f for _, f in redis_sync.xrange("pay")] == [{b"order": b"1"}]

        edit = {"stream": "pay", "id": ids[0], "set": {"order": "0-fixed"}}
        assert "not confirmed" in await err(c, "dead_edit_retry", edit)
        assert redis_sync.xlen("pay:dead") == 3
        preview = await ok(c, "dead_edit_retry", edit | {"dry_run": True})
        assert preview["result"]["replayed"][0]["fields"] == {"order": "0-fixed"}
        await ok(c, "dead_edit_retry", edit | {"confirm": True})
        assert redis_sync.xrevrange("pay", count=1)[0][1] == {b"order": b"0-fixed"}

        assert "not confirmed" in await err(c, "dead_purge", {"stream": "pay"})
        assert redis_sync.xlen("pay:dead") == 2
        purged = await ok(c, "dead_purge", {"stream": "pay", "where": ["order=2"], "confirm": True})
        assert purged["result"]["deleted"] == [ids[2]] and redis_sync.xlen("pay:dead") == 1
    assert [a["action"] for a in audit(redis_sync)] == [
        "dead.purge",
        "dead.edit_retry",
        "dead.retry",
    ]


async def test_elicitation_confirms_or_refuses_a_destructive_operator_tool(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    entry = dead(redis_sync, 1)
    args = {"stream": "pay", "ids": [entry]}
    for answer in (Answer("decline"), Answer("accept", confirm=False)):
        async with connect(create_server(redis_url), "legacy", elicitation_callback=answer) as c:
            await err(c, "dead_purge", args)
        assert answer.asked and "Delete 1 dead letters of 'pay' for good?" in answer.asked[0]
    assert redis_sync.xlen("pay:dead") == 1
    yes = Answer("accept")
    async with connect(create_server(redis_url), "legacy", elicitation_callback=yes) as c:
        assert (await ok(c, "dead_purge", args))["result"]["deleted"] == [entry]
        redis_sync.xgroup_create("pay", "g", "0", mkstream=True)
        rewind = {"stream": "pay", "group": "g", "to": "$", "dry_run": True}
        assert (await ok(c, "group_rewind", rewind))["result"]["done"] is False
    assert redis_sync.xlen("pay:dead") == 0 and len(yes.asked) == 1, "a dry run asks nothing"


@pytest.mark.parametrize("mode", IN_PROCESS)
async def test_pending_rewind_scheduled_and_inspect(
    redis_url: str, redis_sync: syncredis.Redis, mode: str
) -> None:
    redis_sync.xgroup_create("pay", "g", "$", mkstream=True)
    held = [redis_sync.xadd("pay", {"order": str(n)}).decode() for n in range(3)]
    redis_sync.xreadgroup("g", "gone-1-x-0", {"pay": ">"})
    redis_sync.xadd("ticks", {"data": msgspec.msgpack.encode({"p": 1.5}), "sym": "A"})
    key = keys.scheduled("default")
    redis_sync.zadd(key, {encode_entry("a" * 24, "later", ["n", "1"]): 32503680000000})
    redis_sync.zadd(key, {encode_entry("b" * 24, "later", ["n", "2"]): 32503680000000})
    redis_sync.zadd(key, {b"garbage": 1})
    async with connect(create_server(redis_url), mode) as c:
        pending = await ok(c, "stream_pending", {"stream": "pay", "group": "g"})
        (group,) = pending["groups"]
        assert group["dead_consumers"] == ["gone-1-x-0"]
        assert [(e["id"], e["alive"]) for e in group["entries"]] == [(i, False) for i in held]
        take = {"stream": "pay", "group": "g", "ids": [held[0]]}
        assert "not confirmed" in await err(c, "pending_hand_back", take)
        back = await ok(c, "pending_hand_back", take | {"confirm": True})
        assert back["result"]["done"] == [{"id": held[0], "consumer": "gone-1-x-0"}]
        (entry,) = redis_sync.xpending_range("pay", "g", held[0], held[0], 1)
        assert entry["consumer"] == RELEASED_CONSUMER.encode()
        moved = await ok(c, "pending_dead_letter", take | {"ids": [held[1]], "confirm": True})
        assert moved["result"]["done"][0]["id"] == held[1] and redis_sync.xlen("pay:dead") == 1
        assert redis_sync.hget(keys.fence("pay", "g"), "gone-1-x-0") == b"2"

        rewind = {"stream": "pay", "group": "g", "to": "0"}
        plan = (await ok(c, "group_rewind", rewind | {"dry_run": True}))["result"]
        assert (plan["again"], plan["done"]) == (3, False)
        assert "not confirmed" in await err(c, "group_rewind", rewind)
        assert (await ok(c, "group_rewind", rewind | {"confirm": True}))["result"]["done"]
        assert redis_sync.xinfo_groups("pay")[0]["last-delivered-id"] == b"0-0"

        listed = (await ok(c, "scheduled_list"))["result"]
        assert [e["id"] for e in listed["entries"] if not e["bad"]] == ["a" * 24, "b" * 24]
        assert any(e["bad"] for e in listed["entries"])
        promoted = await ok(c, "scheduled_promote", {"ids": ["a" * 24]})
        assert promoted["result"]["promoted"][0]["stream"] == "later"
        assert [f for _, f in redis_sync.xrange("later")] == [{b"n": b"1"}]
        assert "not confirmed" in await err(c, "scheduled_cancel", {"ids": ["b" * 24]})
        cancelled = await ok(c, "scheduled_cancel", {"ids": ["b" * 24], "confirm": True})
        assert cancelled["result"]["cancelled"] == ["b" * 24] and redis_sync.zcard(key) == 1

        seen: Any = (await ok(c, "stream_inspect", {"stream": "ticks"}))["result"]
        assert seen["entries"][0]["decoded"]["data"]["msgpack"] == {"p": 1.5}
        filt = await ok(c, "stream_inspect", {"stream": "pay", "where": ["order=2"]})
        assert [e["id"] for e in filt["result"]["entries"]] == [held[2]]
    actions = [a["action"] for a in audit(redis_sync)]
    assert actions == [
        "scheduled.cancel", "scheduled.promote", "rewind", "pending.dead_letter",
        "pending.hand_back",
    ]  # fmt: skip
