"""RedisConnection: one URL to every deployment (see `urls`), one connection pool per process,
the one script registry; `LoopClient`, a client per event loop. Clients return bytes;
StreamMachine decodes where it hands values to users.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import anyio
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .codec import as_text, encode_fields
from .exceptions import (
    REDIS_FAILURES,
    ConfigError,
    RedisUnavailableError,
    map_redis_errors,
    not_ready,
)
from .features import Features, parse_info
from .keys import PROCESSES
from .message import Message
from .settings import Settings
from .urls import create_client, mask_url, validate_url

__all__ = ["LoopClient", "RedisConnection", "Script"]


def error_text(exc: BaseException | None) -> str:
    """One short line for `exc`, for logs."""
    text = " ".join(str(exc).split())[:200] if exc is not None else ""
    return text.rstrip(".") or type(exc).__name__


log = logging.getLogger("streammachine.connection")


class Script:
    """A Lua script, named by its SHA1: called through the pool (EVALSHA, loaded again on
    NOSCRIPT by redis-py), or packed into a consumer's own pipeline as `command(...)`, where the
    consumer's connection loads it with `load_command()` (after connecting, and on NOSCRIPT).

    Example:
        >>> await conn.script("return ARGV[1]")(args=["hi"])  # doctest: +SKIP
        b'hi'
    """

    __slots__ = ("_call", "sha", "source")

    def __init__(self, source: str, call: AsyncScript) -> None:
        self.source = source
        self.sha: str = call.sha
        self._call = call

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self._call(keys=keys, args=args)

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        """EVALSHA of this script, as one command of a pipeline."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def load_command(self) -> list[Any]:
        """SCRIPT LOAD of this script (a connection that runs `command()` sends it first)."""
        return ["SCRIPT", "LOAD", self.source]


