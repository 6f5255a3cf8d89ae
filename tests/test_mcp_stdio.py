"""The MCP server as a process: `streammachine mcp` over stdio with the SDK's stdio client,
stdout carrying nothing but protocol, `--read-only`, `--transport http`, and the MCP Inspector."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as syncredis
from mcp import Client, StdioServerParameters

from streammachine.mcp_server import TOOLS
from streammachine.testing import free_port
from tests.util import Lines, missing, wait_sync

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def params(redis_url: str, *args: str, module: str = "streammachine") -> StdioServerParameters:
    extra = ["mcp", *args] if module == "streammachine" else list(args)
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", module, *extra],
        env={"REDIS_URL": redis_url, "STREAMMACHINE_LOG_FORMAT": "json"},
        cwd=str(ROOT),
    )


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_stdio_round_trip(redis_url: str, redis_sync: syncredis.Redis) -> None:
    with anyio.fail_after(60):
        async with Client(params(redis_url)) as c:
            sent = await call(c, "stream_send", {"stream": "ticks", "message": {"p": 1.5}})
            read = await call(c, "stream_read", {"stream": "ticks"})
            assert read["entries"] == [{"id": sent["id"], "fields": {"p": "1.5"}}]
            await call(c, "storage_write", {"key": "seen", "value": {"n": 1}})
            assert (await call(c, "storage_read", {"key": "seen"}))["value"] == {"n": 1}
            await call(c, "ohlc_create", {"name": "m", "intervals": ["1m"]})
            tick = {"name": "m", "symbol": "A", "price": 2.0, "volume": 1.0, "timestamp_ms": 5}
            await call(c, "ohlc_update", tick)
            candles = await call(c, "ohlc_get_candles", {"name": "m", "symbol": "A"})
            assert candles["candles"][0]["close"] == 2.0
    assert redis_sync.xlen("ticks") == 1
    assert redis_sync.hexists("streammachine:storage:{default}", "seen")


def _rpc(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def test_stdout_carries_only_protocol(redis_url: str) -> None:
    """`python -m streammachine.mcp_server`: every stdout line is JSON-RPC, logs go to stderr."""
    env = os.environ | {"REDIS_URL": redis_url, "STREAMMACHINE_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammachine.mcp_server"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}})  # fmt: skip
        wait_sync(lambda: out.lines, 30, "the initialize response")
        _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        for i, (tool, args) in enumerate(
            [("redis_ping", {}), ("stream_read", {"stream": 5}), ("storage_clear", {})], start=2
        ):
            _rpc(proc, {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                        "params": {"name": tool, "arguments": args}})  # fmt: skip
        wait_sync(lambda: len(out.lines) >= 4, 30, "three tool results")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        code = proc.wait(timeout=30)
    replies = [json.loads(line) for line in out.lines]  # a log line here would fail to parse
    assert all(r["jsonrpc"] == "2.0" for r in replies)
    by_id = {r["id"]: r["result"] for r in replies}
    assert by_id[1]["serverInfo"]["name"] == "streammachine"
    assert by_id[2]["structuredContent"]["pong"] is True
    assert by_id[3]["isError"] and "argument 'stream'" in by_id[3]["content"][0]["text"]
    assert by_id[4]["isError"] and "not confirmed" in by_id[4]["content"][0]["text"]
    assert code == 0
    logs = [json.loads(line) for line in err.lines if line.startswith("{")]
    assert any("MCP server" in rec["msg"] and "stdio" in rec["msg"] for rec in logs), err.text


async def test_console_script_read_only(redis_url: str) -> None:
    script = BIN / "streammachine-mcp"
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    server = StdioServerParameters(
        command=str(script), args=["--read-only"], env={"REDIS_URL": redis_url}, cwd=str(ROOT)
    )
    with anyio.fail_after(60):
        async with Client(server) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            result = await c.call_tool("storage_write", {"key": "k", "value": 1})
    assert names == {n for n, hints in TOOLS.items() if hints[1]}
    assert result.is_error


def _serve_http(redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {"REDIS_URL": redis_url, "STREAMMACHINE_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", "mcp", "--transport", "http", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip


async def test_http_transport(redis_url: str) -> None:
    port = free_port()
    proc = _serve_http(redis_url, port)
    err = Lines(proc.stderr)
    try:
        err.wait_for(f"http://127.0.0.1:{port}/mcp", 30)
        with anyio.fail_after(60):
            while True:  # the log line comes just before uvicorn binds the port
                try:
                    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
                        names = {t.name for t in (await c.list_tools()).tools}
                        pong = await call(c, "redis_ping", {})
                    break
                except Exception:
                    await anyio.sleep(0.1)
        assert names == set(TOOLS) and pong["pong"]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0, err.text


def test_cli_rejects_a_bad_transport() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "streammachine", "mcp", "--transport", "pigeon"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == "error: --transport must be stdio or http, not 'pigeon'"


def test_mcp_inspector_cli_lists_the_tools(redis_url: str) -> None:
    npx = shutil.which("npx")
    if npx is None:
        missing("npx (Node.js) is not installed: cannot run the MCP Inspector CLI")
    cmd = [
        npx, "-y", "@modelcontextprotocol/inspector", "--cli", "-e", f"REDIS_URL={redis_url}",
        sys.executable, "-m", "streammachine", "mcp", "--method", "tools/list",
    ]  # fmt: skip
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    except subprocess.TimeoutExpired:
        missing("the MCP Inspector could not be fetched and started within 120 s")
    if run.returncode != 0 and re.search(r"npm (ERR!|error)", run.stderr):
        missing(f"npx could not fetch @modelcontextprotocol/inspector: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)
    assert {t["name"] for t in listed["tools"]} == set(TOOLS)
    assert all(t["annotations"]["openWorldHint"] is False for t in listed["tools"])
