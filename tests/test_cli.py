"""The real CLI in subprocesses against a real Redis: send, tail, streams, storage, health, dead.

Independent invocations run in parallel (`cli_many`), as each pays Python's start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis as syncredis

from streammachine.testing import free_port
from tests.util import Lines, wait_sync

Call = tuple[list[str], bytes | None]


def env_for(redis_url: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("STREAMMACHINE_STORAGE_NAMESPACE", None)
    return env


def cli_many(
    redis_url: str, calls: list[Call], cwd: Path | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run `streammachine ARGS` for every call at once; results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "streammachine", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(redis_url),
            cwd=cwd,
        )
        for args, _ in calls
    ]
    results = []
    for proc, (args, data) in zip(procs, calls, strict=True):
        out, err = proc.communicate(data, timeout=60)
        results.append(
            subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())
        )
    return results


def cli(redis_url: str, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return cli_many(redis_url, [(list(args), data)])[0]


def one_error_line(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """The command failed with `code` and said exactly one line containing `text`."""
    assert r.returncode == code, (r.args, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (r.args, r.stderr)
    assert text in lines[0], (r.args, lines[0])


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


def start(redis_url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(redis_url),
    )


def blocked_readers(r: syncredis.Redis, cmd: str) -> int:
    return sum(1 for c in r.client_list() if c.get("cmd") == cmd)


# --- send ------------------------------------------------------------------------------------


def test_send_pairs_json_file_and_stdin(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    (tmp_path / "orders.jsonl").write_text(
        '{"id": 1, "total": 9.5}\n\n{"id": 2, "items": [1, 2]}\n{"id": 3, "name": "café"}\n'
    )
    pairs, obj, file, stdin = cli_many(
        redis_url,
        [
            (["send", "a", "id=7", "note=x=y"], None),
            (["send", "b", "--json", '{"id": 7, "ok": true}', "--count", "3"], None),
            (["send", "c", "--file", "orders.jsonl"], None),
            (["send", "d", "--file", "-"], b'{"n": 1}\n{"n": 2}\n'),
        ],
        cwd=tmp_path,
    )
    for r in (pairs, obj, file, stdin):
        assert r.returncode == 0 and r.stderr == "", (r.args, r.stderr)

    def stored(stream: str) -> tuple[list[str], list[dict[str, str]]]:
        entries = redis_sync.xrange(stream)
        ids = [i.decode() for i, _ in entries]
        return ids, [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]

    ids, fields = stored("a")
    assert pairs.stdout.split() == ids and fields == [{"id": "7", "note": "x=y"}]
    ids, fields = stored("b")
    assert obj.stdout.split() == ids and fields == [{"id": "7", "ok": "true"}] * 3
    ids, fields = stored("c")
    assert file.stdout.split() == ids
    assert fields == [
        {"id": "1", "total": "9.5"},
        {"id": "2", "items": "[1,2]"},
        {"id": "3", "name": "café"},
    ]
    ids, fields = stored("d")
    assert stdin.stdout.split() == ids and fields == [{"n": "1"}, {"n": "2"}]


def test_send_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    (tmp_path / "orders.jsonl").write_text('{"id": 1}\n{"id": 2}\n{"id": \n{"id": 4}\n')
    (tmp_path / "list.jsonl").write_text('{"id": 1}\n[1, 2]\n')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": 1}\n{"name": "caf\xe9"}\n')
    results = cli_many(
        redis_url,
        [
            (["send", "s", "--file", "orders.jsonl"], None),
            (["send", "s", "--file", "list.jsonl"], None),
            (["send", "s", "--file", "latin1.jsonl"], None),
            (["send", "s", "--file", "missing.jsonl"], None),
            (["send", "s", "--json", "{nope"], None),
            (["send", "s", "--json", '"text"'], None),
            (["send", "s", "novalue"], None),
            (["send", "s"], None),
            (["send", "s", "a=1", "--file", "orders.jsonl"], None),
        ],
        cwd=tmp_path,
    )
    expected = [
        "line 3 of orders.jsonl is not valid JSON: Expecting value at column 8",
        "line 2 of list.jsonl is an array, not a JSON object",
        "line 2 of latin1.jsonl is not UTF-8 text",
        "cannot read missing.jsonl",
        "--json is not valid JSON",
        "--json is a string, not a JSON object",
        "'novalue' is not FIELD=VALUE",
        "nothing to send",
        "not both",
    ]
    for r, text in zip(results, expected, strict=True):
        one_error_line(r, 2, text)
        assert r.stdout == ""
    assert not redis_sync.exists("s"), "nothing is written when any line is bad"


# --- tail ------------------------------------------------------------------------------------


def test_tail_json_plain_and_from(redis_url: str, redis_sync: syncredis.Redis) -> None:
    ids = [redis_sync.xadd("s", {"n": str(i)}).decode() for i in range(12)]
    ids.append(redis_sync.xadd("s", {b"raw": b"\xff"}).decode())
    last, first, after = cli_many(
        redis_url,
        [
            (["tail", "s", "--json"], None),
            (["tail", "s", "--from", "0", "--count", "2"], None),
            (["tail", "s", "--from", ids[10], "--json"], None),
        ],
    )
    rows = json_lines(last.stdout)
    assert [r["id"] for r in rows] == ids[-10:]
    assert rows[0] == {"stream": "s", "id": ids[3], "fields": {"n": "3"}}
    assert rows[-1]["fields"] == {"raw": "\ufffd"} and "b'" not in last.stdout
    assert first.stdout.splitlines() == [f"{ids[0]} n=0", f"{ids[1]} n=1"]
    assert [r["id"] for r in json_lines(after.stdout)] == ids[11:]


def test_tail_follow_waits_for_the_stream_and_stops_on_sigint(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xadd("old", {"n": "before"})
    procs = [
        start(redis_url, "tail", "live", "--follow", "--json"),  # does not exist yet
        start(redis_url, "tail", "old", "-f", "--from", "$", "--json"),  # new entries only
    ]
    try:
        outs = [Lines(p.stdout) for p in procs]
        wait_sync(lambda: blocked_readers(redis_sync, "xread") == 2, what="both tails blocking")
        for stream in ("live", "old"):
            redis_sync.xadd(stream, {"n": "1"})
        for out in outs:
            out.wait_for('"n": "1"')
        second = redis_sync.xadd("live", {"n": "2"}).decode()
        outs[0].wait_for(second)
        for p in procs:
            p.send_signal(signal.SIGINT)
        errs = [p.communicate(timeout=10)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all(b"Traceback" not in err for err in errs)
    assert [r["fields"]["n"] for r in json_lines(outs[0].text)] == ["1", "2"]
    assert [r["fields"]["n"] for r in json_lines(outs[1].text)] == ["1"], "not the old entry"


def test_tail_group_reads_as_a_consumer_and_acks_only_with_ack(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    ids = [redis_sync.xadd("s", {"n": str(i)}).decode() for i in range(3)]
    redis_sync.xgroup_create("s", "g", id="0")
    missing = cli(redis_url, "tail", "s", "--group", "nope")
    one_error_line(missing, 1, "stream 's' has no consumer group 'nope' (it has: g)")
    assert [g["name"] for g in redis_sync.xinfo_groups("s")] == [b"g"], "tail creates nothing"

    r = cli(redis_url, "tail", "s", "--group", "g", "--consumer", "c", "--count", "2", "--json")
    assert [e["id"] for e in json_lines(r.stdout)] == ids[:2]
    assert redis_sync.xpending("s", "g")["pending"] == 2, "read but not acked"
    r = cli(redis_url, "tail", "s", "--group", "g", "--consumer", "c", "--from", "0", "--ack")
    assert [line.split()[0] for line in r.stdout.splitlines()] == ids[:2], "its pending entries"
    assert redis_sync.xpending("s", "g")["pending"] == 0

    proc = start(redis_url, "tail", "s", "-f", "--group", "g", "--consumer", "c", "--ack")
    try:
        out = Lines(proc.stdout)
        out.wait_for(ids[2])
        new = redis_sync.xadd("s", {"n": "new"}).decode()
        out.wait_for(new)
        wait_sync(lambda: redis_sync.xpending("s", "g")["pending"] == 0, what="acked")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and b"Traceback" not in err, err


# --- streams ---------------------------------------------------------------------------------


def test_streams_json_lists_groups_pending_and_lag(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    ids = [redis_sync.xadd("orders", {"n": str(i)}).decode() for i in range(5)]
    redis_sync.xadd("other", {"n": "1"})
    redis_sync.set("orders:config", "a string, not listed")
    redis_sync.xgroup_create("orders", "billing", id="0")
    redis_sync.xreadgroup("billing", "c1", {"orders": ">"}, count=2)
    every, some = cli_many(redis_url, [(["streams", "--json"], None), (["streams", "o*"], None)])
    rows = json_lines(every.stdout)
    assert [r["stream"] for r in rows] == ["orders", "other"]
    orders = rows[0]
    assert (orders["length"], orders["first_id"], orders["last_id"]) == (5, ids[0], ids[-1])
    (group,) = orders["groups"]
    assert (group["name"], group["consumers"], group["pending"], group["lag"]) == (
        "billing",
        1,
        2,
        3,
    )
    assert group["oldest_pending_id"] == ids[0]
    assert isinstance(group["oldest_pending_idle_ms"], int)
    assert some.stdout.splitlines()[0].startswith("orders length=5")
    assert "group billing consumers=1 pending=2 lag=3" in some.stdout


# --- storage ---------------------------------------------------------------------------------


def test_storage_set_get_keys_delete_clear(redis_url: str) -> None:
    for r in cli_many(
        redis_url,
        [
            (["storage", "set", "config", '{"rate": 5, "on": true}'], None),
            (["storage", "set", "name", "hello world"], None),
            (["storage", "set", "count", "42"], None),
            (["storage", "set", "other", "1", "--namespace", "elsewhere"], None),
        ],
    ):
        assert r.returncode == 0, r.stderr
    config, config_json, name, name_json, count, keys, keys_json, missing = cli_many(
        redis_url,
        [
            (["storage", "get", "config"], None),
            (["storage", "get", "config", "--json"], None),
            (["storage", "get", "name"], None),
            (["storage", "get", "name", "--json"], None),
            (["storage", "get", "count", "--json"], None),
            (["storage", "keys"], None),
            (["storage", "keys", "c*", "--json"], None),
            (["storage", "get", "nope"], None),
        ],
    )
    assert json.loads(config.stdout) == json.loads(config_json.stdout) == {"rate": 5, "on": True}
    assert name.stdout == "hello world\n" and json.loads(name_json.stdout) == "hello world"
    assert json.loads(count.stdout) == 42, "a value that parses as JSON is stored as that"
    assert keys.stdout.split() == ["config", "count", "name"]
    assert json_lines(keys_json.stdout) == [
        {"namespace": "default", "key": "config"},
        {"namespace": "default", "key": "count"},
    ]
    one_error_line(missing, 1, "key 'nope' not found in storage namespace 'default'")

    deleted, again, refused = cli_many(
        redis_url,
        [
            (["storage", "delete", "name"], None),
            (["storage", "delete", "nope"], None),
            (["storage", "clear"], None),
        ],
    )
    assert deleted.returncode == 0 and deleted.stdout == ""
    one_error_line(again, 1, "key 'nope' not found")
    one_error_line(refused, 2, "--yes")
    r = syncredis.Redis.from_url(redis_url)
    try:
        assert sorted(r.hkeys("streammachine:storage:{default}")) == [b"config", b"count"]
        assert cli(redis_url, "storage", "clear", "--yes").returncode == 0
        assert not r.exists("streammachine:storage:{default}")
        assert r.hkeys("streammachine:storage:{elsewhere}") == [b"other"], "other namespaces stay"
    finally:
        r.close()


# --- health ----------------------------------------------------------------------------------


def test_health_healthy_and_unreachable(redis_url: str, redis_sync: syncredis.Redis) -> None:
    record = {"id": "web-1", "app": "orders", "host": "web", "pid": 42, "ttl_s": 15}
    redis_sync.set("streammachine:instances:web-1", json.dumps(record), px=15_000)
    # Not a heartbeat the dashboard accepts, so health skips it too (and says so).
    redis_sync.hset("streammachine:instances:web-2", mapping={"app": "ghost", "pid": "43"})
    down = f"redis://127.0.0.1:{free_port()}/0"
    text, as_json, down_text, down_json = cli_many(
        redis_url,
        [
            (["health"], None),
            (["health", "--json"], None),
            (["health", "--redis-url", down], None),
            (["health", "--redis-url", down, "--json"], None),
        ],
    )
    assert text.returncode == 0 and text.stdout.startswith("ok: Redis "), text.stderr
    assert "app=orders" in text.stdout and "pid=42" in text.stdout
    assert "ghost" not in text.stdout and "skipped 1 instance record" in text.stdout
    report = json.loads(as_json.stdout)
    assert report["healthy"] is True and report["redis_version"]
    assert [i["app"] for i in report["instances"]] == ["orders"]
    assert report["skipped_records"] == 1
    one_error_line(down_text, 1, "cannot reach Redis at redis://127.0.0.1:")
    assert down_json.returncode == 1 and "Traceback" not in down_json.stderr
    assert json.loads(down_json.stdout)["healthy"] is False


# --- dead ------------------------------------------------------------------------------------


def dead_letter(r: syncredis.Redis, n: int) -> str:
    fields = {
        "order": str(n),
        "error": f"order {n} is bad",
        "error_type": "ValueError",
        "traceback": "Traceback (most recent call last): ...",
        "deliveries": "5",
        "source_stream": "s",
        "source_id": f"{n}-0",
        "group": "g",
        "failed_at": "1700000000.25",
    }
    return r.xadd("s:dead", fields).decode()  # type: ignore[arg-type]


def test_dead_list_and_replay(redis_url: str, redis_sync: syncredis.Redis) -> None:
    ids = [dead_letter(redis_sync, n) for n in range(3)]
    as_json, plain, via_dead_name = cli_many(
        redis_url,
        [
            (["dead", "s", "--json"], None),
            (["dead", "s", "--count", "1"], None),
            (["dead", "list", "s:dead", "--json"], None),
        ],
    )
    rows = json_lines(as_json.stdout)
    assert rows == json_lines(via_dead_name.stdout)
    assert [r["id"] for r in rows] == ids
    assert rows[0] | {"traceback": None} == {
        "stream": "s:dead",
        "id": ids[0],
        "source_stream": "s",
        "source_id": "0-0",
        "group": "g",
        "error": "order 0 is bad",
        "error_type": "ValueError",
        "deliveries": 5,
        "failed_at": 1700000000.25,
        "traceback": None,
        "fields": {"order": "0"},
    }
    assert plain.stdout.count("\n") == 1 and "ValueError: order 0 is bad" in plain.stdout
    assert "3 dead letters, showing 1" in plain.stderr

    one = cli(redis_url, "dead", "replay", "s", "--id", ids[1])
    assert one.returncode == 0 and "replayed 1" in one.stdout
    assert [f for _, f in redis_sync.xrange("s")] == [{b"order": b"1"}]
    rest = cli(redis_url, "dead", "replay", "s", "--all")
    assert rest.returncode == 0 and "replayed 2" in rest.stdout
    assert [f[b"order"] for _, f in redis_sync.xrange("s")] == [b"1", b"0", b"2"]
    assert redis_sync.xlen("s:dead") == 0


# --- mistakes --------------------------------------------------------------------------------


def test_user_mistakes_are_one_line_and_a_nonzero_exit(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.set("text", "a string")
    redis_sync.xadd("s", {"a": "1"})
    down = f"redis://127.0.0.1:{free_port()}/0"
    cases: list[tuple[list[str], int, str]] = [
        (["streams", "--redis-url", "http://localhost"], 1, "bad Redis URL"),
        (["tail", "s", "--redis-url", down], 1, "cannot reach Redis"),
        (["send", "s", "a=1", "--redis-url", down], 1, "cannot reach Redis"),
        (["tail", "nope"], 1, "stream 'nope' does not exist"),
        (["tail", "text"], 1, "'text' holds a string, not a stream"),
        (["send", "text", "a=1"], 1, "'text' holds a string, not a stream"),
        (["streams", "--json", "--log-format", "xml"], 1, "--log-format"),
        (["tail", "s", "--from", "yesterday"], 2, "--from 'yesterday' is not a stream id"),
        (["tail", "s", "--ack"], 2, "need --group"),
        (["dead", "nope"], 1, "neither 'nope' nor 'nope:dead' exists"),
        (["dead", "replay", "s"], 2, "--id ID (repeatable) or --all"),
        (["storage", "get", "k", "--namespace", "a:b"], 1, "namespace 'a:b' is invalid"),
    ]
    results = cli_many(redis_url, [(args, None) for args, _, _ in cases])
    for r, (_, code, text) in zip(results, cases, strict=True):
        one_error_line(r, code, text)
    assert redis_sync.type("text") == b"string" and redis_sync.xlen("s") == 1


def test_usage_errors_are_one_line_with_a_hint() -> None:
    for args, expected in [
        (["send"], "Missing argument 'stream'"),
        (["tail", "s", "--count", "0"], "--count"),
        (["nosuch"], "No such command 'nosuch'"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "streammachine", *args], capture_output=True, timeout=30
        )
        err = proc.stderr.decode()
        assert proc.returncode == 2, (args, err)
        assert err.count("\n") == 1 and expected in err and "--help" in err, err
        assert "Traceback" not in err
