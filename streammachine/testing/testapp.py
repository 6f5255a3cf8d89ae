"""`TestApp`: runs an App inside a test's event loop until everything sent has been handled."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ..app import App
    from ..message import Message
    from ..sending import Record
    from ..state.storage import Storage

__all__ = ["TestApp"]


class TestApp:
    """Runs an App in the current event loop, without signals or processes, for tests.

    Args:
        app: the App under test.
        url: the Redis URL (default `memory://`, the in-process server; pass a real server's URL
            to run the same test body against Redis).

    Example:
        >>> async with TestApp(app, url=redis_url) as t:  # doctest: +SKIP
        ...     await t.send("orders", {"id": 1})
        ...     await t.run_until_idle(timeout_s=5)
        ...     assert await t.dead_letters("orders") == []
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, url: str = "memory://") -> None:
        self.app = app
        self.url = url
        self._tg: Any = None
        self._result: list[int] = []

    async def __aenter__(self) -> TestApp:
        app = self.app
        if app._redis is not None:
            await app._redis.close()
        app._redis_url, app._redis, app._storage = self.url, None, None
        if self.url.startswith("memory://"):
            await app.redis.client.flushall()
        app.started = anyio.Event()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run)
        with anyio.fail_after(10):
            while not app.started.is_set():
                if self._result:
                    raise RuntimeError("the app stopped while starting; see its log")
                await anyio.sleep(0.005)
        return self

    async def _run(self) -> None:
        # Timers run only through tick() so tests are deterministic.
        self._result.append(await self.app.run(timers=False))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.app.request_stop()
        await self._tg.__aexit__(exc_type, exc, tb)

    async def send(self, stream: str, record: Record) -> str:
        """Append a record to `stream` now; returns its id."""
        entry_id = await self.app.send(stream, record, now=True)
        assert entry_id is not None
        return entry_id

    async def tick(self, timer_name: str) -> None:
        """Run the timer named `timer_name` once, now."""
        for t in self.app.timers:
            if t.name == timer_name:
                await t.run_once()
                return
        names = ", ".join(t.name for t in self.app.timers) or "none"
        raise KeyError(f"no timer named {timer_name!r} (timers: {names})")

    async def _idle(self) -> bool:
        client = self.app.redis.client
        for agent in self.app.agents:
            if agent.running:
                return False
            for stream in agent.streams:
                if not await client.exists(stream):
                    continue
                last = (await client.xinfo_stream(stream))["last-generated-id"]
                for group in await client.xinfo_groups(stream):
                    if group["name"].decode() != agent.config.group:
                        continue
                    if group["pending"] or group["last-delivered-id"] != last:
                        return False
        return True

    async def run_until_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until every agent has handled and committed everything sent so far (retries and
        dead-lettering included). Timers do not run by themselves here: use `tick`.

        Raises:
            TimeoutError: still busy after `timeout_s`.
        """
        deadline = anyio.current_time() + timeout_s
        quiet = 0
        while quiet < 3:  # idle three polls in a row: handler output may feed another agent
            quiet = quiet + 1 if await self._idle() else 0
            if anyio.current_time() > deadline:
                raise TimeoutError(f"the app was still busy after {timeout_s} s")
            await anyio.sleep(0.01)

    async def stream(self, name: str) -> list[Message]:
        """Every entry of stream `name`, decoded."""
        from ..message import messages_from_reply

        entries = await self.app.redis.client.xrange(name)
        return messages_from_reply([(name, entries)], None)

    async def dead_letters(self, stream: str) -> list[Message]:
        """The dead letters of `stream` (its `<stream>:dead` stream)."""
        return await self.stream(stream if stream.endswith(":dead") else f"{stream}:dead")

    @property
    def storage(self) -> Storage:
        """The app's shared Storage."""
        return self.app.storage
