"""Regression tests of issue 19 ("what a security review and a clumsy user found"): the real CLI in
subprocesses against a real Redis, and the library pieces behind it. The MCP and dashboard items
are in test_mcp.py and test_dashboard.py; the sweep over every command is test_bad_input.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
import redis as syncredis

from streammachine.exceptions import ConfigError
from streammachine.state.storage import Storage
from streammachine.testing import RedisServer
from streammachine.urls import mask_url, url_secrets, validate_url
from tests.test_cli import cli, json_lines, one_error_line
from tests.util import start_or_skip

# -- credentials in URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:secret@db:6379/0", "redis://user:***@db:6379/0"),
        ("redis://:secret@db/0", "redis://:***@db/0"),
        ("redis://secret@db/0", "redis://***@db/0"),
        ("redis://u:p/a@ss@db/0", "redis://u:***@db/0"),
        ("redis://db/0?password=secret", "redis://db/0?password=***"),
        ("redis://db/0?username=bob&password=secret", "redis://db/0?username=***&password=***"),
        (
            "rediss://:secret@db/0?ssl_certfile=/etc/c.pem&ssl_ca_certs=/etc/ca.pem"
            "&ssl_password=secret",
            "rediss://:***@db/0?ssl_certfile=/etc/c.pem&ssl_ca_certs=/etc/ca.pem&ssl_password=***",
        ),
        ("unix:///run/redis.sock?db=1&password=secret", "unix:///run/redis.sock?db=1&password=***"),
        (
            "redis+sentinel://:secret@h1:26379,h2:26379/mymaster",
            "redis+sentinel://:***@h1:26379,h2:26379/mymaster",
        ),
        ("redis://db:6379/0?socket_timeout=5", "redis://db:6379/0?socket_timeout=5"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url_masks_every_credential_form(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "secret" not in mask_url(url)
    for found in url_secrets(url):
        assert found not in masked.replace("***", "")


def test_health_json_never_shows_a_query_string_password(tmp_path: Path) -> None:
    server = start_or_skip(RedisServer())
    try:
        admin = syncredis.Redis.from_url(server.url)
        admin.config_set("requirepass", "qs-pw-123")
        admin.close()
        url = f"redis://127.0.0.1:{server.port}/0?password=qs-pw-123"
        ok = cli(url, "health", "--json", "--redis-url", url)
        assert ok.returncode == 0, ok.stderr
        report = json.loads(ok.stdout)
        assert report["healthy"] and report["redis_url"].endswith("/0?password=***")
        wrong = url.replace("qs-pw-123", "wrong-pw-456")
        bad = cli(wrong, "health", "--json", "--redis-url", wrong)
        assert bad.returncode == 1 and json.loads(bad.stdout)["healthy"] is False
        for r in (ok, bad):
            assert "qs-pw-123" not in r.stdout + r.stderr
            assert "wrong-pw-456" not in r.stdout + r.stderr
    finally:
        server.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "the Redis URL is empty"),
        ("  ", "the Redis URL is empty"),
        ("redis://127.0.0.1/abc", "bad database 'abc'"),
        ("redis://127.0.0.1:6379/0/1", "bad database '0/1'"),
        ("redis://127.0.0.1/0?db=x", "bad value for 'db'"),
        ("redis://127.0.0.1/0?socket_timeout=soon", "bad value for 'socket_timeout'"),
        ("redis://:pw@127.0.0.1/abc", "redis://:***@127.0.0.1/abc"),
    ],
)
def test_bad_urls_are_config_errors(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_url(url)
    assert reason in str(caught.value) and "pw@" not in str(caught.value)


def test_good_urls_still_validate() -> None:
    for url in ("redis://h", "redis://h/", "redis://h:1/15", "rediss://h/0?ssl_cert_reqs=none"):
        assert validate_url(url) == url


def test_empty_and_bad_db_urls_fail_in_the_cli(redis_url: str) -> None:
    empty = cli(redis_url, "health", "--redis-url", "")
    one_error_line(empty, 1, "the Redis URL is empty")
    bad_db = cli(redis_url, "streams", "--redis-url", "redis://127.0.0.1/abc")
    one_error_line(bad_db, 1, "bad database 'abc'")


# -- non-UTF-8 names ---------------------------------------------------------------------------------


def test_a_non_utf8_argument_is_one_line_naming_it(redis_url: str) -> None:
    r = cli(redis_url, "send", os.fsdecode(b"or\xffders"), "a=1")
    one_error_line(r, 2, "argument 2 (b'or\\xffders') is not UTF-8 text")


def test_tail_group_and_streams_with_non_utf8_names(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    redis_sync.xadd("orders", {"n": "1"})
    redis_sync.xgroup_create("orders", b"g\xff", "0")
    redis_sync.xgroup_create("orders", "billing", "0")
    redis_sync.xadd(b"tick\xffs", {"n": "1"})
    read = cli(redis_url, "tail", "orders", "--group", "billing", "--json")
    assert read.returncode == 0 and "Traceback" not in read.stderr, read.stderr
    assert [e["fields"] for e in json_lines(read.stdout)] == [{"n": "1"}]
    missing = cli(redis_url, "tail", "orders", "--group", "nope")
    one_error_line(missing, 1, "(it has: billing, g\\xff)")
    listed = cli(redis_url, "streams", "--json")
    assert listed.returncode == 0, listed.stderr
    infos = {i["stream"]: i for i in json_lines(listed.stdout)}
    assert sorted(infos) == ["orders", "tick\\xffs"]
    assert infos["tick\\xffs"]["length"] == 1
    assert sorted(g["name"] for g in infos["orders"]["groups"]) == ["billing", "g\\xff"]


# -- JSON input and output ----------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_nested_json_has_a_limit(
    redis_url: str, redis_sync: syncredis.Redis, tmp_path: Path
) -> None:
    ok = cli(redis_url, "send", "s", "--json", _nested(64))
    assert ok.returncode == 0, ok.stderr
    deep = cli(redis_url, "send", "s", "--json", _nested(65))
    one_error_line(deep, 2, "--json: it is nested deeper than 64 levels")
    very_deep = cli(redis_url, "send", "s", "--json", "[" * 50_000 + "]" * 50_000)
    one_error_line(very_deep, 2, "nested deeper than 64 levels")
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n' + _nested(200) + "\n")
    from_file = cli(redis_url, "send", "s", "--file", str(path))
    one_error_line(from_file, 2, f"line 2 of {path}: it is nested deeper than 64 levels")
    stored = cli(redis_url, "storage", "set", "k", "[" * 5000 + "]" * 5000)
    one_error_line(stored, 2, "the value: it is nested deeper than 64 levels")
    assert redis_sync.xlen("s") == 1, "only the accepted entry was written"


def test_storage_get_json_is_valid_json_for_nan_and_infinity(redis_url: str) -> None:
    async def seed() -> None:
        store = Storage(None, url=redis_url)
        await store.write("nan", math.nan)
        await store.write("inf", math.inf)
        await store.write("nested", {"low": -math.inf, "list": [1.5, math.nan], "ok": 2.0})
        await store.close()

    anyio.run(seed)

    def strict(text: str) -> object:
        def refuse(name: str) -> object:
            raise AssertionError(f"{name} is not JSON")

        return json.loads(text, parse_constant=refuse)

    got = {}
    for key in ("nan", "inf", "nested"):
        r = cli(redis_url, "storage", "get", key, "--json")
        assert r.returncode == 0, r.stderr
        got[key] = strict(r.stdout)
    assert got == {
        "nan": "nan",
        "inf": "inf",
        "nested": {"low": "-inf", "list": [1.5, "nan"], "ok": 2.0},
    }


def test_storage_set_ttl_out_of_range_is_a_usage_error(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    for ttl in ("1e20", "inf", "nan"):
        r = cli(redis_url, "storage", "set", "k", "v", "--ttl", ttl)
        one_error_line(r, 2, "--ttl")
    assert cli(redis_url, "storage", "set", "k", "v", "--ttl", "3600").returncode == 0
    assert 0 < redis_sync.pttl("streammachine:storage:{default}:ttl:k") <= 3_600_000


def test_storage_keys_must_be_str(redis_url: str) -> None:
    async def main() -> None:
        store = Storage(None, url=redis_url)
        try:
            for call in (
                lambda: store.write(1, "x"),  # type: ignore[arg-type]
                lambda: store.read(b"k"),  # type: ignore[arg-type]
                lambda: store.delete(None),  # type: ignore[arg-type]
                lambda: store.exists(1.5),  # type: ignore[arg-type]
                lambda: store.incr(("a",)),  # type: ignore[arg-type]
                lambda: store.read_many(["a", 2]),  # type: ignore[list-item]
                lambda: store.write_many({3: "x"}),  # type: ignore[dict-item]
            ):
                with pytest.raises(ConfigError, match="storage keys are str, not"):
                    await call()
            assert await store.keys() == []
        finally:
            await store.close()

    anyio.run(main)


# -- top and run --------------------------------------------------------------------------------------


def test_top_takes_log_level_and_log_format(redis_url: str) -> None:
    r = cli(redis_url, "top", "--once", "--json", "--log-level", "error", "--log-format", "json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["redis"]["ok"] is True
    bad = cli(redis_url, "top", "--once", "--log-format", "xml")
    one_error_line(bad, 1, "--log-format must be text, json or auto")


def test_run_of_a_module_that_raises_leads_with_one_line(redis_url: str, tmp_path: Path) -> None:
    app = tmp_path / "brokenapp.py"
    app.write_text(
        textwrap.dedent(
            """\
            from streammachine import App

            def settle():
                return {}["missing-setting"]

            TOTAL = settle()
            app = App(name="broken")
            """
        )
    )
    r = cli(redis_url, "run", f"{app}:app")
    assert r.returncode == 1
    first, *rest = r.stderr.splitlines()
    assert first == (
        f"error: the app module '{app}' failed to import: KeyError at {app}:4: 'missing-setting'"
    ), first
    assert rest[0] == "Traceback (most recent call last):", rest[:2]
    assert rest[-1] == "KeyError: 'missing-setting'"
    assert f'File "{app}", line 6' in r.stderr and f'File "{app}", line 4' in r.stderr
    missing = tmp_path / "needsdep.py"
    missing.write_text("import no_such_dependency_xyz\n")
    r = cli(redis_url, "run", f"{missing}:app")
    assert r.stderr.splitlines()[0].startswith(
        f"error: the app module '{missing}' failed to import: ModuleNotFoundError at {missing}:1"
    ), r.stderr
    syntax = tmp_path / "syntaxapp.py"
    syntax.write_text("app = (\n")
    one_error_line(cli(redis_url, "run", f"{syntax}:app"), 1, f"syntax error in {syntax}:1")


def test_mcp_start_up_log_masks_a_query_string_password(redis_url: str) -> None:
    url = redis_url + "?password=mcp-log-pw"
    proc = subprocess.run(
        [sys.executable, "-m", "streammachine", "mcp", "--redis-url", url, "--log-format", "json"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    started = [json.loads(line) for line in proc.stderr.splitlines() if "MCP server" in line]
    assert started and started[0]["msg"].endswith("?password=*** on stdio"), proc.stderr
    assert "mcp-log-pw" not in proc.stderr + proc.stdout
