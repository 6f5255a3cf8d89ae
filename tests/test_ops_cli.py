"""The operator commands through the real CLI in a subprocess against a real Redis: pause, resume
and agents; dead letters (filters, show, replay with a dry run and an exact report, edit, purge);
pending entries; rewind; delayed entries; inspect; audit. And what a terminal shows: no control
character from Redis reaches it, and `top` and the tables fit 80 columns."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import msgspec
import redis as syncredis

from streammachine import keys
from streammachine.admin.pending import RELEASED_CONSUMER
from streammachine.consume.deadletter import DEAD_LETTER_FIELDS
from streammachine.schedule.delayed import encode_entry
from tests.test_cli import cli, cli_many, env_for, json_lines, one_error_line
from tests.test_progress import on_terminal


def dead(
    r: syncredis.Redis, fields: list[bytes | str], stream: str = "pay:dead", **meta: bytes | str
) -> str:
    values: dict[str, bytes | str] = {
        "error": "boom",
        "error_type": "ValueError",
        "traceback": "tb",
    }
    values |= {"deliveries": "5", "source_stream": "pay", "source_id": "1-0", "group": "g"}
    values |= {"failed_at": "1700000000.5"} | meta
    flat = [*fields, *[x for k in DEAD_LETTER_FIELDS for x in (k, values[k])]]
    return r.execute_command("XADD", stream, "*", *flat).decode()  # type: ignore[no-any-return]


def beat(r: syncredis.Redis, iid: str, app: str, agents: list[dict[str, object]]) -> None:
    record = {"id": iid, "app": app, "host": "web-1", "pid": 42, "ttl_s": 15, "interval_s": 2}
    record |= {"heartbeat_at": 1.0, "started_at": 1.0, "version": "1.0"}
    r.set(keys.INSTANCES + iid, json.dumps(record | {"agents": agents}), px=15_000)


def audit(r: syncredis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrevrange(keys.AUDIT)]


def test_pause_resume_agents_and_audit(redis_url: str, redis_sync: syncredis.Redis) -> None:
    beat(redis_sync, "web-1-42-aa", "shop", [{"name": "bill", "stream": "orders", "group": "b"}])
    paused = cli(redis_url, "pause", "bill", "--app", "shop")
    assert paused.returncode == 0 and paused.stdout == "paused bill of shop\n", paused.stderr
    assert redis_sync.smembers(keys.paused("shop")) == {b"bill"}
    ahead = cli(redis_url, "pause", "mail", "--app", "later")
    assert "no instance of 'later' runs it now, so it starts paused" in ahead.stdout
    one_error_line(cli(redis_url, "pause", "bil", "--app", "shop"), 1, "its agents: bill")
    listed, as_json = cli_many(redis_url, [(["agents"], None), (["agents", "--json"], None)])
    assert "bill" in listed.stdout and "paused" in listed.stdout
    rows = json_lines(as_json.stdout)
    assert [(r["app"], r["agent"], r["paused"], r["instances"]) for r in rows] == [
        ("later", "mail", True, 0),
        ("shop", "bill", True, 1),
    ]
    streams = cli(redis_url, "streams", "--json")
    assert streams.returncode == 0
    resumed = cli(redis_url, "resume", "bill", "--app", "shop")
    assert resumed.stdout == "resumed bill of shop\n" and not redis_sync.smembers(
        keys.paused("shop")
    )
    trail = audit(redis_sync)
    assert [(a["action"], a["target"], a["interface"]) for a in trail] == [
        ("resume", "shop/bill", "cli"),
        ("pause", "later/mail", "cli"),
        ("pause", "shop/bill", "cli"),
    ]
    shown = cli(redis_url, "audit", "--json")
    assert [a["action"] for a in json_lines(shown.stdout)] == ["resume", "pause", "pause"]


def test_dead_replay_reports_exactly_what_went_back_and_what_stayed(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    """Issue 29: one refused append must neither lose its entry nor hide which went back."""
    redis_sync.set("strkey", "x")
    one = dead(redis_sync, ["n", "1"], stream="rp:dead", source_stream="strkey")
    two = dead(redis_sync, ["n", "2"], stream="rp:dead", source_stream="")
    three = dead(redis_sync, ["n", "3"], stream="rp:dead", source_stream=b"x\xff")
    r = cli(redis_url, "dead", "replay", "rp", "--all")
    assert r.stdout == f"replayed 2 dead letters from rp:dead: {two} -> rp, {three} -> x\\xff\n"
    one_error_line(r, 1, f"1 dead letter stayed in rp:dead: {one} (WRONGTYPE")
    assert [f[b"n"] for _, f in redis_sync.xrange("rp:dead")] == [b"1"]
    assert redis_sync.xrange(b"x\xff")[0][1] == {b"n": b"3"}
    one_error_line(
        cli(redis_url, "dead", "replay", "rp", "--id", "abc"), 2, "not a stream entry id"
    )


def test_dead_list_show_dry_run_edit_and_purge(redis_url: str, redis_sync: syncredis.Redis) -> None:
    a = dead(redis_sync, ["order", "1", "data", msgspec.msgpack.encode({"p": 1})], error="timeout")
    b = dead(redis_sync, ["order", "2"], error_type="KeyError", error="'sku'")
    listed, shown, dry = cli_many(
        redis_url,
        [
            (["dead", "pay", "--error", "sku", "--json"], None),
            (["dead", "show", "pay", a], None),
            (["dead", "replay", "pay", "--where", "order=1", "--dry-run"], None),
        ],
    )
    assert [d["id"] for d in json_lines(listed.stdout)] == [b]
    assert "ValueError: timeout" in shown.stdout and 'data = {"p": 1}  (msgpack)' in shown.stdout
    assert "raw (as stored, escaped):\n  order 1\n  data \\x81" in shown.stdout
    head, line = dry.stdout.splitlines()
    assert head == "would replay 1 dead letter from pay:dead" and line.startswith(
        f"{a} -> pay order=1"
    )
    assert redis_sync.xlen("pay:dead") == 2 and redis_sync.exists("pay") == 0
    edit = cli(redis_url, "dead", "edit", "pay", b, "--set", "order=2b", "--set", "sku=7")
    assert edit.returncode == 0 and edit.stdout.startswith(
        f"replayed 1 dead letter from pay:dead: {b} -> pay"
    )
    assert redis_sync.xrange("pay")[0][1] == {b"order": b"2b", b"sku": b"7"}
    one_error_line(cli(redis_url, "dead", "purge", "pay", "--all"), 2, "add --yes")
    purged = cli(redis_url, "dead", "purge", "pay", "--all", "--yes")
    assert (
        purged.stdout == "purged 1 dead letter from pay:dead\n" and redis_sync.xlen("pay:dead") == 0
    )
    assert [x["action"] for x in audit(redis_sync)] == ["dead.purge", "dead.edit_retry"]


def test_pending_rewind_scheduled_and_inspect(redis_url: str, redis_sync: syncredis.Redis) -> None:
    redis_sync.xgroup_create("pay", "g", "$", mkstream=True)
    held = [redis_sync.xadd("pay", {"order": str(n)}).decode() for n in range(3)]
    redis_sync.xreadgroup("g", "gone-1-x-0", {"pay": ">"})
    key = keys.scheduled("default")
    redis_sync.zadd(key, {encode_entry("a" * 24, "later", ["n", "1"]): 32503680000000})
    redis_sync.zadd(key, {b"hand-written garbage": 1, b"f" * 24 + b"|1:s1:0": 9e30})
    listed = cli(redis_url, "pending", "pay", "--json")
    (group,) = json_lines(listed.stdout)
    assert [(e["id"], e["alive"]) for e in group["entries"]] == [(h, False) for h in held]
    one_error_line(
        cli(redis_url, "pending", "hand-back", "pay", "--group", "g", "--id", held[0]), 2, "--yes"
    )
    back = cli(redis_url, "pending", "hand-back", "pay", "--group", "g", "--id", held[0], "--yes")
    assert back.stdout == f"handed back: {held[0]} (was held by gone-1-x-0)\n", back.stderr
    assert (
        redis_sync.xpending_range("pay", "g", held[0], held[0], 1)[0]["consumer"]
        == RELEASED_CONSUMER.encode()
    )
    moved = cli(
        redis_url, "pending", "dead-letter", "pay", "--group", "g", "--id", held[1], "--yes"
    )
    assert moved.returncode == 0 and redis_sync.xlen("pay:dead") == 1
    assert redis_sync.hget(keys.fence("pay", "g"), "gone-1-x-0") == b"2"

    plan = cli(redis_url, "rewind", "pay", "--group", "g", "--to", "0")
    assert (
        plan.stdout
        == f"would move pay / g from {held[2]} to 0-0: 3 entries will be handled again\n"
    )
    one_error_line(plan, 2, "add --yes")
    assert redis_sync.xinfo_groups("pay")[0]["last-delivered-id"] == held[2].encode()
    done = cli(redis_url, "rewind", "pay", "--group", "g", "--to", "0", "--yes")
    assert (
        done.stdout.startswith("moved pay / g")
        and redis_sync.xinfo_groups("pay")[0]["last-delivered-id"] == b"0-0"
    )

    sched = cli(redis_url, "scheduled")
    assert sched.returncode == 0 and "Traceback" not in sched.stderr, sched.stderr
    lines = sched.stdout.splitlines()
    assert sum("BAD" in line for line in lines) == 2 and any(
        line.startswith("a" * 24) for line in lines
    )
    promoted = cli(redis_url, "scheduled", "promote", "a" * 24)
    assert promoted.stdout.startswith(f"promoted {'a' * 24} to later as ")
    assert [f for _, f in redis_sync.xrange("later")] == [{b"n": b"1"}]
    one_error_line(cli(redis_url, "scheduled", "cancel", "a" * 24, "--yes"), 1, "not scheduled")

    redis_sync.xadd("ticks", {"doc": json.dumps({"a": [1]}), "sym": "X"})
    seen = cli(redis_url, "inspect", "pay", "--where", "order=2", "--raw")
    assert seen.stdout.splitlines()[0] == f"{held[2]}  order=2" and "    raw order 2" in seen.stdout
    assert "1 shown, 3 read" in seen.stderr
    decoded = cli(redis_url, "inspect", "ticks", "--json")
    assert json_lines(decoded.stdout)[0]["decoded"]["doc"]["json"] == {"a": [1]}
    actions = [a["action"] for a in audit(redis_sync)]
    assert actions == ["scheduled.promote", "rewind", "pending.dead_letter", "pending.hand_back"]


# --- what a terminal shows ---------------------------------------------------------------------

EVIL = "\x1b[31mred\x1b[0m"
FORGED = "ok\ninstance forged: app=evil"


def _seed_evil(r: syncredis.Redis) -> None:
    r.xadd(EVIL, {"a": "1"})
    r.xgroup_create(EVIL, "g\x1b]0;title\x07", "0")
    r.xadd(FORGED, {"a": "1"})
    beat(r, "web-1-42-ee", "shop\x1b[2J", [{"name": "bill\rX", "stream": EVIL, "group": "g"}])
    r.xadd("pay:dead", {"n": "1", "error": "bad\x1b[31m\nerror: forged"})
    r.zadd(keys.scheduled("default"), {encode_entry("a" * 24, "s\x1b[1m", ["k", "v\x9b2J"]): 5})


def test_no_control_character_from_redis_reaches_the_terminal(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    _seed_evil(redis_sync)
    piped = cli_many(
        redis_url,
        [(args, None) for args in (["streams"], ["dead", "pay"], ["health"], ["scheduled"],
                                   ["top", "--once"], ["agents"], ["tail", EVIL], ["inspect", FORGED])],
    )  # fmt: skip
    for r in piped:
        assert r.returncode == 0, (r.args, r.stderr)
        for text in (r.stdout, r.stderr):
            assert (
                "\x1b" not in text
                and "\x07" not in text
                and "\r" not in text
                and "\x9b" not in text
            ), (r.args, text)
    streams = piped[0].stdout
    assert "\\x1b[31mred\\x1b[0m length=1" in streams
    assert "ok\\ninstance forged: app=evil length=1" in streams, "a newline cannot forge a line"
    assert not any(
        line.startswith("instance forged") for r in piped for line in r.stdout.splitlines()
    )
    # On a terminal (Rich tables) too: the only escape codes are Rich's own styling.
    for args in (["streams"], ["top", "--once"], ["dead", "pay"]):
        code, text = on_terminal(*args, "--redis-url", redis_url)
        assert code == 0, text
        assert "\x1b[31mred" not in text and "\x1b[2J" not in text and "\x1b]0;" not in text, args
        assert "\\x1b[31mred" in text or "\\x1b" in text, args


def test_top_and_tables_fit_80_columns(redis_url: str, redis_sync: syncredis.Redis) -> None:
    agents = [{"name": f"agent_{n}", "stream": "orders.incoming", "group": "billing-team",
               "stats": {"processed": 123456, "failed": 7, "dead": 1, "latency_s_total": 1.5,
                         "latency_buckets": [1, 2, 3]}} for n in range(3)]  # fmt: skip
    beat(redis_sync, "web-frontend-1-123456-abcdef", "checkout", agents)
    for n in range(3):
        redis_sync.xadd("orders.incoming", {"n": str(n)})
    redis_sync.xgroup_create("orders.incoming", "billing-team", "0")
    redis_sync.sadd(keys.paused("checkout"), "agent_1")
    env = {**env_for(redis_url), "COLUMNS": "80"}
    top = subprocess.run(
        [sys.executable, "-m", "streammachine", "top", "--once"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert top.returncode == 0, top.stderr
    assert max(len(line) for line in top.stdout.splitlines()) <= 80, top.stdout
    for header in ("Agent", "Instance", "Stream", "Group", "Pend", "Lag", "Paused", "State"):
        assert re.search(rf"\b{header}\b", top.stdout), header  # whole, never "Agen/t"
    assert "paused" in top.stdout and "checkout/agent_" in top.stdout  # may fold
    wide = subprocess.run(
        [sys.executable, "-m", "streammachine", "top", "--once", "--wide"],
        capture_output=True, text=True, env={**env, "COLUMNS": "220"}, timeout=60,
    )  # fmt: skip
    assert "Latency" in wide.stdout and "Retried" in wide.stdout and "Consumers" in wide.stdout
    # The tables of `streams` and `agents` on an 80-column terminal: they fit, headers whole.
    for args, headers in ((["streams"], ("Stream", "Group", "Pend", "Paused")),
                          (["agents"], ("App", "Agent", "State"))):  # fmt: skip
        code, text = terminal(args, env)
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
        assert code == 0 and ("billing-team" in plain or "agent_1" in plain), plain
        assert max(len(line) for line in plain.splitlines()) <= 80, plain
        for header in headers:
            assert re.search(rf"\b{header}\b", plain), (args, header)


def terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """The CLI on a pseudo-terminal with `env`: its exit code and what it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammachine", *args], stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        code = proc.wait(60)
    finally:
        os.close(master)
    return code, seen.decode("utf-8", "replace")
