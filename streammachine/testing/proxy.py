"""`TcpProxy`: a loopback TCP proxy in front of a server, to cut and stall connections in tests.

It runs its own event loop in a thread, so it keeps forwarding while the test's loop is busy or
blocked in a subprocess wait, and works for apps in other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from .servers import _Throwaway

__all__ = ["TcpProxy"]


class TcpProxy(_Throwaway):
    """Forwards `127.0.0.1:<port>` to `target_host:target_port`.

    `cut()` aborts every connection through it (both sides see a reset, as when a network or a
    load balancer drops them); `stall()` stops forwarding while keeping connections open (a hung
    network: bytes wait, nothing fails) until `resume()`.

    Example:
        >>> with RedisServer() as server, TcpProxy(server.port) as proxy:  # doctest: +SKIP
        ...     app = App(redis_url=proxy.url)
        ...     proxy.cut()
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None
        #: Connections accepted so far.
        self.connections = 0
        self._pattern = b""
        self._nth = 0
        #: Client writes seen containing the `drop_reply` pattern, and replies dropped.
        self.seen = 0
        self.dropped = 0

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`, the proxy's address as a Redis URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        """Listen (on a free port unless one was given) and forward in a background thread."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            assert self._loop is not None
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="TcpProxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        drop = asyncio.Event()  # the next reply on this connection is dropped, and it is cut
        await asyncio.gather(
            self._pump(reader, up_writer, drop, up=True),
            self._pump(up_reader, writer, drop, up=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        drop: asyncio.Event,
        *,
        up: bool,
    ) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if not up and drop.is_set():
                    self.dropped += 1  # the server applied it; the client never hears
                    break
                writer.write(data)
                await writer.drain()
                if up and self._pattern and self._pattern in data:
                    self.seen += 1
                    if self.seen == self._nth:
                        drop.set()
        finally:
            writer.transport.abort()

    def _call(self, fn: object) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn()  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def cut(self) -> None:
        """Abort every open connection now (new ones are accepted)."""

        def abort() -> None:
            for w in list(self._writers):
                w.transport.abort()

        self._call(abort)

    def drop_reply(self, pattern: bytes, nth: int = 1) -> None:
        """For the `nth` client write (across connections) containing `pattern`: forward it to
        the server, then cut that connection instead of returning the reply — a command applied
        whose reply is lost. `dropped` counts the replies dropped (the proof it happened).

        Example:
            >>> proxy.drop_reply(commit_sha.encode(), nth=3)  # doctest: +SKIP
        """

        def arm() -> None:
            self._pattern, self._nth, self.seen = pattern, nth, 0

        self._call(arm)

    def stall(self) -> None:
        """Stop forwarding bytes in both directions; connections stay open."""
        self._call(lambda: self._flowing.clear() if self._flowing else None)

    def resume(self) -> None:
        """Forward again what waited and what comes."""
        self._call(lambda: self._flowing.set() if self._flowing else None)

    def close(self) -> None:
        """Stop listening, drop every connection and end the thread."""
        if self._loop is None:
            return
        loop = self._loop

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            if self._flowing is not None:
                self._flowing.set()
            for w in list(self._writers):
                w.transport.abort()
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(stop)
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            loop.close()
        self._loop = None
