"""Long commands show a Rich progress bar on a terminal only: `dead replay --all`, `send --file`
of a large file and `ohlc` over a long history; never with --json or when the output is piped.
Each runs the real CLI against a real Redis, on a pseudo-terminal or on pipes."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import redis as syncredis

CLI = [sys.executable, "-m", "streammachine"]
ENV = {**os.environ, "COLUMNS": "120"}


def on_terminal(*args: str, timeout_s: float = 120) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdout=slave, stderr=slave, env=ENV)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(30)
    finally:
        os.close(master)
    return code, seen.decode("utf-8", "replace")


def piped(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def seed_dead(r: syncredis.Redis, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(
            "orders:dead",
            {"n": str(i), "error": "boom", "error_type": "ValueError", "traceback": "",
             "deliveries": "3", "source_stream": "orders", "source_id": f"{i + 1}-0",
             "group": "billing", "failed_at": "1700000000.0"},
        )  # fmt: skip
    pipe.execute()


def test_dead_replay_all_shows_progress_on_a_terminal_only(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    seed_dead(redis_sync, 1500)
    code, text = on_terminal("dead", "replay", "orders", "--all", "--redis-url", redis_url)
    assert code == 0, text
    assert "replaying orders:dead" in text and "replayed 1500 dead letters" in text
    assert redis_sync.xlen("orders") == 1500 and redis_sync.xlen("orders:dead") == 0
    # Exactly the original fields went back.
    assert redis_sync.xrange("orders", count=1)[0][1] == {b"n": b"0"}

    seed_dead(redis_sync, 1500)
    result = piped("dead", "replay", "orders", "--all", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "replayed 1500 dead letters from orders:dead\n"
    assert "replaying" not in result.stderr and "\x1b[" not in result.stderr


def test_send_file_shows_progress_on_a_terminal_only(
    redis_url: str, redis_sync: syncredis.Redis, tmp_path: Path
) -> None:
    big = tmp_path / "orders.jsonl"
    big.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(12_000)))
    code, text = on_terminal("send", "orders", "--file", str(big), "--redis-url", redis_url)
    assert code == 0, text[-2000:]
    assert "sending to orders" in text
    assert redis_sync.xlen("orders") == 12_000
    result = piped("send", "orders", "--file", str(big), "--redis-url", redis_url)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 12_000
    assert "sending" not in result.stderr and "\x1b[" not in result.stderr


def test_ohlc_over_a_long_history_shows_progress_on_a_terminal_only(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    pipe = redis_sync.pipeline(transaction=False)
    for i in range(25_000):
        pipe.xadd("ticks", {"symbol": "AAPL", "price": 100 + i % 7, "volume": 1}, id=f"{i + 1}-0")
    pipe.execute()
    args = ("ohlc", "ticks", "--interval", "1s", "--redis-url", redis_url)
    code, text = on_terminal(*args)
    assert code == 0, text[-2000:]
    assert "reading ticks" in text and "AAPL" in text
    code, text = on_terminal(*args, "--json")
    assert code == 0 and "reading" not in text
    assert json.loads(text.splitlines()[0])["symbol"] == "AAPL"
    result = piped(*args)
    assert result.returncode == 0 and "reading" not in result.stderr + result.stdout
