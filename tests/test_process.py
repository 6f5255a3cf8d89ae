"""The real CLI in a subprocess with real signals: drain on SIGTERM, force on a second signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import redis as syncredis

from tests.util import Lines, wait_sync

APP = textwrap.dedent(
    """
    import anyio
    from streammachine import App, Message

    app = App(name="slow")

    @app.agent("jobs", group="g")
    async def slow(record: Message) -> None:
        await app.send("started", {"n": record.message["n"]}, now=True)
        await anyio.sleep(float(record.message["sleep"]))
        await app.send("done", {"n": record.message["n"]})
    """
)


def start(tmp_path: Path, redis_url: str, *args: str) -> subprocess.Popen[bytes]:
    (tmp_path / "slowapp.py").write_text(APP)
    env = {**os.environ, "REDIS_URL": redis_url, "STREAMMACHINE_BLOCK_MS": "600000"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streammachine",
            "run",
            "slowapp:app",
            "--log-format",
            "json",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigterm_lets_the_running_handler_finish_and_ack(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    proc = start(tmp_path, redis_url)
    try:
        wait_sync(lambda: redis_sync.exists("jobs"), what="group created")
        redis_sync.xadd("jobs", {"n": "1", "sleep": "1.0"})
        wait_sync(lambda: redis_sync.xlen("started") == 1, what="handler started")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert redis_sync.xlen("done") == 1, "the in-flight handler finished and its output landed"
    assert redis_sync.xpending("jobs", "g")["pending"] == 0, "and its entry was acked"
    assert b"Traceback" not in err


def test_idle_app_stops_promptly_on_sigint(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    import time

    proc = start(tmp_path, redis_url)
    try:
        wait_sync(lambda: redis_sync.exists("jobs"), what="group created")
        wait_sync(lambda: redis_sync.xinfo_groups("jobs"), what="group")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    # a 10-minute blocked read: only an unblocked one stops within a minute, on any machine
    assert elapsed < 60, f"a blocked read is unblocked at shutdown (took {elapsed:.1f} s)"
    assert redis_sync.xinfo_consumers("jobs", "g") == [], "the consumer removed itself"


def test_second_signal_forces_and_leaves_the_entry_pending(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis
) -> None:
    proc = start(tmp_path, redis_url)
    try:
        wait_sync(lambda: redis_sync.exists("jobs"), what="group created")
        redis_sync.xadd("jobs", {"n": "1", "sleep": "30"})
        wait_sync(lambda: redis_sync.xlen("started") == 1, what="handler started")
        err = Lines(proc.stderr)
        proc.send_signal(signal.SIGTERM)
        err.wait_for("draining")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert redis_sync.xlen("done") == 0
    assert redis_sync.xpending("jobs", "g")["pending"] == 1, "nothing acked that was not handled"
