"""The supervisor through the real CLI: worker processes, restarts, processes=N agents, reload,
drain on SIGTERM, workers that cannot start, and systemd's NOTIFY_SOCKET — with real subprocesses,
real signals and a real Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as syncredis

from streammachine.process.runner import error_line
from streammachine.process.supervisor import exit_reason
from streammachine.process.worker import AgentInfo, Layout
from streammachine.testing import free_port
from tests.util import Lines, wait_sync

Start = Callable[..., tuple[subprocess.Popen[bytes], Lines]]

WORKERS_APP = """
import os
import anyio
from streammachine import App, Message

app = App(name="pool")

@app.agent("jobs", group="g")
async def work(record: Message) -> None:
    await anyio.sleep(0.002)
    r = app.redis.client
    await r.sadd("pids", os.getpid())
    await r.sadd("seen", record.message["n"])
"""

PLACEMENT_APP = """
import os
from streammachine import App, Message

app = App(name="placed")

@app.agent("light", group="l")
async def light(record: Message) -> None: ...

@app.agent("heavy", group="h", processes=2)
async def heavy(record: Message) -> None: ...

@app.timer(0.1)
async def beat() -> None:
    await app.redis.client.sadd("timer_pids", os.getpid())
    await app.redis.client.incr("beats")
"""

RELOAD_APP = """
from streammachine import App, Message

app = App(name="live")

@app.agent("in", group="g")
async def handle(record: Message) -> None:
    await app.send("out", {{"version": "{version}"}})
"""

SLOW_APP = """
import anyio
from streammachine import App, Message

app = App(name="slow")

@app.agent("jobs", group="g")
async def slow(record: Message) -> None:
    await app.send("started", {"n": record.message["n"]}, now=True)
    await anyio.sleep(float(record.message["sleep"]))
    await app.send("done", {"n": record.message["n"]})
"""

NOTIFY_APP = """
import os
from streammachine import App, Message

app = App(name="notified")

@app.on_startup
async def hello() -> None:
    await app.redis.client.sadd("started", os.getpid())

@app.agent("jobs", group="g")
async def work(record: Message) -> None: ...
"""


@pytest.fixture
def start(tmp_path: Path, redis_url: str) -> Iterator[Start]:
    """Start `streammachine run smapp:app ARGS` on an app source; stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(
        source: str, *args: str, new_session: bool = False, prelude: str = "", **env: str
    ) -> tuple[subprocess.Popen[bytes], Lines]:
        (tmp_path / "smapp.py").write_text(textwrap.dedent(source))
        cli = [sys.executable, "-m", "streammachine"]
        if prelude:  # the real CLI, after `prelude` ran in its process
            cli = [sys.executable, "-c", f"{prelude}\nfrom streammachine.cli import main; main()"]
        proc = subprocess.Popen(
            [*cli, "run", "smapp:app", "--log-format=json", *args],
            cwd=tmp_path,
            env={
                **os.environ,
                "REDIS_URL": redis_url,
                "STREAMMACHINE_BLOCK_MS": "1000",
                "TMPDIR": str(tmp_path),  # what a SIGKILLed runner leaves stays in tmp_path
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=new_session,
        )
        procs.append(proc)
        return proc, Lines(proc.stderr)

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=30)


def count(err: Lines, text: str) -> int:
    return sum(text in line for line in err.lines)


def consumer_pids(r: syncredis.Redis, stream: str, group: str) -> set[int]:
    """Pids from consumer names `<host>-<pid>-<agent>-<n>`."""
    names = [c["name"].decode() for c in r.xinfo_consumers(stream, group)]
    return {int(name.rsplit("-", 3)[1]) for name in names}


