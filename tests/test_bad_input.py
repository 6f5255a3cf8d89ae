"""Every CLI command, run as the real binary against a real Redis, with undecodable (non-UTF-8),
empty, huge and wrong-typed arguments: each must say one line on stderr (no traceback), exit
non-zero, and change nothing in Redis.

The cases run a few at a time (each pays Python's start-up); Redis is snapshotted (DUMP of every
key) before and after. A command added to the CLI without rows here fails
`test_the_sweep_covers_every_command`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis as syncredis
import typer.main

from streammachine.cli import app as cli_app
from streammachine.testing import free_port

# Python hands a command line's non-UTF-8 bytes over as lone surrogates; subprocess turns them
# back into the same bytes (os.fsencode), so the child sees a real `or\xffders` argument.
BAD = os.fsdecode(b"or\xffders")
HUGE = "x" * 100_000  # below Linux's 128 KiB limit for one argument
HUGE_NUMBER = "9" * 40
DEEP = "[" * 5000 + "]" * 5000
NESTED_100 = '{"a": ' + "[" * 100 + "]" * 100 + "}"
DOWN = f"redis://127.0.0.1:{free_port()}/0"

# (command path, arguments after it); every row must fail, say one line and change nothing.
CASES: list[tuple[str, list[str]]] = [
    # send
    ("send", [BAD, "a=1"]),
    ("send", ["orders", f"{BAD}=1"]),
    ("send", ["orders", f"a={BAD}"]),
    ("send", ["orders", "--json", BAD]),
    ("send", ["", "a=1"]),
    ("send", [HUGE, "a=1"]),
    ("send", ["orders", "--count", HUGE_NUMBER, "a=1"]),
    ("send", ["orders", "--count", "abc", "a=1"]),
    ("send", ["orders", "--count", "0", "a=1"]),
    ("send", ["orders", "--json", "[1]"]),
    ("send", ["orders", "--json", "{}"]),
    ("send", ["orders", "--json", ""]),
    ("send", ["orders", "--json", DEEP]),
    ("send", ["orders", "--json", NESTED_100]),
    ("send", ["orders", "--file", ""]),
    ("send", ["orders", "--file", BAD]),
    ("send", ["orders", "=1"]),
    ("send", ["orders"]),
    ("send", ["orders", "a=1", "--redis-url", ""]),
    ("send", ["orders", "a=1", "--redis-url", "redis://127.0.0.1/abc"]),
    ("send", ["orders", "a=1", "--redis-url", DOWN]),
    # tail
    ("tail", [BAD]),
    ("tail", [""]),
    ("tail", [HUGE]),
    ("tail", ["nosuch"]),
    ("tail", ["orders", "--count", HUGE_NUMBER]),
    ("tail", ["orders", "--count", "x"]),
    ("tail", ["orders", "--from", BAD]),
    ("tail", ["orders", "--from", "abc"]),
    ("tail", ["orders", "--from", HUGE_NUMBER + "-0"]),
    ("tail", ["orders", "--group", BAD]),
    ("tail", ["orders", "--group", ""]),
    ("tail", ["orders", "--group", "nogroup"]),
    ("tail", ["orders", "--group", "billing", "--consumer", ""]),
    ("tail", ["orders", "--group", "billing", "--consumer", BAD]),
    ("tail", ["orders", "--ack"]),
    ("tail", ["storage-hash"]),
    # streams
    ("streams", [BAD]),
    ("streams", [""]),
    ("streams", ["--limit", HUGE_NUMBER]),
    ("streams", ["--limit", "0"]),
    ("streams", ["--limit", "x"]),
    ("streams", ["--redis-url", "redis://127.0.0.1:99999/0"]),
    # storage
    ("storage get", [BAD]),
    ("storage get", [""]),
    ("storage get", [HUGE]),
    ("storage get", ["nosuch"]),
    ("storage get", ["k", "--namespace", ""]),
    ("storage get", ["k", "--namespace", BAD]),
    ("storage get", ["k", "--namespace", "a:b"]),
    ("storage set", [BAD, "1"]),
    ("storage set", ["k", BAD]),
    ("storage set", ["", "1"]),
    ("storage set", [HUGE, "1"]),
    ("storage set", ["k", "1", "--ttl", "1e20"]),
    ("storage set", ["k", "1", "--ttl", "nan"]),
    ("storage set", ["k", "1", "--ttl", "inf"]),
    ("storage set", ["k", "1", "--ttl", "x"]),
    ("storage set", ["k", "1", "--ttl", "0"]),
    ("storage set", ["k", DEEP]),
    ("storage set", ["k", "1", "--namespace", ""]),
    ("storage set", ["k"]),
    ("storage delete", [BAD]),
    ("storage delete", [""]),
    ("storage delete", ["nosuch"]),
    ("storage delete", ["k", "--namespace", ""]),
    ("storage keys", [BAD]),
    ("storage keys", [""]),
    ("storage keys", ["--namespace", ""]),
    ("storage keys", ["--namespace", "*"]),
    ("storage clear", []),
    ("storage clear", ["--yes", "--namespace", ""]),
    ("storage clear", ["--yes", "--namespace", BAD]),
    ("storage clear", ["--yes", "--redis-url", ""]),
    # dead
    ("dead", [BAD]),
    ("dead", [""]),
    ("dead", ["nosuch"]),
    ("dead", ["orders", "--count", HUGE_NUMBER]),
    ("dead", ["orders", "--count", "x"]),
    ("dead replay", ["orders"]),
    ("dead replay", ["orders", "--id", BAD]),
    ("dead replay", ["orders", "--id", "abc"]),
    ("dead replay", ["orders", "--id", "1-1"]),
    ("dead replay", ["orders", "--id", ""]),
    ("dead replay", [BAD, "--all"]),
    ("dead replay", ["", "--all"]),
    ("dead replay", ["orders", "--all", "--redis-url", ""]),
    # health
    ("table list", ["extra"]),
    ("table list", ["--redis-url", "redis://127.0.0.1/abc"]),
    ("table get", [BAD, "k"]),
    ("table get", ["", "k"]),
    ("table get", ["nosuch", BAD]),
    ("table get", ["nosuch", "k"]),
    ("table show", [BAD]),
    ("table show", [""]),
    ("table show", ["nosuch", "--limit", "0"]),
    ("table show", ["nosuch", "--limit", "x"]),
    ("windows", ["extra"]),
    ("windows", ["--redis-url", BAD]),
    ("health", ["--redis-url", ""]),
    ("health", ["--redis-url", "redis://127.0.0.1/abc"]),
    ("health", ["--redis-url", "redis://127.0.0.1/0?db=x"]),
    ("health", ["--redis-url", BAD]),
    ("health", ["--redis-url", "http://127.0.0.1"]),
    ("health", ["--redis-url", DOWN]),
    ("health", ["--log-level", "loud"]),
    ("health", ["--log-format", "xml"]),
    ("health", ["extra"]),
    # ohlc
    ("ohlc", [BAD]),
    ("ohlc", [""]),
    ("ohlc", [HUGE]),
    ("ohlc", ["nosuch"]),
    ("ohlc", ["orders", "--interval", "x"]),
    ("ohlc", ["orders", "--interval", BAD]),
    ("ohlc", ["orders", "--interval", ""]),
    ("ohlc", ["orders", "--emit", ""]),
    ("ohlc", ["orders", "--from", "abc"]),
    # top, dashboard, mcp, run
    ("top", ["--once", "--redis-url", ""]),
    ("top", ["--once", "--redis-url", "redis://127.0.0.1/abc"]),
    ("top", ["--once", "--interval", "x"]),
    ("top", ["--once", "--interval", "nan"]),
    ("top", ["--once", "--interval", HUGE_NUMBER]),
    ("top", ["--json"]),
    ("top", ["--once", "--log-level", "loud"]),
    ("top", ["--once", BAD]),
    ("dashboard", ["--port", "99999"]),
    ("dashboard", ["--port", "x"]),
    ("dashboard", ["--redis-url", ""]),
    ("dashboard", ["--log-format", BAD]),
    ("mcp", ["--transport", "x"]),
    ("mcp", ["--port", "0"]),
    ("mcp", ["--redis-url", ""]),
    ("mcp", ["--redis-url", "redis://127.0.0.1/abc"]),
    ("scheduled", [""]),
    ("scheduled", [HUGE]),
    ("scheduled", ["--count", "0"]),
    ("scheduled", ["--count", HUGE_NUMBER]),
    ("scheduled", ["--namespace", ""]),
    ("scheduled", ["--namespace", "a:b"]),
    ("scheduled", ["--redis-url", ""]),
    ("scheduled", ["--redis-url", DOWN]),
    ("send", ["orders", "a=1", "--delay", "x"]),
    ("send", ["orders", "a=1", "--delay", "-5s"]),
    ("send", ["orders", "a=1", "--at", "tomorrow"]),
    ("send", ["orders", "a=1", "--delay", "1s", "--at", "2030-01-01T00:00:00"]),
    ("asyncapi", [BAD]),
    ("asyncapi", [""]),
    ("asyncapi", ["nosuch:app"]),
    ("asyncapi", ["examples/basic.py:app", "--format", "xml"]),
    ("asyncapi", ["examples/basic.py:app", "--redis-url", "http://x"]),
    ("asyncapi", ["examples/basic.py:app", "--output", "/nonexistent/dir/x.json"]),
    ("run", [BAD]),
    ("run", [""]),
    ("run", ["nosuch:app"]),
    ("run", ["nosuch:"]),
    ("run", ["--workers", "0", "x:app"]),
    ("run", ["--workers", "x", "x:app"]),
    ("run", ["x:app", "--redis-url", ""]),
    ("run", ["x:app", "--redis-url", "redis://127.0.0.1/abc"]),
    # operating (issue 27): each refused before it acts, and audited only when it acted
    ("inspect", [BAD]),
    ("inspect", [""]),
    ("inspect", ["nosuch"]),
    ("inspect", ["storage-hash"]),
    ("inspect", ["orders", "--where", "oops"]),
    ("inspect", ["orders", "--from", "yesterday"]),
    ("inspect", ["orders", "--count", "0"]),
    ("pause", ["bill"]),
    ("pause", ["bill", "--app", ""]),
    ("pause", ["", "--app", "shop"]),
    ("pause", [BAD, "--app", "shop"]),
    ("pause", ["bill", "--app", HUGE]),
    ("pause", ["a", "--app", "odd"]),
    ("resume", ["bill"]),
    ("resume", [BAD, "--app", "shop"]),
    ("resume", ["a", "--app", "odd"]),
    ("agents", ["extra"]),
    ("agents", ["--redis-url", ""]),
    ("agents", ["--redis-url", DOWN]),
    ("audit", ["--count", "0"]),
    ("audit", ["--redis-url", DOWN]),
    ("rewind", ["orders"]),
    ("rewind", ["orders", "--group", "billing", "--to", "yesterday", "--yes"]),
    ("rewind", ["orders", "--group", "billing", "--to", "0"]),
    ("rewind", ["orders", "--group", "nogroup", "--to", "0", "--yes"]),
    ("rewind", ["nosuch", "--group", "billing", "--to", "0", "--yes"]),
    ("rewind", [BAD, "--group", "billing", "--to", "0", "--yes"]),
    ("pending list", [BAD]),
    ("pending list", [""]),
    ("pending list", ["nosuch"]),
    ("pending list", ["orders", "--count", "0"]),
    ("pending list", ["orders", "--group", "nogroup"]),
    ("pending dead-letter", ["orders", "--group", "billing", "--id", "abc", "--yes"]),
    ("pending dead-letter", ["orders", "--group", "billing", "--id", "1-1"]),
    ("pending dead-letter", ["orders", "--group", "billing", "--id", "1-1", "--yes"]),
    ("pending dead-letter", ["orders", "--group", "nogroup", "--id", "1-1", "--yes"]),
    ("pending hand-back", ["orders", "--group", "billing", "--id", "abc", "--yes"]),
    ("pending hand-back", ["orders", "--group", "billing", "--id", "1-1"]),
    ("pending hand-back", ["orders", "--group", "billing", "--id", "1-1", "--yes"]),
    ("pending hand-back", ["nosuch", "--group", "billing", "--id", "1-1", "--yes"]),
    ("dead show", ["orders", "abc"]),
    ("dead show", ["orders", "1-1"]),
    ("dead show", [BAD, "1-1"]),
    ("dead edit", ["orders", "1-1"]),
    ("dead edit", ["orders", "abc", "--set", "a=1"]),
    ("dead edit", ["orders", "1-1", "--set", "a=1"]),
    ("dead edit", ["orders", "1-1", "--set", "noequals"]),
    ("dead purge", ["orders"]),
    ("dead purge", ["orders", "--all"]),
    ("dead purge", ["orders", "--id", "abc", "--yes"]),
    ("dead purge", ["orders", "--id", "1-1", "--yes"]),
    ("dead purge", ["orders", "--since", "yesterday", "--yes"]),
    ("dead purge", ["orders", "--id", "1-1", "--all", "--yes"]),
    ("dead replay", ["orders", "--where", "oops"]),
    ("dead replay", ["orders", "--since", "yesterday"]),
    ("dead replay", ["orders", "--id", "1-1", "--all"]),
    ("scheduled promote", ["nothex"]),
    ("scheduled promote", ["0" * 24]),
    ("scheduled promote", ["0" * 24, "--namespace", ""]),
    ("scheduled cancel", ["0" * 24]),
    ("scheduled cancel", ["bad", "--yes"]),
    ("scheduled cancel", ["0" * 24, "--yes"]),
]


def _commands() -> set[str]:
    """Every leaf command of the CLI, as its path ("storage get")."""
    found: set[str] = set()

    def walk(cmd: Any, path: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found.add(path)

    walk(typer.main.get_command(cli_app), "")
    return found


def test_the_sweep_covers_every_command() -> None:
    # `dead STREAM` is `dead list STREAM`, `scheduled [STREAM]` is `scheduled list [STREAM]`.
    swept = {path for path, _ in CASES} | {"dead list", "scheduled list"}
    missing = _commands() - swept
    assert not missing, f"add bad-input rows for: {sorted(missing)}"


def test_every_command_takes_the_shared_options() -> None:
    """--redis-url, --log-level and --log-format on every command, as the docs promise."""
    lacking = {}
    root = typer.main.get_command(cli_app)
    for path in _commands():
        cmd: Any = root
        for part in path.split():
            cmd = cmd.commands[part]
        names = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        if want := {"--redis-url", "--log-level", "--log-format"} - names:
            lacking[path] = sorted(want)
    assert not lacking, lacking


def _snapshot(client: syncredis.Redis) -> dict[bytes, tuple[bytes, bytes | None]]:
    """Every key's type and DUMP (a stream's DUMP includes its groups and pending entries)."""
    return {
        key: (client.type(key), client.dump(key))  # type: ignore[misc]
        for key in client.scan_iter(count=1000)
    }


def _seed(client: syncredis.Redis) -> None:
    client.xadd("orders", {"n": "1"})
    client.xadd("orders", {"n": "2"})
    client.xgroup_create("orders", "billing", "0")
    client.xadd(
        "orders:dead",
        {"n": "0", "error": "boom", "error_type": "ValueError", "source_stream": "orders"},
    )
    client.xadd(b"str\xffeam", {"n": "1"})
    client.hset("storage-hash", "f", "v")
    client.hset("streammachine:storage:{default}", "k", "1")
    record = {"id": "h-1-abc", "app": "shop", "host": "h", "pid": 1, "ttl_s": 15.0}
    client.set("streammachine:instances:h-1-abc", json.dumps(record))  # no TTL: a stable DUMP
    client.set("streammachine:paused:{odd}", "not a set")


def _run(path: str, args: list[str], redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("STREAMMACHINE_STORAGE_NAMESPACE", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "streammachine", *path.split(), *args],
            capture_output=True,
            env=env,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:  # e.g. `send --count <huge>` writing for ever
        return subprocess.CompletedProcess([path, *args], 0, "", "(hung: killed after 60 s)")
    return subprocess.CompletedProcess(
        [path, *args],
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def _shown(args: list[str]) -> str:
    return " ".join(repr(a if len(a) < 40 else a[:20] + f"…({len(a)} chars)") for a in args)


@pytest.mark.timeout(900)  # ~220 runs of the CLI, 4 at a time, on a shared machine
def test_bad_input_is_one_line_nonzero_and_changes_nothing(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    _seed(redis_sync)
    before = _snapshot(redis_sync)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: _run(*case, redis_url), CASES))
    problems = []
    for (path, args), r in zip(CASES, results, strict=True):
        lines = r.stderr.strip().splitlines()
        what = f"{path} {_shown(args)}: exit {r.returncode}, stderr {r.stderr[-300:]!r}"
        if r.returncode == 0:
            problems.append(f"succeeded: {what}")
        elif "Traceback" in r.stderr:
            problems.append(f"traceback: {what}")
        elif len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"not one 'error:' line: {what}")
    assert not problems, "\n".join(problems)
    after = _snapshot(redis_sync)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"bad input changed Redis: {changed}"
