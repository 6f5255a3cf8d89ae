"""A send whose reply is lost on the wire is in the stream once (issue: idempotent production).

A `TcpProxy` forwards a command to the real Redis and then drops the connection instead of the
reply, exactly the window where a plain retry writes twice: `app.send`, `app.send_batch` and
the CLI's `send` / `send --file` must each leave every entry once, and a re-run of an interrupted
`send --file` must write only what the first run did not. `make test-versions` runs this module
on every server (IDMP on Redis >= 8.6, the marker script elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as syncredis

from streammachine import App
from streammachine.testing import TcpProxy


class ReplyDropper(TcpProxy):
    """A proxy that, for the `nth` client write containing `pattern`, forwards the command and
    then aborts the connection before the reply comes back. With `refuse_after`, every later
    connection is refused (the server looks gone for good)."""

    def __init__(self, target_port: int, pattern: bytes, nth: int = 1) -> None:
        super().__init__(target_port)
        self.pattern, self.nth, self.seen, self.dropped = pattern, nth, 0, 0
        self.refuse_after = False
        self._refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refusing:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        drop = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
                if self.pattern in data:
                    self.seen += 1
                    if self.seen == self.nth:
                        drop.set()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if drop.is_set():
                    self.dropped += 1
                    self._refusing = self.refuse_after
                    break
                writer.write(data)
                await writer.drain()

        await asyncio.wait(
            [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()


@pytest.fixture
def redis_port(redis_url: str) -> int:
    return int(redis_url.rsplit(":", 1)[1].split("/")[0])


def write_pattern(redis_sync: syncredis.Redis) -> bytes:
    """What an idempotent write looks like on the wire on this server."""
    try:
        redis_sync.execute_command("XADD", "probe", "IDMP", "p", "1", "*", "a", "1")
    except syncredis.ResponseError:
        return b"EVALSHA"  # the marker script
    finally:
        redis_sync.delete("probe")
    return b"IDMP"


@pytest.fixture
def dropper(redis_port: int, redis_sync: syncredis.Redis) -> Iterator[ReplyDropper]:
    proxy = ReplyDropper(redis_port, write_pattern(redis_sync)).start()
    yield proxy
    proxy.close()


async def test_app_send_reply_lost_on_the_wire(
    redis_sync: syncredis.Redis, dropper: ReplyDropper
) -> None:
    app = App(name="wire", redis_url=dropper.url)
    entry_id = await app.send("orders", {"n": 1})
    await app.aclose()
    assert dropper.dropped == 1, "the reply was never dropped: the test did not bite"
    assert redis_sync.xlen("orders") == 1
    assert redis_sync.xrange("orders")[0][0].decode() == entry_id


async def test_send_batch_reply_lost_on_the_wire(
    redis_sync: syncredis.Redis, dropper: ReplyDropper
) -> None:
    app = App(name="wire", redis_url=dropper.url)
    dropper.nth = 2  # a later chunk's reply
    ids = await app.send_batch("orders", [{"n": i} for i in range(300)])
    await app.aclose()
    assert dropper.dropped == 1
    rows = redis_sync.xrange("orders")
    assert [int(f[b"n"]) for _, f in rows] == list(range(300))
    assert [i.decode() for i, _ in rows] == ids


def _decoded(
    url: str, args: tuple[str, ...], data: bytes | None, env: dict[str, str]
) -> tuple[int, str, str]:
    r = subprocess.run(
        [sys.executable, "-m", "streammachine", *args],
        input=data,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    code, out, err = _decoded(url, args, None, {**os.environ, "REDIS_URL": url})
    return subprocess.CompletedProcess(list(args), code, out, err)


def test_cli_send_reply_lost_on_the_wire(
    redis_sync: syncredis.Redis, dropper: ReplyDropper
) -> None:
    r = run_cli(dropper.url, "send", "orders", "n=1")
    assert r.returncode == 0, r.stderr
    assert dropper.dropped == 1
    assert redis_sync.xlen("orders") == 1
    assert r.stdout.split() == [redis_sync.xrange("orders")[0][0].decode()]


def test_cli_send_file_interrupted_then_run_again(
    tmp_path: Path, redis_url: str, redis_sync: syncredis.Redis, dropper: ReplyDropper
) -> None:
    """The connection drops while the second batch of 1000 lines is on the wire (part of it
    applied, no reply) and Redis stays gone: the run fails; running the same command again
    writes exactly the lines the first run did not, each once."""
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(2500)))
    dropper.pattern, dropper.refuse_after = b"$4\r\n1500\r\n", True  # in the second batch
    first = run_cli(dropper.url, "send", "orders", "--file", str(path))
    assert dropper.dropped == 1
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    written = redis_sync.xlen("orders")
    assert 1000 <= written <= 2000, written
    again = run_cli(redis_url, "send", "orders", "--file", str(path))
    assert again.returncode == 0, again.stderr
    assert f"skipped {written} line(s)" in again.stderr
    assert len(again.stdout.split()) == 2500 - written
    assert [int(f[b"n"]) for _, f in redis_sync.xrange("orders")] == list(range(2500))
    assert not redis_sync.keys("streammachine:progress:*"), "a finished run removes its marker"
    # sending the file again on purpose, after a finished run, sends it again
    assert run_cli(redis_url, "send", "orders", "--file", str(path)).returncode == 0
    assert redis_sync.xlen("orders") == 5000
