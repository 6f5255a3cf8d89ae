"""Issue 29, wave 2: bad arguments refused when an app is declared, and another tenant's garbage
in the keys the app reads back from Redis. Each case runs against a real redis-server (the CLI in
a subprocess where the whole process matters) and checks that the app says one line, keeps
working and loses nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis

from streammachine import App, Message, keys
from streammachine.exceptions import ConfigError, UnsafePickleError
from streammachine.presence.liveness import MAX_ALIVE_MS
from streammachine.settings import MAX_PARTITIONS
from streammachine.state.objstore import RedisObjectStorage
from streammachine.testing import TestApp
from tests.test_cli import cli, env_for, one_error_line
from tests.util import Lines, eventually, wait_sync


async def _job() -> None:
    return None


# --- registration: refused at decoration time -------------------------------------------------

BAD_REGISTRATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("cron", {"expr": "0 0 31 2 *"}, "never fires"),
    ("cron", {"expr": "0 0 30 2 *"}, "never fires"),
    ("cron", {"expr": "* * * * *", "tz": "x" * 10_000}, "is not a time zone"),
    ("cron", {"expr": "* * * * *", "tz": "Nowhere/Atlantis"}, "is not a time zone"),
    ("cron", {"expr": "* * * * *", "tz": 5}, "is not a time zone"),
    ("timer", {"t": math.nan}, "from 0.01"),
    ("timer", {"t": math.inf}, "from 0.01"),
    ("timer", {"t": 0}, "from 0.01"),
    ("timer", {"t": -1}, "from 0.01"),
    ("timer", {"t": 1e-9}, "from 0.01"),
    ("timer", {"t": "5"}, "number of seconds"),
    ("agent", {"stream": "s", "partitions": 1.5}, "whole number"),
    ("agent", {"stream": "s", "partitions": math.nan}, "whole number"),
    ("agent", {"stream": "s", "partitions": "3"}, "whole number"),
    ("agent", {"stream": "s", "partitions": True}, "whole number"),
    ("agent", {"stream": "s", "partitions": 10**6}, f"from 1 to {MAX_PARTITIONS}"),
]


@pytest.mark.parametrize(("kind", "kwargs", "text"), BAD_REGISTRATIONS)
def test_bad_registration_is_a_config_error(kind: str, kwargs: dict[str, Any], text: str) -> None:
    app = App(name="reg")
    with pytest.raises(ConfigError, match=text):
        getattr(app, kind)(**kwargs)(_job)
    assert not app.crons and not app.timers and not app.agents


def test_partition_count_and_keys() -> None:
    app = App(name="keys")
    app.cron("0 0 29 2 *")(_job)  # a leap day is a real date
    app.timer(0.01)(_job)
    with pytest.raises(ConfigError, match="whole number"):
        app.partitioned("kt2", 1.5)  # type: ignore[arg-type]
    app.partitioned("kt", 4)
    assert app.route("kt", 7) == app.route("kt", "7") == app.route("kt", b"7")
    with pytest.raises(ConfigError, match="str, bytes or int"):
        app.route("kt", 7.5)  # type: ignore[arg-type]


def test_run_refuses_an_impossible_cron_in_one_line(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "feb.py").write_text(
        "from streammachine import App\napp = App(name='feb')\n\n"
        "@app.cron('0 0 31 2 *')\nasync def never() -> None: ...\n"
    )
    r = cli(redis_url, "run", f"{tmp_path / 'feb.py'}:app")
    one_error_line(r, 1, "never fires")


# --- tampering: the process registry ---------------------------------------------------------


async def test_garbage_in_the_process_registry_makes_no_dead_consumer_look_alive(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """`ZADD streammachine:processes 9e15 ""` made every consumer look alive (an empty prefix
    matches all), so nothing was ever claimed from a dead process."""
    far = 9e15
    redis_sync.zadd(keys.PROCESSES, {"": far, "0000-fake": far, b"\xff\xfe": far, "gone": far})
    redis_sync.zadd(keys.PROCESSES, {"gonehost-": far, "gonehost-7-": far})  # a real-looking one
    redis_sync.xgroup_create("s", "g", id="0", mkstream=True)
    for i in range(5):
        redis_sync.xadd("s", {"n": str(i)})
    redis_sync.xreadgroup("g", "gonehost-2-h-0", {"s": ">"}, count=5)
    app = App(name="registry")
    got: list[str] = []

    @app.agent("s", group="g", claim_idle_ms=300, claim_interval_ms=100, block_ms=100)
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    with caplog.at_level(logging.WARNING, logger="streammachine.liveness"):
        async with TestApp(app, url=redis_url):
            await eventually(lambda: len(got) == 5, what="the dead consumer's entries claimed")
    assert sorted(got) == [str(i) for i in range(5)]
    assert redis_sync.xpending("s", "g")["pending"] == 0
    skipped = [r.getMessage() for r in caplog.records if "is not a process" in r.getMessage()]
    assert any("''" in m for m in skipped) and any("0000-fake" in m for m in skipped)
    # No member is taken for alive further ahead than StreamMachine ever marks one.
    now_ms = time.time() * 1000
    scores = dict(redis_sync.zrange(keys.PROCESSES, 0, -1, withscores=True))
    assert scores[b"gonehost-7-"] <= now_ms + MAX_ALIVE_MS + 5000
    assert max(scores.values()) <= now_ms + MAX_ALIVE_MS + 5000


# --- a Redis that is loading its dataset ------------------------------------------------------


class LoadingRedis:
    """A loopback TCP server that answers `-LOADING ...` to every command until `loading` is
    cleared, then forwards each new connection to the real Redis (as a server does when it has
    finished loading its AOF)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.loading = threading.Event()
        self.loading.set()
        self.answered = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while self.loading.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                n, buf = _whole_commands(buf)
                self.answered += n
                conn.sendall(b"-LOADING Redis is loading the dataset in memory\r\n" * n)
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            up.sendall(buf)
            threading.Thread(target=_pipe, args=(up, conn), daemon=True).start()
            _pipe(conn, up)

    def close(self) -> None:
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _whole_commands(buf: bytes) -> tuple[int, bytes]:
    """How many whole RESP commands (arrays of bulk strings) `buf` starts with, and the rest."""
    n = 0
    while True:
        pos = 0
        head = buf.find(b"\r\n", pos)
        if not buf.startswith(b"*") or head < 0:
            return n, buf
        pos = head + 2
        for _ in range(int(buf[1:head])):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return n, buf
            size = int(buf[pos + 1 : end])
            pos = end + 2 + size + 2
            if pos > len(buf):
                return n, buf
        n, buf = n + 1, buf[pos:]