def test_two_workers_consume_and_a_killed_worker_is_restarted_without_loss(
    start: Start, redis_sync: syncredis.Redis
) -> None:
    proc, err = start(WORKERS_APP, "--workers", "2", STREAMMACHINE_CLAIM_IDLE_MS="1000")
    err.wait_for("ready: 2 workers", timeout_s=30)
    with redis_sync.pipeline(transaction=False) as p:
        for n in range(1000):
            p.xadd("jobs", {"n": str(n)})
        p.execute()
    wait_sync(lambda: redis_sync.scard("pids") == 2, what="both workers consuming")
    first = {int(pid) for pid in redis_sync.smembers("pids")}
    assert proc.pid not in first, "the runner itself runs no worker"

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    owed = {
        int(c["name"].decode().rsplit("-", 3)[1]): c["pending"]
        for c in redis_sync.xinfo_consumers("jobs", "g")
    }
    assert owed[victim] > 0, "the killed worker held entries: they must be claimed back"
    err.wait_for(f"(pid {victim}) killed by SIGKILL; restarting it", timeout_s=10)
    err.wait_for("is running again", timeout_s=30)
    with redis_sync.pipeline(transaction=False) as p:
        for n in range(1000, 2000):
            p.xadd("jobs", {"n": str(n)})
        p.execute()

    wait_sync(lambda: redis_sync.scard("seen") == 2000, timeout_s=60, what="all 2000 handled")
    wait_sync(lambda: redis_sync.xpending("jobs", "g")["pending"] == 0, what="all acked")
    pids = {int(pid) for pid in redis_sync.smembers("pids")}
    assert len(pids - first) == 1, f"the restarted worker consumed too: {pids} vs {first}"
    assert stop(proc) == 0, err.text
    logged = [json.loads(line) for line in err.lines]  # the workers honour --log-format json
    assert {entry["pid"] for entry in logged} >= {proc.pid, *pids}


def test_processes_agent_gets_its_own_processes_and_timers_run_once(
    start: Start, redis_sync: syncredis.Redis
) -> None:
    proc, err = start(PLACEMENT_APP, "--workers", "2")
    err.wait_for("ready: 4 workers", timeout_s=30)
    wait_sync(lambda: len(consumer_pids(redis_sync, "heavy", "h")) == 2, what="heavy x2")
    wait_sync(lambda: len(consumer_pids(redis_sync, "light", "l")) == 2, what="light x2")
    heavy = consumer_pids(redis_sync, "heavy", "h")
    light = consumer_pids(redis_sync, "light", "l")
    assert not heavy & light, "a processes=N agent runs only in its dedicated processes"
    assert proc.pid not in heavy | light
    wait_sync(lambda: int(redis_sync.get("beats") or 0) >= 5, what="timer ticks")
    timer_pids = {int(pid) for pid in redis_sync.smembers("timer_pids")}
    assert len(timer_pids) == 1, "the timer lease picks one process to run the app's timers"
    assert stop(proc) == 0, err.text


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_runs_new_code_and_survives_a_syntax_error(
    start: Start, tmp_path: Path, redis_sync: syncredis.Redis, workers: int
) -> None:
    source = tmp_path / "smapp.py"

    def handled_by(version: str) -> None:
        before = redis_sync.xlen("out")
        redis_sync.xadd("in", {"n": "1"})
        wait_sync(lambda: redis_sync.xlen("out") == before + 1, what="a new output")
        entries = redis_sync.xrevrange("out", count=1)
        assert entries and entries[0][1] == {b"version": version.encode()}

    ready = f"ready: {workers} worker"
    proc, err = start(RELOAD_APP.format(version="one"), "--reload", "--workers", str(workers))
    err.wait_for(ready, timeout_s=30)
    handled_by("one")

    source.write_text(textwrap.dedent(RELOAD_APP.format(version="two")))
    wait_sync(lambda: count(err, ready) == 2, timeout_s=30, what=err.text)
    handled_by("two")

    source.write_text("from streammachine import App\napp = App(\n")
    err.wait_for(f"syntax error in {source}:2", timeout_s=30)
    errors = [json.loads(line) for line in err.lines if "syntax error" in line]
    assert len(errors) == 1 and errors[0]["level"] == "error", "one clear log line"
    assert proc.poll() is None, "the supervisor stays up"
    handled_by("two")  # the last good code keeps running

    source.write_text(textwrap.dedent(RELOAD_APP.format(version="three")))
    wait_sync(lambda: count(err, ready) == 3, timeout_s=30, what=err.text)
    handled_by("three")
    assert stop(proc, signal.SIGINT) == 0, err.text
    assert "Traceback" not in err.text


