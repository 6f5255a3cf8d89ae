"""Tools for testing StreamMachine apps: throwaway real servers (any Redis version, a cluster, a
sentinel), a TCP proxy that cuts and stalls connections, and `TestApp`, which runs an App inside a
test's event loop until everything sent has been handled.

Example:
    >>> async def test_pipeline() -> None:  # doctest: +SKIP
    ...     async with TestApp(app) as t:                # memory:// by default
    ...         await t.send("stage1", {"value": 10})
    ...         await t.run_until_idle()
    ...         assert [m.message for m in await t.stream("stage2")] == [{"value": "20"}]
"""

from .proxy import TcpProxy
from .servers import (
    SERVER_ENV,
    RedisClusterServer,
    RedisSentinelServer,
    RedisServer,
    find_redis_server,
    free_port,
    server_binaries,
)
from .testapp import TestApp

__all__ = [
    "SERVER_ENV",
    "RedisClusterServer",
    "RedisSentinelServer",
    "RedisServer",
    "TcpProxy",
    "TestApp",
    "find_redis_server",
    "free_port",
    "server_binaries",
]
