"""Tools for testing StreamMachine apps: throwaway real servers (any Redis version, a cluster, a
sentinel), a TCP proxy that cuts and stalls connections and drops a chosen reply, failpoints
(`failpoints_env`: kill or stall a process at a dangerous window), and `TestApp`, which runs an App inside a
test's event loop until everything sent has been handled.

Example:
    >>> async def test_pipeline() -> None:  # doctest: +SKIP
    ...     async with TestApp(app) as t:                # memory:// by default
    ...         await t.send("stage1", {"value": 10})
    ...         await t.run_until_idle()
    ...         assert [m.message for m in await t.stream("stage2")] == [{"value": "20"}]
"""

from ..failpoints import DIR_ENV as FAILPOINT_DIR_ENV
from ..failpoints import ENV as FAILPOINTS_ENV
from .binaries import CACHE_ENV, redis_cache_dir, server_binaries, server_version
from .proxy import TcpProxy
from .servers import (
    SERVER_ENV,
    RedisClusterServer,
    RedisSentinelServer,
    RedisServer,
    find_redis_server,
    free_port,
)
from .testapp import TestApp


def failpoints_env(points: dict[str, str], proof_dir: str) -> dict[str, str]:
    """The environment that arms failpoints in the processes a test starts: `points` maps a
    hook (`commit.applied`, `claim.taken`, `mover.claimed`) to `kill@N` or `stall:MS@N`; each
    fires once across the processes, leaving `<proof_dir>/<hook>` with the pid that fired it.

    Example:
        >>> env = {**os.environ, **failpoints_env({"commit.applied": "kill@3"}, str(tmp))}  # doctest: +SKIP
    """
    spec = ",".join(f"{name}={action}" for name, action in points.items())
    return {FAILPOINTS_ENV: spec, FAILPOINT_DIR_ENV: proof_dir}


__all__ = [
    "CACHE_ENV",
    "FAILPOINTS_ENV",
    "FAILPOINT_DIR_ENV",
    "SERVER_ENV",
    "RedisClusterServer",
    "RedisSentinelServer",
    "RedisServer",
    "TcpProxy",
    "TestApp",
    "failpoints_env",
    "find_redis_server",
    "free_port",
    "redis_cache_dir",
    "server_binaries",
    "server_version",
]
