"""A consumer's own connection: packed commands, raw replies, outage backoff, typed read results.

Each consumer talks to Redis on a connection of its own, so its blocking read never waits behind
another consumer's and it can pipeline [commit, next read] in one write. Replies are read raw
(hiredis) and read replies are turned into a `Read`: the messages, or what went wrong in a form the
loop can act on (`moved`, `nogroup`, `error`) instead of an exception.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
from redis.exceptions import NoScriptError, ResponseError

from ..exceptions import UNREACHABLE, not_ready
from ..message import Message, messages_from_reply

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from ..connection import RedisConnection, Script

__all__ = ["LOST", "Read", "Wire", "WireLost", "pack", "read_command"]

log = logging.getLogger("streammachine.consume.agent")

#: The errors that mean the connection is gone (`exceptions.UNREACHABLE`, the one list).
LOST = UNREACHABLE


class WireLost(Exception):
    """The connection broke; what was sent may or may not have been applied."""


Fault = Literal["moved", "nogroup", "error"]


@dataclass(slots=True)
class Read:
    """A read's outcome: its messages, or the fault that kept it from returning any."""

    messages: list[Message] = field(default_factory=list)
    fault: Fault | None = None


def read_command(
    group: str, consumer: str, count: int, block_ms: int | None, stream: str, start_id: str = ">"
) -> list[Any]:
    """XREADGROUP of up to `count` entries of `stream` (new ones, or the consumer's own pending
    ones after `start_id`), blocking up to `block_ms` when given."""
    cmd: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms:
        cmd += ["BLOCK", block_ms]
    return [*cmd, "STREAMS", stream, start_id]


