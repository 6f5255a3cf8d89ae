"""`make run`'s demo as a user sees it: `streammachine run examples/demo.py:app --dashboard` on
memory://, with its output piped (plain lines) and on a terminal (a Rich live panel)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from streammachine.testing import free_port
from tests.util import Lines, wait_sync

ROOT = Path(__file__).resolve().parent.parent


def _demo(port: int, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
    env = {**(env or os.environ), "REDIS_URL": "memory://", "COLUMNS": "120"}
    env.pop("STREAMMACHINE_DASHBOARD", None)
    cmd = [sys.executable, "-m", "streammachine", "run", "examples/demo.py:app", "--dashboard"]
    return subprocess.Popen(
        [*cmd, "--dashboard-port", str(port)],
        cwd=ROOT,
        env=env,
        **kw,  # type: ignore[call-overload]
    )


def test_piped_demo_prints_the_url_first_then_plain_lines_and_serves_the_dashboard() -> None:
    port = free_port()
    proc = _demo(port, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = Lines(proc.stdout)
    try:
        out.wait_for("shipped", timeout_s=60)
        assert out.lines[0] == f"open http://127.0.0.1:{port}\n"
        assert all(line.startswith("shipped ") for line in out.lines[1:]), out.text
        assert "\x1b[" not in out.text  # no terminal control codes in a pipe
        base = f"http://127.0.0.1:{port}"
        assert httpx2.get(base + "/healthz", timeout=5).status_code == 200
        doc = httpx2.get(base + "/asyncapi.json", timeout=5).json()
        assert {c["address"] for c in doc["channels"].values()} >= {"orders", "priced"}

        def history() -> bool:
            data = httpx2.get(base + "/api/history", timeout=5).json()
            return {a["agent"] for a in data["agents"] if a["points"]} == {"price", "ship"}

        wait_sync(history, 60, "the dashboard's history of both agents")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, out.text


def test_demo_on_a_terminal_draws_a_live_panel() -> None:
    port = free_port()
    master, slave = pty.openpty()
    proc = _demo(port, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""

    def read_for(seconds: float, until: bytes | None = None) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until in seen):
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return

    try:
        read_for(60, until=b"dead letters")
        text = seen.decode("utf-8", "replace")
        assert f"open http://127.0.0.1:{port}" in text
        for column in ("stream/group", "rate/s", "lag", "pending", "retried", "dead"):
            assert column in text, text
        assert "orders/pricing" in text and "priced/shipping" in text
        assert "| Ctrl-C to stop" not in text  # the piped report line is not printed
    finally:
        proc.send_signal(signal.SIGINT)
        read_for(5)
        code = proc.wait(30)
        os.close(master)
    assert code == 0, seen.decode("utf-8", "replace")[-2000:]


def test_demo_runs_without_the_dashboard_extra(tmp_path: Path) -> None:
    """With nothing but the project installed (no starlette/uvicorn), `--dashboard` is dropped
    with a note, and the demo runs."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['starlette'] = None\nsys.modules['uvicorn'] = None\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    port = free_port()
    proc = _demo(port, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = Lines(proc.stdout)
    try:
        out.wait_for("shipped", timeout_s=60)
        assert out.lines[0].startswith("no dashboard: pip install 'streammachine[dashboard]'")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, out.text