def test_sigterm_drains_every_worker_and_exits_0(start: Start, redis_sync: syncredis.Redis) -> None:
    proc, err = start(SLOW_APP, "--workers", "2")
    err.wait_for("ready: 2 workers", timeout_s=30)
    for n in range(4):
        redis_sync.xadd("jobs", {"n": str(n), "sleep": "1.0"})
    wait_sync(lambda: redis_sync.xlen("started") >= 1, what="a handler running")
    assert stop(proc) == 0, err.text
    started = redis_sync.xlen("started")
    assert redis_sync.xlen("done") == started, "every started handler finished"
    assert redis_sync.xpending("jobs", "g")["pending"] == 0, "and was acked"
    assert "Traceback" not in err.text


def test_second_signal_forces_the_workers_and_exits_1(
    start: Start, redis_sync: syncredis.Redis
) -> None:
    proc, err = start(SLOW_APP, "--workers", "2")
    err.wait_for("ready: 2 workers", timeout_s=30)
    redis_sync.xadd("jobs", {"n": "1", "sleep": "30"})
    wait_sync(lambda: redis_sync.xlen("started") == 1, what="handler started")
    proc.send_signal(signal.SIGTERM)
    err.wait_for("draining 2 workers")
    assert stop(proc) == 1, err.text
    assert redis_sync.xlen("done") == 0
    assert redis_sync.xpending("jobs", "g")["pending"] == 1, "nothing acked that was not handled"


def test_ctrl_c_to_the_terminal_group_drains_once(
    start: Start, redis_sync: syncredis.Redis
) -> None:
    proc, err = start(SLOW_APP, "--workers", "2", new_session=True)
    err.wait_for("ready: 2 workers", timeout_s=30)
    redis_sync.xadd("jobs", {"n": "1", "sleep": "1.0"})
    wait_sync(lambda: redis_sync.xlen("started") == 1, what="handler started")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert proc.wait(timeout=30) == 0, "the workers got one SIGINT (forwarded), not two"
    assert redis_sync.xlen("done") == 1, err.text


def test_workers_stop_by_themselves_when_the_runner_is_killed(
    start: Start, redis_sync: syncredis.Redis
) -> None:
    proc, err = start(SLOW_APP, "--workers", "2")
    err.wait_for("ready: 2 workers", timeout_s=30)
    wait_sync(lambda: len(redis_sync.xinfo_consumers("jobs", "g")) == 2, what="2 consumers")
    proc.kill()
    proc.wait()
    wait_sync(
        lambda: redis_sync.xinfo_consumers("jobs", "g") == [],
        timeout_s=20,
        what="the orphaned workers drained and left the group",
    )
    assert err.has("the runner (pid")


FLAKY_START_APP = """
from streammachine import App, Message

app = App(name="flaky")

@app.on_startup
async def check() -> None:
    if await app.redis.client.exists("broken"):
        raise RuntimeError("the config service is down")

@app.agent("jobs", group="g")
async def work(record: Message) -> None: ...
"""


def test_a_worker_that_keeps_failing_to_start_makes_the_runner_give_up(
    start: Start, redis_sync: syncredis.Redis
) -> None:
    proc, err = start(
        FLAKY_START_APP,
        "--workers",
        "2",
        prelude="import streammachine.process.supervisor as s; s.MAX_START_FAILURES = 3",
    )
    err.wait_for("ready: 2 workers", timeout_s=30)
    redis_sync.set("broken", 1)
    victim = max(consumer_pids(redis_sync, "jobs", "g"))
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    assert count(err, "restarting it in") == 3, "restarted with backoff, then given up"
    assert count(err, "failed to start 3 times in a row; stopping") == 1, err.text
    assert count(err, "config service is down") == 3