class RedisConnection:
    """Async Redis connection manager with a connection pool.

    Explicit arguments beat `REDIS_URL`, which beats `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with RedisConnection(url="memory://") as redis:
        ...         await redis.pipeline_xadd("stream", [{"key": "value"}])
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        max_connections: int | None = None,
        url: str | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        s = settings or Settings.current()
        if url is None and (host is not None or port is not None or db is not None):
            url = (
                f"redis://{host or s.redis_host}:{port or s.redis_port}/"
                f"{s.redis_db if db is None else db}"
            )
        elif url is None:
            url = s.resolve_url()
        elif db is not None and url.startswith(("redis://", "rediss://")):
            url = re.sub(r"(//[^/]*)(/\d*)?$", rf"\1/{db}", url)
        self.url = validate_url(url)
        self.max_connections = max_connections or s.redis_max_connections
        self.settings = s
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, tuple[Any, Script]] = {}
        self._features: tuple[Any, Features] | None = None

    def __repr__(self) -> str:
        return f"RedisConnection({mask_url(self.url)!r})"

    @property
    def is_memory(self) -> bool:
        """True for `memory://`, the in-process server."""
        return self.url.startswith("memory://")

    @property
    def is_cluster(self) -> bool:
        """True for Redis Cluster (`redis+cluster://` or `STREAMMACHINE_CLUSTER=1`)."""
        return self.url.startswith("redis+cluster://") or (
            self.settings.cluster and self.url.startswith(("redis://", "rediss://"))
        )

    @property
    def client(self) -> aioredis.Redis:
        """The shared redis-py asyncio client (bytes replies); created on first use."""
        if self._client is None:
            self._client = create_client(self.url, self.max_connections, self.is_cluster)
        return self._client

    def script(self, source: str) -> Script:
        """The Lua script `source` registered with this connection's client, cached. The one
        place scripts are registered: every Lua call of the package goes through it.

        Example:
            >>> await conn.script("return 1")()  # doctest: +SKIP
            1
        """
        client = self.client
        found = self._scripts.get(source)
        if found is None or found[0] is not client:
            found = self._scripts[source] = (client, Script(source, client.register_script(source)))
        return found[1]

    async def features(self) -> Features:
        """What the server can do (newer commands), read once per client from `INFO server`.

        Example:
            >>> (await conn.features()).idmp  # doctest: +SKIP
            True
        """
        client = self.client
        if self._features is None or self._features[0] is not client:
            if self.is_memory:
                found = Features("memory")
            else:
                info: Any = await client.info("server")
                if info and all(isinstance(v, dict) for v in info.values()):
                    info = next(iter(info.values()))  # a cluster answers per node
                found = parse_info(info)
            self._features = (client, found)
        return self._features[1]

    def same_slot(self, keys: Iterable[str]) -> bool:
        """True when all `keys` hash to one cluster slot (always true off a cluster)."""
        if not self.is_cluster:
            return True
        from redis.crc import key_slot

        return len({key_slot(k.encode()) for k in keys}) <= 1

    async def connect(self, wait_s: float = 0.0, stop: anyio.Event | None = None) -> None:
        """Ping the server; raise `RedisUnavailableError` naming the (masked) URL if unreachable.

        A server that is there but not ready yet (loading its dataset, a replica without its
        master, a refused connection while it restarts: `exceptions.not_ready`) is waited for,
        with backoff, for up to `wait_s` seconds (said once in the log), or until `stop` is set
        (then it returns without a connection; the caller checks `stop`).
        """
        where = f"Redis at {mask_url(self.url)}"
        hint = (
            "Start redis-server or set REDIS_URL to a reachable server (memory:// runs in-process)"
        )
        deadline = time.monotonic() + wait_s
        delay_s, waiting = 0.1, False
        while True:
            try:
                # Any failure, an error reply included (e.g. NOPERM), means "not usable". PING
                # passes on a replica serving no stale data, a read of a key does not.
                with map_redis_errors(where, hint, REDIS_FAILURES):
                    await self.client.ping()
                    await self.client.exists(PROCESSES)
            except RedisUnavailableError as exc:
                cause = exc.__cause__
                if not not_ready(cause):
                    raise
                if time.monotonic() + delay_s > deadline:
                    if not waiting:
                        raise
                    raise RedisUnavailableError(
                        f"cannot reach {where}: not ready within {wait_s:g} s "
                        f"({error_text(cause)}); "
                        "check the server, or wait longer with STREAMMACHINE_REDIS_WAIT_S"
                    ) from cause
                if not waiting:
                    log.warning(
                        "%s is not ready yet (%s); waiting up to %g s",
                        where, error_text(cause), wait_s,
                    )  # fmt: skip
                    waiting = True
                with anyio.move_on_after(delay_s):
                    await (stop or anyio.Event()).wait()
                if stop is not None and stop.is_set():
                    return
                delay_s = min(2.0, delay_s * 2)
                continue
            if waiting:
                log.info("%s is ready", where)
            return

    async def new_connection(self, key: str | None = None) -> AbstractConnection:
        """A dedicated connection outside the pool's limit, for a consumer's blocking reads;
        on a cluster, to the node that holds `key` (topology refreshed first)."""
        client: Any = self.client
        if self.is_cluster:
            await client.initialize()
            if key is None:
                raise ConfigError("a cluster connection needs the key it will serve")
            node = client.get_node_from_key(key)
            return cast(AbstractConnection, node.connection_class(**node.connection_kwargs))
        return cast(AbstractConnection, client.connection_pool.make_connection())

    async def health_check(self) -> bool:
        """True when Redis answers PING; never raises."""
        try:
            return bool(await asyncio.wait_for(self.client.ping(), timeout=5))
        except Exception:
            return False

    async def ensure_group(self, stream: str, group: str, start: str = "earliest") -> bool:
        """Create `group` on `stream` (MKSTREAM) at `0`, or `$` for `start="latest"`.

        Returns True when created, False when it existed (an existing group keeps its position).
        """
        try:
            await self.client.xgroup_create(
                stream, group, id="$" if start == "latest" else "0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            if "WRONGTYPE" in str(exc):
                raise ConfigError(
                    f"key {stream!r} exists and is not a stream: consume another stream, "
                    "or rename or delete that key"
                ) from None
            raise
        return True

    async def xadd(
        self, topic: str, record: Mapping[str, Any] | Any, maxlen: int | None = None
    ) -> str:
        """Append one record; returns its id as str."""
        fields = encode_fields(record)
        entry_id = await self.client.xadd(topic, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        return as_text(entry_id)

    async def pipeline_xadd(
        self, topic: str, records: Sequence[Mapping[str, Any] | Any], maxlen: int | None = None
    ) -> list[str]:
        """Append many records in one round trip; returns their ids in order."""
        encoded = [encode_fields(r) for r in records]
        if not encoded:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for fields in encoded:
                pipe.xadd(topic, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            ids = await pipe.execute()
        return [as_text(i) for i in ids]

    async def consumer(
        self,
        stream: str,
        group: str,
        consumer: str = "consumer",
        *,
        count: int = 10,
        block_ms: int = 1000,
        start: str = "earliest",
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[Message]:
        """Read `stream` as `consumer` of `group`, yielding Messages; each is acked when the
        loop body that got it finishes (at-least-once). Stops when `stop` is set. It reads on a
        connection of its own, as an agent's consumers do (`consume.wire.Wire`).

        Example:
            >>> async for record in redis.consumer("orders", "billing"):  # doctest: +SKIP
            ...     print(record.message)
        """
        from .consume.wire import Wire, read_command

        await self.ensure_group(stream, group, start)
        block = None if self.is_memory else block_ms
        wire = Wire(self, stream, consumer)
        try:
            while stop is None or not stop.is_set():
                cmd = read_command(group, consumer, count, block, stream)
                messages = wire.read((await wire.call([cmd]))[0]).messages
                if not messages:
                    if block is None:
                        await asyncio.sleep(0.02)
                    continue
                for msg in messages:
                    yield msg
                    await wire.call([["XACK", stream, group, msg.key or ""]])
        finally:
            await wire.close()

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            client, self._client = self._client, None
            if self.is_cluster:
                await client.aclose()
            else:
                await client.aclose(close_connection_pool=True)

    async def __aenter__(self) -> RedisConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class LoopClient:
    """A redis client per running event loop, unless an existing `RedisConnection` is shared.

    redis.asyncio connections belong to the loop that opened them, and a long-lived object (a
    singleton, a test's storage) may be used from several loops in turn.
    """

    def __init__(
        self,
        url: str | None,
        redis: RedisConnection | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._shared = redis
        self._settings = settings
        if redis is not None:
            self.url = redis.url
        else:
            self.url = url or (settings or Settings.current()).resolve_url()
        self._own: RedisConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def conn(self) -> RedisConnection:
        """The shared connection, or this event loop's own one."""
        if self._shared is not None:
            return self._shared
        loop = asyncio.get_running_loop()
        if self._own is None or self._loop is not loop:
            self._own = RedisConnection(url=self.url, settings=self._settings)
            self._loop = loop
        return self._own

    @property
    def client(self) -> aioredis.Redis:
        return self.conn.client

    def script(self, source: str) -> Script:
        """`source` registered with the current client (see `RedisConnection.script`)."""
        return self.conn.script(source)

    async def close(self) -> None:
        """Close this loop's own connection (a shared one belongs to its owner)."""
        own, loop, self._own, self._loop = self._own, self._loop, None, None
        if own is not None and loop is asyncio.get_running_loop():
            await own.close()