LOADING_APP = """
from streammachine import App, Message
app = App(name="loading")

@app.agent("ld", group="g", block_ms=100)
async def copy(record: Message) -> None:
    await app.send("ld:out", {"n": record.message["n"]})
"""


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_run_waits_for_a_redis_that_is_loading(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis, workers: list[str]
) -> None:
    """A worker started while Redis loads its dataset waits (said once), then runs; it is not a
    failed start."""
    (tmp_path / "ldapp.py").write_text(LOADING_APP)
    for i in range(3):
        redis_sync.xadd("ld", {"n": str(i)})
    fake = LoadingRedis(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    url = f"redis://127.0.0.1:{fake.port}/{redis_url.rsplit('/', 1)[1]}"
    env = {**env_for(url), "STREAMMACHINE_REDIS_WAIT_S": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammachine", "run", f"{tmp_path / 'ldapp.py'}:app", *workers],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    err = Lines(proc.stderr)
    try:
        err.wait_for("is not ready yet", timeout_s=30)
        wait_sync(lambda: fake.answered >= 3, what="several LOADING answers")
        assert proc.poll() is None, err.text
        fake.loading.clear()
        wait_sync(lambda: redis_sync.xlen("ld:out") == 3, timeout_s=60, what=err.text)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, err.text
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.close()
    assert "Traceback" not in err.text
    assert "restarting" not in err.text and "failed to start" not in err.text, err.text


def test_run_gives_up_on_a_redis_that_stays_loading_with_one_clear_line(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "ldapp.py").write_text(LOADING_APP)
    fake = LoadingRedis(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    env = {**env_for(f"redis://127.0.0.1:{fake.port}/0"), "STREAMMACHINE_REDIS_WAIT_S": "1"}
    try:
        r = subprocess.run(
            [sys.executable, "-m", "streammachine", "run", f"{tmp_path / 'ldapp.py'}:app"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        fake.close()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("is not ready yet") == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert (
        "not ready within 1 s (Redis is loading" in last and "STREAMMACHINE_REDIS_WAIT_S" in last
    ), last


# --- URL parameters ------------------------------------------------------------------------------

BAD_URL_PARAMS = [
    ("?ssl_password=x", "is a TLS parameter: use a rediss:// URL"),
    ("?PASSWORD=x", "parameter names are lower case: 'password'"),
    ("?decode_responses=1", "unknown parameter 'decode_responses'"),
    ("?socket_timeout=abc", "bad value for 'socket_timeout'"),
]


@pytest.mark.parametrize(("query", "text"), BAD_URL_PARAMS)
def test_bad_url_parameters_are_one_line_before_redis(
    redis_url: str, query: str, text: str
) -> None:
    """`?ssl_password=x` on redis:// gave `streams` a traceback (redis-py's TypeError at the first
    connect) and `?PASSWORD=` passed validation: each is one line, the secret masked."""
    for command in (["streams"], ["health"], ["send", "s", "a=1"]):
        r = cli(redis_url, *command, "--redis-url", redis_url + query)
        one_error_line(r, 1, text)
        assert "=x'" not in r.stderr and "=x " not in r.stderr


# --- asyncapi: the document alone on stdout -------------------------------------------------------

ASYNCAPI_APP = """
from streammachine import App, Message
print("hello from the import")
app = App(name="talky")

@app.agent("orders", group="g")
async def bill(record: Message) -> None: ...
"""


def test_asyncapi_keeps_stdout_for_the_document(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "talky.py").write_text(ASYNCAPI_APP)
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "spins.py").write_text("while True:\n    pass\n")
    ok = cli(redis_url, "asyncapi", f"{tmp_path / 'talky.py'}:app")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["info"]["title"]  # nothing before the JSON
    assert "hello from the import" in ok.stderr
    quits = cli(redis_url, "asyncapi", f"{tmp_path / 'quits.py'}:app")
    one_error_line(quits, 1, "called sys.exit(0) while being imported")
    assert quits.stdout == ""
    env = {**env_for(redis_url), "STREAMMACHINE_IMPORT_TIMEOUT_S": "1"}
    spins = subprocess.run(
        [sys.executable, "-m", "streammachine", "asyncapi", f"{tmp_path / 'spins.py'}:app"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    one_error_line(spins, 1, "took longer than 1 s")
    assert spins.stdout == ""


# --- signed pickles are bound to their key ---------------------------------------------------------


async def test_signed_pickles_do_not_verify_under_another_key(
    redis_url: str, redis_sync: syncredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signed bytes of nsA:is_admin copied to nsA:price_limit or nsB:anything read back as
    valid; now the signature covers the namespace and the key."""
    a = RedisObjectStorage(redis_url, "nsA", secret_key="k1")
    b = RedisObjectStorage(redis_url, "nsB", secret_key="k1")
    try:
        await a.store_with_pickle("is_admin", True)
        signed = redis_sync.get(keys.objects("nsA") + "is_admin")
        assert isinstance(signed, bytes) and signed.startswith(b"SM2")
        assert await a.retrieve_with_pickle("is_admin") is True
        redis_sync.set(keys.objects("nsA") + "price_limit", signed)
        redis_sync.set(keys.objects("nsB") + "anything", signed)
        with pytest.raises(UnsafePickleError, match="copied from another key"):
            await a.retrieve_with_pickle("price_limit")
        with pytest.raises(UnsafePickleError, match="copied from another key"):
            await b.retrieve_with_pickle("anything")
        # A value of the old, unbound form: refused unless told, then read.
        payload = pickle.dumps({"old": 1})
        old = b"SM1" + hmac.new(b"k1", payload, hashlib.sha256).digest() + payload
        redis_sync.set(keys.objects("nsA") + "legacy", old)
        with pytest.raises(UnsafePickleError, match="allow_unbound=True"):
            await a.retrieve_with_pickle("legacy")
        migrating = RedisObjectStorage(redis_url, "nsA", secret_key="k1", allow_unbound=True)
        assert await migrating.retrieve_with_pickle("legacy") == {"old": 1}
        await migrating.close()
        monkeypatch.setenv("STREAMMACHINE_ALLOW_UNBOUND_PICKLES", "1")
        from_env = RedisObjectStorage(redis_url, "nsA", secret_key="k1")
        assert await from_env.retrieve_with_pickle("legacy") == {"old": 1}
        await from_env.close()
    finally:
        await a.close()
        await b.close()


# --- tampering: garbage in every key family the app reads ------------------------------------------


def _garbage(r: syncredis.Redis, app: str) -> None:
    """Another tenant's writes: wrong types, undecodable members, far-future scores."""
    far = 9e15
    r.zadd(keys.PROCESSES, {"": far, b"\xff\xfe": far})
    r.zadd(keys.partition_members("pt", "g"), {b"\xff\xfe": far, "0000-fake": far})
    r.rpush(keys.partition_lease("pt", "g", 0), "not", "a", "lease")
    r.set(keys.partition_lease("pt", "g", 1), b"\xff" * 10, px=10**12)
    r.zadd(keys.exclusive_members("ex", "g"), {"": far})
    r.hset(keys.exclusive_lease("ex", "g"), "x", "y")
    r.set(keys.INSTANCES + "junk", b"\xff\x00not json")
    r.hset(keys.INSTANCES + "hash", "a", "b")
    r.set(keys.INSTANCES + "wrongshape", '{"app": 5, "agents": "x"}', px=60_000)
    r.set(keys.paused(app), b"\xff")
    r.xadd("plain:dead", {"no": "metadata"})
    r.xadd("plain:dead", {b"\xff": b"\xfe", "source_stream": b"x\xff"})


async def test_the_app_keeps_working_over_garbage_in_its_keys(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(name="tampered")
    _garbage(redis_sync, app.name)
    got: dict[str, list[str]] = {"pt": [], "ex": [], "plain": []}

    @app.agent("pt", group="g", partitions=2, lease_ms=1000, block_ms=100)
    async def part(record: Message) -> None:
        got["pt"].append(record.message["n"])

    @app.agent("ex", group="g", exclusive=True, lease_ms=1000, block_ms=100)
    async def excl(record: Message) -> None:
        got["ex"].append(record.message["n"])

    @app.agent("plain", group="g", block_ms=100)
    async def plain(record: Message) -> None:
        got["plain"].append(record.message["n"])

    with caplog.at_level(logging.WARNING):
        async with TestApp(app, url=redis_url) as t:
            for i in range(20):
                await app.send("pt", {"n": str(i)}, key=str(i))
                await t.send("ex", {"n": str(i)})
                await t.send("plain", {"n": str(i)})
            await eventually(
                lambda: all(len(v) == 20 for v in got.values()), 30, f"every entry handled {got}"
            )
    assert all(sorted(v, key=int) == [str(i) for i in range(20)] for v in got.values()), got
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "is not a process" in said  # what it skipped, said
    assert "Traceback" not in said


def test_the_cli_reads_over_garbage_and_says_what_it_skipped(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    _garbage(redis_sync, "tampered")
    health = cli(redis_url, "health", "--json")
    assert health.returncode == 0 and "Traceback" not in health.stderr, health.stderr
    report = json.loads(health.stdout)
    assert report["skipped_records"] >= 3
    listed = cli(redis_url, "dead", "plain", "--json")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2, listed.stderr
    replay = cli(redis_url, "dead", "replay", "plain", "--all")
    assert "Traceback" not in replay.stderr
    # Hand-written entries go back as they are: to their named source (bytes kept), else to
    # the stream the dead-letter stream belongs to.
    assert replay.returncode == 0 and "replayed 2 dead letters" in replay.stdout, replay.stderr
    assert redis_sync.xlen(b"x\xff") == 1 and redis_sync.xlen("plain") == 1
    assert redis_sync.xlen("plain:dead") == 0