def test_import_error_in_a_worker_app_exits_nonzero_with_one_line(start: Start) -> None:
    proc, err = start("import not_a_module_xyz\n", "--workers", "2")
    assert proc.wait(timeout=60) != 0
    assert not err.has("restarting it in"), "no restart loop"
    lines = [line for line in err.lines if line.strip()]
    assert len(lines) == 1, err.text
    assert "No module named 'not_a_module_xyz'" in lines[0] and "smapp.py:1" in lines[0]


def test_worker_that_cannot_reach_redis_stops_the_runner(start: Start) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    # A refused connection is waited for (Redis may be restarting), then given up on.
    proc, err = start(
        NOTIFY_APP, "--workers", "2", "--redis-url", url, STREAMMACHINE_REDIS_WAIT_S="2"
    )
    assert proc.wait(timeout=60) != 0
    assert err.has("cannot reach Redis") and err.has("not ready within 2 s"), err.text
    assert count(err, "could not start; stopping") == 1, err.text
    assert "restarting" not in err.text and "Traceback" not in err.text


@pytest.mark.parametrize("workers", [1, 2])
def test_notify_socket_gets_ready_then_stopping(
    start: Start, tmp_path: Path, redis_sync: syncredis.Redis, workers: int
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        proc, err = start(NOTIFY_APP, "--workers", str(workers), NOTIFY_SOCKET=str(path))
        assert sock.recv(1024) == b"READY=1", err.text
        assert redis_sync.scard("started") == workers, "READY only once every worker started"
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(1024) == b"STOPPING=1"
        assert proc.wait(timeout=30) == 0, err.text
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1024)  # nothing else: the workers never talk to systemd themselves
    pids = {int(p) for p in redis_sync.smembers("started")}
    assert (proc.pid in pids) == (workers == 1), "one worker runs in the runner's own process"


def test_help_does_not_import_heavy_modules(tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    code = (
        "import json, sys\n"
        "sys.argv = ['streammachine', '--help']\n"
        "from streammachine.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
    loaded = {name.split(".")[0] for name in json.loads(out.read_text())}
    assert "typer" in loaded, "the probe ran the CLI"
    assert not loaded & {"pandas", "numba", "mcp", "starlette", "uvicorn", "numpy"}


def test_layout_runs_timers_in_every_worker_and_dedicated_agents_apart() -> None:
    layout = Layout(
        "app",
        [AgentInfo("a", "s", "g", 0), AgentInfo("b", "s2", "g", 2)],
        ["beat"],
        30.0,
        "redis://localhost:6379/0",
    )
    specs = layout.specs(3)
    assert [(s.label, s.agents, s.timers) for s in specs] == [
        ("worker-0", ("a",), True),
        ("worker-1", ("a",), True),
        ("worker-2", ("a",), True),
        ("b-0", ("b",), True),
        ("b-1", ("b",), True),
    ]
    only_dedicated = Layout("app", [AgentInfo("b", "s", "g", 1)], [], 30.0, "redis://h/0")
    assert [s.label for s in only_dedicated.specs(2)] == ["b-0"], "no idle regular workers"
    assert "a (s/g), b (s2/g, 2 processes)" in layout.banner("5 workers")
    assert layout.problem(5) is None
    memory = Layout("app", [], [], 30.0, "memory://")
    assert memory.problem(1) is None and "real Redis" in (memory.problem(2) or "")


def test_exit_reason_and_error_line() -> None:
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(3) == "exited with code 3"
    with pytest.raises(SyntaxError) as caught:
        compile("x = (\n", "/app/mod.py", "exec")
    assert error_line(caught.value).startswith("syntax error in /app/mod.py:1: ")