class Wire:
    """One consumer's connection to the node that serves its stream.

    Args:
        redis: the app's connection manager (URL, cluster routing, memory://).
        stream: the stream this connection serves (on a cluster, the node owning its slot).
        name: the consumer's name, for logs and as the reader of the messages.
        down_exit_s: give up (call `on_down`) after this long without Redis; None = never.
        on_down: called once Redis has been unreachable for longer than `down_exit_s`.
    """

    def __init__(
        self,
        redis: RedisConnection,
        stream: str,
        name: str,
        *,
        down_exit_s: float | None = None,
        on_down: Callable[[str], None] | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.name = name
        self.memory = redis.is_memory
        self.conn: AbstractConnection | None = None
        self.client_id: int | None = None
        self.blocked = False
        self.outage_since: float | None = None
        self.outage_attempts = 0
        self.down_exit_s = down_exit_s
        self.on_down = on_down
        #: The scripts run on this connection (by EVALSHA), loaded after connecting.
        self.scripts: list[Script] = []

    async def connect(self) -> AbstractConnection:
        """Open the connection and load the scripts the consumer runs on it."""
        conn = await self.redis.new_connection(self.stream)
        await conn.connect()  # type: ignore[no-untyped-call]
        self.conn = conn
        if not self.memory:
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
        await self._load(conn)
        return conn

    async def _load(self, conn: AbstractConnection) -> None:
        if self.scripts:
            await conn.send_packed_command(pack([s.load_command() for s in self.scripts]))
            for _ in self.scripts:
                await conn.read_response()

    async def load_scripts(self) -> None:
        """Load the scripts again (after NOSCRIPT: a SCRIPT FLUSH, or a failover). Raises
        WireLost."""
        try:
            await self._load(self.conn or await self.connect())
        except LOST as exc:
            raise WireLost(str(exc)) from exc

    async def run(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run `script` on this connection; its reply (a Redis error is returned, not raised;
        NOSCRIPT loads the scripts and runs it again). Raises WireLost."""
        (reply,) = await self.call([script.command(keys, args)])
        if isinstance(reply, NoScriptError):
            await self.load_scripts()
            (reply,) = await self.call([script.command(keys, args)])
        return reply

    async def send(self, cmds: Sequence[Sequence[Any]]) -> None:
        """Write `cmds` in one go. Raises WireLost."""
        try:
            conn = self.conn or await self.connect()
            await conn.send_packed_command(pack(cmds), check_health=False)
        except LOST as exc:
            raise WireLost(str(exc)) from exc

    async def recv(self, n: int) -> list[Any]:
        """Read `n` replies; Redis errors are returned in place, not raised. Raises WireLost."""
        conn = self.conn
        if conn is None:
            raise WireLost("not connected")
        replies: list[Any] = []
        try:
            for _ in range(n):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except LOST as exc:
            raise WireLost(str(exc)) from exc
        self._back()
        return replies

    async def call(self, cmds: Sequence[Sequence[Any]]) -> list[Any]:
        """Send `cmds` and read every reply. Raises WireLost."""
        await self.send(cmds)
        return await self.recv(len(cmds))

    def read(self, reply: Any) -> Read:
        """Turn an XREADGROUP/XCLAIM reply into a `Read`."""
        if isinstance(reply, ResponseError):
            text = str(reply)
            if not_ready(reply):
                # Loading, no master, a slot moving: an outage (reconnect with backoff, logged
                # once), not an error per read.
                return Read(fault="moved")
            if text.startswith(("MOVED", "ASK", "READONLY")):
                log.warning("%s: %s moved (%s); reconnecting", self.name, self.stream, text)
                return Read(fault="moved")
            if "NOGROUP" in text:
                return Read(fault="nogroup")
            log.error("%s: read failed: %s", self.name, text)
            return Read(fault="error")
        if not reply:
            return Read()
        return Read(messages_from_reply(reply, self.name))

    async def unblock(self) -> None:
        """End a blocking read in progress (at shutdown), through another connection."""
        if self.blocked and self.client_id is not None:
            try:
                await self.redis.client.execute_command("CLIENT", "UNBLOCK", self.client_id)  # type: ignore[no-untyped-call]
            except Exception:
                log.debug("CLIENT UNBLOCK failed", exc_info=True)

    def _back(self) -> None:
        if self.outage_since is not None:
            log.warning(
                "%s: Redis is back after %.1f s", self.name, time.monotonic() - self.outage_since
            )
            self.outage_since = None

    async def outage(self) -> None:
        """The connection broke: drop it, wait with jittered backoff, and connect again.

        The first failure of an outage is logged once; after `down_exit_s` `on_down` is called.
        """
        await self.close()
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            self.outage_attempts = 0
            log.error("%s: lost Redis at %s; retrying with backoff", self.name, self.redis)
        limit_s = self.down_exit_s
        if limit_s is not None and now - self.outage_since > limit_s and self.on_down is not None:
            self.on_down(f"Redis unreachable for more than {limit_s:g} s")
        self.outage_attempts += 1
        delay_s = min(2.0, 0.05 * 2**self.outage_attempts)
        await anyio.sleep(delay_s * (0.5 + random.random() / 2))
        try:
            if self.redis.is_cluster:
                await self.redis.client.nodes_manager.initialize()  # type: ignore[attr-defined]
            await self.connect()
        except Exception:
            log.debug("reconnect failed", exc_info=True)

    async def close(self) -> None:
        """Close the connection (shielded: it runs during cancellation too)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with anyio.CancelScope(shield=True):
                await conn.disconnect()


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP-encode commands: hiredis' packer (C, a redis[hiredis] dependency) for each command,
    several times faster than redis-py's for long commands; `_pack` for what it refuses."""
    out: list[bytes] = []
    for cmd in commands:
        try:
            out.append(_hiredis_pack(tuple(cmd)))
        except TypeError:  # e.g. a bool or a bytearray argument
            out.append(_pack(cmd))
    return b"".join(out)


def _pack(cmd: Sequence[Any]) -> bytes:
    """RESP-encode one command in Python (anything else becomes `str(arg)`)."""
    out: list[bytes] = [b"*%d\r\n" % len(cmd)]
    add = out.append
    for arg in cmd:
        t = type(arg)
        if t is str:
            b = arg.encode()
        elif t is bytes:
            b = arg
        elif t is int:
            b = b"%d" % arg
        else:
            b = (
                arg.encode()
                if isinstance(arg, str)
                else bytes(arg)
                if isinstance(arg, bytes | bytearray | memoryview)
                else str(arg).encode()
            )
        add(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


_hiredis_pack: Callable[[tuple[Any, ...]], bytes]
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py without its hiredis extra
    _hiredis_pack = _pack
