"""RedisConnection: one URL to every deployment, one connection pool per process.

URLs: `redis://`, `rediss://` (TLS), `unix://`, and `memory://`, an in-process fakeredis server that
everything in the process shares (examples and unit tests need no server). Clients return bytes;
StreamMachine decodes where it hands values to users.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .codec import as_text, encode_fields
from .exceptions import REDIS_FAILURES, ConfigError, map_redis_errors
from .message import Message, messages_from_reply
from .settings import Settings

__all__ = ["LoopClient", "RedisConnection", "mask_url", "url_secrets", "validate_url"]

log = logging.getLogger("streammachine.connection")

_SCHEMES = ("redis", "rediss", "unix", "memory", "redis+cluster", "redis+sentinel")
_memory_server: Any = None


# Query parameters redis-py hands to the connection that may carry a credential (`password=`,
# `username=`, `ssl_password=`, `sentinel_password=`, ...); certificate paths stay visible.
_SECRET_PARAM = re.compile(r"pass|user|secret|token|auth|credential", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return `url` with every credential replaced by `***`, for logs, errors and results.

    Masked: the password of the userinfo (`user:***@`), a userinfo without `:` (redis-py reads
    it as a user name, but people put passwords there), and the value of every query parameter
    that can carry a credential (`password=`, `username=`, `ssl_password=`, ...). Certificate
    paths (`ssl_certfile=`, `ssl_ca_certs=`, ...) and everything else stay as they are.

    Example:
        >>> mask_url("redis://user:secret@db:6379/0")
        'redis://user:***@db:6379/0'
        >>> mask_url("rediss://db/0?password=pw&ssl_ca_certs=/etc/ca.pem")
        'rediss://db/0?password=***&ssl_ca_certs=/etc/ca.pem'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head, q, query = rest.partition("?")
    # The last @ before the query: a password may hold an @ or a / (redis-py needs them
    # percent-encoded, but a mistyped URL must not leak either).
    userinfo, at, host_path = head.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        head = f"{user}:***@{host_path}" if colon else f"***@{host_path}"
    if q:
        params = []
        for param in query.split("&"):
            name, eq, value = param.partition("=")
            params.append(f"{name}=***" if eq and value and _SECRET_PARAM.search(name) else param)
        query = "&".join(params)
    return f"{scheme}://{head}{q}{query}"


def url_secrets(url: str) -> list[str]:
    """The credentials in `url` (userinfo and query parameters, raw and percent-decoded), so a
    message that quotes one (e.g. a server's error) can be scrubbed by `str.replace`.

    Example:
        >>> url_secrets("redis://u:p%40ss@db/0?ssl_password=k")
        ['p%40ss', 'p@ss', 'k']
    """
    _scheme, _, rest = url.partition("://")
    head, _, query = rest.partition("?")
    userinfo, at, _ = head.rpartition("@")
    found: list[str] = []
    if at:
        user, colon, password = userinfo.partition(":")
        secret = password if colon else user
        found += [secret, unquote(secret)]
    for name, value in parse_qsl(query):
        if _SECRET_PARAM.search(name) and "user" not in name.lower():
            found.append(value)
    return list(dict.fromkeys(s for s in found if s))


def memory_server() -> Any:
    """The process-wide fakeredis server behind every `memory://` URL."""
    global _memory_server
    if _memory_server is None:
        import fakeredis

        _memory_server = fakeredis.FakeServer()
    return _memory_server


def validate_url(url: str) -> str:
    """Check a Redis URL's scheme and shape; raise `ConfigError` with the valid forms."""
    if not url.strip():
        raise ConfigError(
            "the Redis URL is empty: give one such as redis://localhost:6379/0, "
            "or leave the option out to use REDIS_URL (else REDIS_HOST/REDIS_PORT/REDIS_DB)"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"bad Redis URL {mask_url(url)!r}: use redis://host:port/db, rediss://…, "
            "unix:///path/to/socket, redis+cluster://host:port[,host:port…], "
            "redis+sentinel://host:port[,host:port…]/service_name or memory://"
        )
    if scheme in ("redis+cluster", "redis+sentinel"):
        nodes = _nodes(url)
        if scheme == "redis+sentinel" and not urlsplit(url).path.strip("/"):
            raise ConfigError(
                f"{mask_url(url)}: name the service, e.g. redis+sentinel://host:26379/mymaster"
            )
        if not nodes:
            raise ConfigError(f"{mask_url(url)}: give at least one host:port")
    elif scheme in ("redis", "rediss"):
        try:
            urlsplit(url).port  # noqa: B018 - parsing the port validates it
        except ValueError:
            raise ConfigError(f"bad port in Redis URL {mask_url(url)!r}") from None
        db = unquote(urlsplit(url).path).strip("/")
        if db and not (db.isascii() and db.isdigit()):
            # redis-py would silently use DB 0 for anything after the host that is not a number.
            raise ConfigError(
                f"bad database {db!r} in Redis URL {mask_url(url)!r}: the path is the database "
                "number, e.g. redis://localhost:6379/0"
            )
    if scheme in ("redis", "rediss", "unix"):
        _check_query(url)
    return url


def _check_query(url: str) -> None:
    """Parse the query parameters redis-py converts (db=, socket_timeout=, ...) here, so a bad
    one is a `ConfigError` at start, not a ValueError from inside the pool."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    parsers: dict[str, Any] = URL_QUERY_ARGUMENT_PARSERS
    for name, value in parse_qsl(urlsplit(url).query):
        parser = parsers.get(name)
        if parser is None or name == "retry_on_error":
            continue
        try:
            parser(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"bad value for {name!r} in Redis URL {mask_url(url)!r}: see "
                "https://redis.readthedocs.io/en/stable/connections.html for the URL parameters"
            ) from None


def _nodes(url: str) -> list[tuple[str, int]]:
    """The host:port list of a cluster or sentinel URL."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in filter(None, netloc.split(",")):
        host, _, port = part.rpartition(":")
        try:
            nodes.append((host or part, int(port) if host else 6379))
        except ValueError:
            raise ConfigError(f"bad host:port {part!r} in {mask_url(url)!r}") from None
    return nodes


def _auth(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    out: dict[str, Any] = {}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password:
        out["password"] = unquote(parts.password)
    return out


def create_client(url: str, max_connections: int = 10, cluster: bool = False) -> aioredis.Redis:
    """A bytes-returning asyncio client with its own pool for `url`.

    `redis+cluster://` (or `cluster=True`) gives a `RedisCluster`, `redis+sentinel://` a client
    of the service's current master that follows failovers.
    """
    validate_url(url)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from fakeredis import aioredis as fake

        return cast(aioredis.Redis, fake.FakeRedis(server=memory_server()))
    if scheme == "redis+cluster" or (cluster and scheme in ("redis", "rediss")):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = (
            _nodes(url)
            if scheme == "redis+cluster"
            else [(urlsplit(url).hostname or "localhost", urlsplit(url).port or 6379)]
        )
        return cast(
            aioredis.Redis,
            RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                max_connections=max(max_connections, 32),
                **_auth(url),
            ),
        )
    if scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel

        service = urlsplit(url).path.strip("/").split("/")[0]
        sentinel = Sentinel(_nodes(url), sentinel_kwargs=_auth(url), **_auth(url))  # type: ignore[no-untyped-call]
        return cast(aioredis.Redis, sentinel.master_for(service, redis_class=aioredis.Redis))
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, health_check_interval=30
    )
    return aioredis.Redis(connection_pool=pool)


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
        self._scripts: dict[str, AsyncScript] = {}

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

    def script(self, source: str) -> AsyncScript:
        """The Lua script `source` registered with this connection's client, cached (EVALSHA,
        and redis-py loads it again on NOSCRIPT). The one place scripts are registered.

        Example:
            >>> await conn.script("return 1")()  # doctest: +SKIP
            1
        """
        client = self.client
        found = self._scripts.get(source)
        if found is None or found.registered_client is not client:
            found = self._scripts[source] = client.register_script(source)
        return found

    def same_slot(self, keys: Iterable[str]) -> bool:
        """True when all `keys` hash to one cluster slot (always true off a cluster)."""
        if not self.is_cluster:
            return True
        from redis.crc import key_slot

        return len({key_slot(k.encode()) for k in keys}) <= 1

    async def connect(self) -> None:
        """Ping the server; raise `RedisUnavailableError` naming the (masked) URL if unreachable."""
        hint = (
            "Start redis-server or set REDIS_URL to a reachable server (memory:// runs in-process)"
        )
        # Any failure of the first call, an error reply included (e.g. NOPERM), means "not usable".
        with map_redis_errors(f"Redis at {mask_url(self.url)}", hint, REDIS_FAILURES):
            await self.client.ping()

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
        loop body that got it finishes (at-least-once). Stops when `stop` is set.

        Example:
            >>> async for record in redis.consumer("orders", "billing"):  # doctest: +SKIP
            ...     print(record.message)
        """
        await self.ensure_group(stream, group, start)
        block = None if self.is_memory else block_ms
        while stop is None or not stop.is_set():
            reply = await self.client.execute_command(
                "XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                *(("BLOCK", block) if block else ()), "STREAMS", stream, ">",
                NEVER_DECODE=True,
            )  # type: ignore[no-untyped-call]  # fmt: skip
            messages = messages_from_reply(reply, consumer)
            if not messages:
                if block is None:
                    await asyncio.sleep(0.02)
                continue
            for msg in messages:
                yield msg
                await self.client.xack(stream, group, msg.key or "")

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

    def script(self, source: str) -> AsyncScript:
        """`source` registered with the current client (see `RedisConnection.script`)."""
        return self.conn.script(source)

    async def close(self) -> None:
        """Close this loop's own connection (a shared one belongs to its owner)."""
        own, loop, self._own, self._loop = self._own, self._loop, None, None
        if own is not None and loop is asyncio.get_running_loop():
            await own.close()
