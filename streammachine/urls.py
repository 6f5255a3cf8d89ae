"""Redis URLs: their forms, validation with one-line errors, masking of credentials, and the
redis-py client for each form.

Forms: `redis://`, `rediss://` (TLS), `unix://`, `redis+cluster://h:p,h:p`, `redis+sentinel://h:p/
service`, and `memory://`, an in-process fakeredis server that everything in the process shares
(examples and unit tests need no server).
"""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis

from .exceptions import ConfigError

__all__ = ["create_client", "mask_url", "memory_server", "url_secrets", "validate_url"]

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


#: URL parameters a connection takes besides redis-py's parsed ones (all strings).
_TEXT_PARAMS = frozenset({"password", "username", "client_name", "lib_name", "lib_version"})


def _known_params(tls: bool) -> frozenset[str]:
    """The query parameters a `redis://` (or, `tls`, `rediss://`) URL may carry: each one
    redis-py hands to the connection must be one its class takes, or it fails at the first
    connect with a TypeError."""
    import inspect

    from redis.asyncio.connection import SSLConnection
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    names = set(URL_QUERY_ARGUMENT_PARSERS) | _TEXT_PARAMS
    names |= set(inspect.signature(SSLConnection.__init__).parameters) - {"self", "kwargs"}
    return frozenset(n for n in names if tls or not n.startswith("ssl_"))


def _check_query(url: str) -> None:
    """Check the query parameters here, once, so a bad one is a one-line `ConfigError` at
    start, not a TypeError or ValueError from inside the pool at the first command: each must be
    one the connection takes (TLS ones only on rediss://), and the values redis-py converts
    (db=, socket_timeout=, ...) must convert."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    parsers: dict[str, Any] = URL_QUERY_ARGUMENT_PARSERS
    tls = urlsplit(url).scheme.lower() == "rediss"
    known = _known_params(tls)
    docs = "see https://redis.readthedocs.io/en/stable/connections.html for the URL parameters"
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        shown = repr(name) if len(name) <= 40 else repr(name[:40]) + "..."
        if name not in known:
            if name.startswith("ssl_") and name in _known_params(True):
                why = f"{shown} is a TLS parameter: use a rediss:// URL, or drop it"
            elif name.lower() in known:
                why = (
                    f"unknown parameter {shown} (parameter names are lower case: {name.lower()!r})"
                )
            else:
                why = f"unknown parameter {shown}; {docs}"
            raise ConfigError(f"bad Redis URL {mask_url(url)!r}: {why}")
        parser = parsers.get(name)
        if parser is None or name == "retry_on_error":
            continue
        try:
            parser(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"bad value for {name!r} in Redis URL {mask_url(url)!r}: {docs}"
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
        # Typed only in newer redis-py releases: called as Any so both pass strict mypy.
        make: Any = Sentinel
        sentinel = make(_nodes(url), sentinel_kwargs=_auth(url), **_auth(url))
        return cast(aioredis.Redis, sentinel.master_for(service, redis_class=aioredis.Redis))
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, health_check_interval=30
    )
    return aioredis.Redis(connection_pool=pool)
