"""The operator command layer (`streammachine.admin`) against a real Redis: pause/resume, dead
letters (filters, show, retry per entry, edit, purge), pending entries (fenced take-aways),
rewind, scheduled promote/cancel, the inspector, the action registry and the audit trail."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import msgspec
import pytest
import redis as syncredis

from streammachine import RedisConnection, keys
from streammachine.admin import actions
from streammachine.admin.agents import list_agents, pause_agent, resume_agent
from streammachine.admin.audit import Actor, read_audit
from streammachine.admin.deadletters import DeadFilter, find_dead, show_dead
from streammachine.admin.fence import FENCE_TTL_MS
from streammachine.admin.inspector import inspect_stream
from streammachine.admin.instances import MAX_AGENTS, read_instances
from streammachine.admin.pending import (
    RELEASED_CONSUMER,
    dead_letter_pending,
    hand_back_pending,
    list_pending,
)
from streammachine.admin.replay import edit_and_retry, purge_dead, replay_dead, retry_dead
from streammachine.admin.rewind import rewind_group
from streammachine.admin.scheduled import cancel_scheduled, list_scheduled, promote_scheduled
from streammachine.codec import StructCodec
from streammachine.consume.deadletter import DEAD_LETTER_FIELDS
from streammachine.exceptions import ConfigError
from streammachine.presence.liveness import ALIVE_SCRIPT
from streammachine.schedule.delayed import Scheduler

ACTOR = Actor("cli", "tester@host")


def beat(r: syncredis.Redis, iid: str, app: str, agents: list[dict[str, Any]], **more: Any) -> None:
    record = {"id": iid, "app": app, "host": "h", "pid": 1, "ttl_s": 15, "interval_s": 2}
    r.set(keys.INSTANCES + iid, json.dumps(record | {"agents": agents} | more), px=15_000)


def dead(r: syncredis.Redis, fields: list[Any], **meta: Any) -> str:
    """A dead letter as the runner writes it: raw fields, then DEAD_LETTER_FIELDS in order."""
    values = {"error": "boom", "error_type": "ValueError", "traceback": "", "deliveries": "3"}
    values |= {"source_stream": "orders", "source_id": "1-0", "group": "g", "failed_at": "1.5"}
    values |= meta
    flat = [*fields, *[x for name in DEAD_LETTER_FIELDS for x in (name, values[name])]]
    dead_stream = meta.get("dead_stream", "orders:dead")
    return r.execute_command("XADD", dead_stream, "*", *flat).decode()  # type: ignore[no-any-return]


def raw(r: syncredis.Redis, stream: str | bytes) -> list[list[bytes]]:
    reply = r.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, stream)
    return [list(f) for _, f in reply]  # type: ignore[union-attr]


# --- pause and resume --------------------------------------------------------------------------


async def test_pause_and_resume_live_in_the_app_set_and_are_audited(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    beat(redis_sync, "h-1-a", "shop", [{"name": "bill", "stream": "orders", "group": "g"}])
    beat(
        redis_sync, "h-2-b", "shop",
        [{"name": "bill", "stream": "orders", "group": "g", "paused": True}],
    )  # fmt: skip
    done = await pause_agent(aredis, "shop", "bill", actor=ACTOR)
    assert done == {
        "app": "shop",
        "agent": "bill",
        "paused": True,
        "changed": True,
        "running": True,
    }
    assert redis_sync.smembers(keys.paused("shop")) == {b"bill"}
    assert (await pause_agent(aredis, "shop", "bill", actor=ACTOR))["changed"] is False
    (row,) = await list_agents(aredis)
    assert row | {} == {
        "app": "shop",
        "agent": "bill",
        "stream": "orders",
        "group": "g",
        "paused": True,
        "instances": 2,
        "reading": 1,
        "paused_instances": 1,
    }  # fmt: skip  h-1-a's record says it still reads (paused: false)
    with pytest.raises(ConfigError, match="has no agent 'bil'; its agents: bill"):
        await pause_agent(aredis, "shop", "bil", actor=ACTOR)
    # An app that does not run (yet) can be paused ahead: its workers start paused.
    assert (await pause_agent(aredis, "later", "x", actor=ACTOR))["running"] is False
    assert [(a["app"], a["agent"], a["paused"]) for a in await list_agents(aredis)] == [
        ("later", "x", True),
        ("shop", "bill", True),
    ]
    assert (await resume_agent(aredis, "shop", "bill", actor=ACTOR))["changed"] is True
    assert redis_sync.smembers(keys.paused("shop")) == set()
    trail = await read_audit(aredis)
    assert [(a["action"], a["target"], a["count"]) for a in trail] == [
        ("resume", "shop/bill", 1),
        ("pause", "later/x", 1),
        ("pause", "shop/bill", 0),
        ("pause", "shop/bill", 1),
    ]
    assert trail[0]["interface"] == "cli" and trail[0]["who"] == "tester@host"
    assert trail[0]["at_ms"] == pytest.approx(time.time() * 1000, abs=60_000)
    redis_sync.set(keys.paused("odd"), "x")
    with pytest.raises(ConfigError, match="not a set"):
        await pause_agent(aredis, "odd", "a", actor=ACTOR)
    with pytest.raises(ConfigError, match="empty"):
        await pause_agent(aredis, "shop", "", actor=ACTOR)


# --- dead letters ------------------------------------------------------------------------------


async def test_a_dead_letter_is_deleted_only_when_its_own_append_succeeded(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    """Issue 29: one refused append (its source holds a string) must not lose that entry."""
    redis_sync.set("strkey", "x")
    one = dead(redis_sync, ["n", "1"], source_stream="strkey", dead_stream="rp:dead")
    two = dead(redis_sync, ["n", "2"], source_stream="", dead_stream="rp:dead")
    three = dead(redis_sync, ["n", "3"], source_stream="victim", dead_stream="rp:dead")
    report = await retry_dead(aredis, "rp", actor=ACTOR)
    assert [(r["id"], r["source_stream"]) for r in report.replayed] == [
        (two, "rp"),
        (three, "victim"),
    ]
    assert [s["id"] for s in report.stayed] == [one]
    assert "WRONGTYPE" in report.stayed[0]["reason"]
    assert [f[:2] for f in raw(redis_sync, "rp:dead")] == [[b"n", b"1"]], "n=1 stays"
    assert raw(redis_sync, "rp") == [[b"n", b"2"]]
    assert raw(redis_sync, "victim") == [[b"n", b"3"]]
    assert redis_sync.get("strkey") == b"x"


async def test_retry_keeps_the_source_name_and_the_fields_as_bytes(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    payload = [b"k\xff", b"\x00\xfe", b"k\xff", b"again"]
    entry = dead(redis_sync, payload, source_stream=b"x\xff")
    assert await replay_dead(aredis, "orders", [entry]) == 1
    assert raw(redis_sync, b"x\xff") == [payload]
    assert redis_sync.exists("x\ufffd") == 0
    assert redis_sync.exists("orders:dead") and redis_sync.xlen("orders:dead") == 0


async def test_dead_letters_filter_show_dry_run_edit_and_purge(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    a = dead(redis_sync, ["order", "1", "qty", "5"], error="timeout talking to bank")
    b = dead(redis_sync, ["order", "2", "data", msgspec.msgpack.encode({"p": 1.5})])
    c = dead(redis_sync, ["order", "3"], error_type="KeyError", error="'sku'")
    page = await find_dead(aredis, "orders", DeadFilter.parse(error="TIMEOUT"))
    assert [d["id"] for d in page["entries"]] == [a] and page["total"] == 3
    page = await find_dead(aredis, "orders", DeadFilter.parse(["order=3"]))
    assert [d["id"] for d in page["entries"]] == [c]
    page = await find_dead(aredis, "orders", DeadFilter.parse(error="keyerror"))
    assert [d["id"] for d in page["entries"]] == [c]
    future = DeadFilter.parse(since="2999-01-01T00:00:00Z")
    assert (await find_dead(aredis, "orders", future))["entries"] == []
    page = await find_dead(aredis, "orders", DeadFilter.parse(since="1h"), count=2)
    assert [d["id"] for d in page["entries"]] == [a, b] and page["next"] == f"({b}"
    rest = await find_dead(aredis, "orders", DeadFilter.parse(since="1h"), after=page["next"])
    assert [d["id"] for d in rest["entries"]] == [c] and rest["next"] is None
    with pytest.raises(ConfigError, match="not a time"):
        DeadFilter.parse(since="yesterday")

    shown = await show_dead(aredis, "orders", b)
    assert shown is not None and shown["message"]["decoded"]["data"]["msgpack"] == {"p": 1.5}
    assert shown["raw"][1][0] == "data" and shown["raw"][1][1].startswith("\\x81")
    assert shown["error"] == "boom" and shown["fields"]["order"] == "2"
    assert await show_dead(aredis, "orders", "1-1") is None
    with pytest.raises(ConfigError, match="not a stream entry id"):
        await show_dead(aredis, "orders", "abc")

    dry = await retry_dead(aredis, "orders", where=DeadFilter.parse(["order=1"]), dry_run=True)
    assert dry.replayed == [
        {"id": a, "source_stream": "orders", "new_id": None, "fields": {"order": "1", "qty": "5"}}
    ]
    assert redis_sync.xlen("orders:dead") == 3 and redis_sync.exists("orders") == 0

    edited = await edit_and_retry(aredis, "orders", a, {"qty": "1", "note": "fixed"}, ["order"])
    assert [r["id"] for r in edited.replayed] == [a]
    assert raw(redis_sync, "orders") == [[b"qty", b"1", b"note", b"fixed"]]
    with pytest.raises(ConfigError, match="no field"):
        await edit_and_retry(aredis, "orders", b, {}, ["order", "data"])
    with pytest.raises(ConfigError, match="say what to change"):
        await edit_and_retry(aredis, "orders", b)

    dry_purge = await purge_dead(
        aredis, "orders", where=DeadFilter.parse(error="sku"), dry_run=True
    )
    assert dry_purge.deleted == [c] and redis_sync.xlen("orders:dead") == 2
    purged = await purge_dead(aredis, "orders", [c, "1-1"], actor=ACTOR)
    assert (purged.deleted, purged.missing) == ([c], ["1-1"])
    assert [d["id"] for d in (await find_dead(aredis, "orders"))["entries"]] == [b]
    assert [x["action"] for x in await read_audit(aredis)] == ["dead.purge", "dead.edit_retry"]


async def test_two_retries_at_once_send_each_dead_letter_once(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    ids = [dead(redis_sync, ["n", str(n)]) for n in range(200)]
    reports: list[Any] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lambda: _append(reports, retry_dead(aredis, "orders", ids)))
    assert sum(len(r.replayed) for r in reports) == 200
    assert redis_sync.xlen("orders") == 200 and redis_sync.xlen("orders:dead") == 0


async def _append(out: list[Any], coro: Any) -> None:
    out.append(await coro)


# --- pending entries ---------------------------------------------------------------------------


async def _held(redis_sync: syncredis.Redis, consumer: str, n: int = 2) -> list[str]:
    redis_sync.xgroup_create("orders", "g", "0", mkstream=True)
    ids = [redis_sync.xadd("orders", {"n": str(i), "b": b"\xff"}).decode() for i in range(n)]
    redis_sync.xreadgroup("g", consumer, {"orders": ">"})
    return ids


async def test_pending_entries_with_liveness_and_fenced_take_aways(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    ids = await _held(redis_sync, "web-1-42-bill-0")
    redis_sync.xreadgroup("g", "web-1-42-bill-0", {"orders": "0"})  # a second delivery
    await aredis.script(ALIVE_SCRIPT)(keys=[keys.PROCESSES], args=["web-1-42-", 60_000])
    listed = await list_pending(aredis, "orders")
    (group,) = listed["groups"]
    assert group["consumers"] == [{"name": "web-1-42-bill-0", "pending": 2, "alive": True}]
    assert [(e["id"], e["deliveries"], e["alive"]) for e in group["entries"]] == [
        (ids[0], 2, True),
        (ids[1], 2, True),
    ]
    fence = keys.fence("orders", "g")
    moved = await dead_letter_pending(aredis, "orders", "g", [ids[0]], actor=ACTOR)
    assert moved["done"] == [{"id": ids[0], "consumer": "web-1-42-bill-0"}]
    (letter,) = raw(redis_sync, "orders:dead")
    assert letter[:4] == [b"n", b"0", b"b", b"\xff"], "the raw fields first, exactly"
    meta = dict(zip(letter[4::2], letter[5::2], strict=True))
    assert [k.decode() for k in letter[4::2]] == list(DEAD_LETTER_FIELDS)
    assert meta[b"error_type"] == b"OperatorDeadLetter" and meta[b"deliveries"] == b"2"
    assert meta[b"source_id"] == ids[0].encode() and meta[b"group"] == b"g"
    assert b"tester@host" in meta[b"error"]
    assert redis_sync.hget(fence, "web-1-42-bill-0") == b"1"
    assert FENCE_TTL_MS - 60_000 < redis_sync.pttl(fence) <= FENCE_TTL_MS

    wrong = await hand_back_pending(aredis, "orders", "g", [ids[1]], consumer="someone-else")
    assert wrong["done"] == [] and "now held by web-1-42-bill-0" in wrong["stayed"][0]["reason"]
    back = await hand_back_pending(aredis, "orders", "g", [ids[1], ids[0]], actor=ACTOR)
    assert back["done"] == [{"id": ids[1], "consumer": "web-1-42-bill-0"}]
    assert "not pending" in back["stayed"][0]["reason"]
    (entry,) = redis_sync.xpending_range("orders", "g", "-", "+", 10)
    assert entry["consumer"] == RELEASED_CONSUMER.encode()
    assert entry["times_delivered"] == 2, "handing back is not a delivery"
    assert entry["time_since_delivered"] > 86_400_000, "any consumer's claim takes it at once"
    assert redis_sync.hget(fence, "web-1-42-bill-0") == b"2"
    assert [x["action"] for x in await read_audit(aredis)] == [
        "pending.hand_back",
        "pending.dead_letter",
    ]
    with pytest.raises(ConfigError, match="no group 'nope'"):
        await hand_back_pending(aredis, "orders", "nope", [ids[1]])
    with pytest.raises(ConfigError, match="not a stream entry id"):
        await dead_letter_pending(aredis, "orders", "g", ["abc"])


# --- rewind ------------------------------------------------------------------------------------


async def test_rewind_counts_first_then_sets_the_group(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xgroup_create("orders", "g", "$", mkstream=True)
    ids = [redis_sync.xadd("orders", {"n": str(n)}).decode() for n in range(5)]
    redis_sync.xreadgroup("g", "c", {"orders": ">"})
    plan = await rewind_group(aredis, "orders", "g", ids[1], dry_run=True)
    assert (plan["from"], plan["to"], plan["again"], plan["done"]) == (ids[4], ids[1], 3, False)
    assert redis_sync.xinfo_groups("orders")[0]["last-delivered-id"] == ids[4].encode()
    done = await rewind_group(aredis, "orders", "g", "0", actor=ACTOR)
    assert (done["again"], done["done"]) == (5, True)
    assert redis_sync.xinfo_groups("orders")[0]["last-delivered-id"] == b"0-0"
    ahead = await rewind_group(aredis, "orders", "g", "$", dry_run=True)
    assert (ahead["skipped"], ahead["to"]) == (5, ids[4])
    ms = int(ids[2].split("-")[0])
    by_time = await rewind_group(aredis, "orders", "g", str(ms), dry_run=True)
    assert by_time["to"] == f"{ms}-0"
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000 - 3600))
    assert (await rewind_group(aredis, "orders", "g", iso, dry_run=True))["skipped"] == 0
    with pytest.raises(ConfigError, match="is not an entry id, a time or a duration"):
        await rewind_group(aredis, "orders", "g", "yesterday")
    with pytest.raises(ConfigError, match="no group"):
        await rewind_group(aredis, "orders", "h", "0")
    (audit,) = await read_audit(aredis)
    assert audit["action"] == "rewind" and audit["count"] == 5


# --- scheduled entries -------------------------------------------------------------------------


async def test_scheduled_promote_cancel_and_bad_members(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    sched = Scheduler(aredis, "default")
    due = int(time.time() * 1000) + 3_600_000
    first, second = await sched.schedule_many("later", [{"a": b"\xff"}, {"a": "2"}], due)
    key = keys.scheduled("default")
    redis_sync.zadd(key, {b"garbage": 5, b"0" * 24 + b"|9:x": 6, b"f" * 24 + b"|1:s1:0": 9e30})
    listed = await list_scheduled(aredis, "default")
    assert listed["total"] == 5
    bad = [r for r in listed["entries"] if r["bad"]]
    good = [r for r in listed["entries"] if not r["bad"]]
    assert len(bad) == 3 and all("not a delayed entry" in r["bad"] for r in bad)
    assert [r["id"] for r in good] == [first, second]
    promoted = await promote_scheduled(aredis, "default", [first], actor=ACTOR)
    assert [p["id"] for p in promoted["promoted"]] == [first]
    assert raw(redis_sync, "later") == [[b"a", b"\xff"]]
    cancelled = await cancel_scheduled(aredis, "default", [second, first], actor=ACTOR)
    assert (cancelled["cancelled"], cancelled["missing"]) == ([second], [first])
    assert redis_sync.zcard(key) == 3
    with pytest.raises(ConfigError, match="not a schedule id"):
        await cancel_scheduled(aredis, "default", ["nope"])
    assert [x["action"] for x in await read_audit(aredis)] == [
        "scheduled.cancel",
        "scheduled.promote",
    ]


# --- the inspector -----------------------------------------------------------------------------


class Tick(msgspec.Struct):
    price: float
    symbol: str


async def test_the_inspector_decodes_filters_and_bounds(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    for n in range(30):
        redis_sync.xadd("ticks", {"price": str(n), "symbol": "AAPL" if n % 3 else "MSFT"})
    redis_sync.xadd("ticks", {"data": msgspec.msgpack.encode({"price": 1.5, "symbol": "X"})})
    redis_sync.xadd("ticks", {"doc": json.dumps({"a": [1, 2]}), "price": "nan?"})
    page = await inspect_stream(aredis, "ticks", where=["symbol=MSFT"], count=4)
    assert [e["fields"]["price"] for e in page["entries"]] == ["0", "3", "6", "9"]
    assert page["next"] is not None
    more = await inspect_stream(aredis, "ticks", start=page["next"], where=["symbol=MSFT"])
    assert [e["fields"]["price"] for e in more["entries"]] == ["12", "15", "18", "21", "24", "27"]
    newest = await inspect_stream(aredis, "ticks", count=2, newest_first=True)
    (last, packed) = newest["entries"]
    assert last["decoded"]["doc"]["json"] == {"a": [1, 2]}
    assert packed["decoded"]["data"]["msgpack"] == {"price": 1.5, "symbol": "X"}
    typed = await inspect_stream(
        aredis, "ticks", count=1, newest_first=True, start="1h",
        schema=StructCodec(Tick), where=["symbol~aap"],
    )  # fmt: skip
    assert typed["entries"][0]["value"] == {"price": 29.0, "symbol": "AAPL"}
    bad = await inspect_stream(
        aredis, "ticks", count=1, newest_first=True, schema=StructCodec(Tick)
    )
    assert bad["entries"][0]["value"] is None and "Tick" in bad["entries"][0]["schema_error"]
    capped = await inspect_stream(aredis, "ticks", where=["symbol=none"], scan_limit=10)
    assert capped["entries"] == [] and capped["scanned"] == 10 and capped["next"]
    future = await inspect_stream(aredis, "ticks", start="2999-01-01T00:00:00Z")
    assert future["entries"] == [] and future["next"] is None
    assert (await inspect_stream(aredis, "nope"))["exists"] is False
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        await inspect_stream(aredis, "ticks", where=["oops"])


# --- the action registry -----------------------------------------------------------------------


async def test_actions_check_arguments_and_confirmation_before_redis(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    entry = dead(redis_sync, ["n", "1"])
    with pytest.raises(ConfigError, match="no action 'explode'"):
        await actions.perform(aredis, "explode", b"{}", ACTOR)
    with pytest.raises(ConfigError, match="unknown field `colour`"):
        await actions.perform(aredis, "pause", b'{"app": "a", "agent": "b", "colour": 1}', ACTOR)
    with pytest.raises(ConfigError, match="Expected `str`"):
        await actions.perform(aredis, "pause", b'{"app": 1, "agent": "b"}', ACTOR)
    with pytest.raises(ConfigError, match="confirm"):
        await actions.perform(aredis, "dead.purge", {"stream": "orders", "ids": [entry]}, ACTOR)
    with pytest.raises(ConfigError, match="ids or a filter, not both"):
        body = {"stream": "orders", "ids": [entry], "error": "x", "confirm": True}
        await actions.perform(aredis, "dead.purge", body, ACTOR)
    assert redis_sync.xlen("orders:dead") == 1 and await read_audit(aredis) == []
    dry = await actions.perform(aredis, "dead.purge", {"stream": "orders", "dry_run": True}, ACTOR)
    assert dry["deleted"] == [entry] and redis_sync.xlen("orders:dead") == 1
    done = await actions.perform(
        aredis, "dead.purge", {"stream": "orders", "ids": [entry], "confirm": True}, ACTOR
    )
    assert done["deleted"] == [entry] and redis_sync.xlen("orders:dead") == 0


# --- instances: untrusted records --------------------------------------------------------------


async def test_instance_records_over_the_caps_are_skipped_everywhere_alike(
    aredis: RedisConnection, redis_sync: syncredis.Redis
) -> None:
    beat(redis_sync, "ok-1", "shop", [{"name": "bill"}])
    beat(redis_sync, "huge-app", "x" * 5_000_000, [])
    beat(redis_sync, "many", "shop", [{"name": f"a{n}"} for n in range(MAX_AGENTS + 1)])
    beat(redis_sync, "long-agent", "shop", [{"name": "n" * 2000}])
    beat(redis_sync, "bad-paused", "shop", [{"name": "b", "paused": "yes"}])
    redis_sync.hset(keys.INSTANCES + "a-hash", "app", "shop")
    good, bad = await read_instances(aredis)
    assert [i["id"] for i in good] == ["ok-1"]
    # the heartbeat schema says `paused` is a bool: a record saying "yes" is invalid, skipped
    assert sorted(bad) == sorted(
        keys.INSTANCES + k for k in ("huge-app", "many", "long-agent", "bad-paused", "a-hash")
    )
