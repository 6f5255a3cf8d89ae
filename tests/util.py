"""Waiting on conditions with timeouts (never sleep-and-hope)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from streammachine import App


async def eventually(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll `cond` (sync or async) until it returns a truthy value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or cond}")
        await anyio.sleep(0.01)


def wait_sync(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """The same for sync code (subprocess tests)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or cond}")
        time.sleep(0.02)


class Lines:
    """Collects a subprocess stream's lines in a thread, so tests can wait for one."""

    def __init__(self, stream: Any) -> None:
        import threading

        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_for(self, text: str, timeout_s: float = 10.0) -> None:
        wait_sync(lambda: self.has(text), timeout_s, what=f"{text!r} in output:\n{self.text}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


def start_or_skip(server: Any) -> Any:
    """Start a throwaway server from `streammachine.testing`; without a redis-server binary skip
    the test, or fail it under STREAMMACHINE_REQUIRE_REDIS=1."""
    import os

    import pytest

    from streammachine.exceptions import NotAvailableError

    try:
        return server.start()
    except NotAvailableError as exc:
        if os.environ.get("STREAMMACHINE_REQUIRE_REDIS") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def in_ci() -> bool:
    """CI (`.ci/run` sets STREAMMACHINE_REQUIRE_REDIS=1) installs every tool the suite uses."""
    import os

    return os.environ.get("STREAMMACHINE_REQUIRE_REDIS") == "1"


def missing(reason: str) -> None:
    """Skip for want of a tool (Chromium, npx, playwright); under CI, which installs them, fail."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI installs it: a skip here would hide the test)")
    pytest.skip(reason)


def need_module(name: str, reason: str) -> Any:
    """`pytest.importorskip`, failing under CI instead of skipping."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(reason)
        raise


@asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    """`app` running in this event loop until the block ends (then shut down)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(app.run)
        app.started = app.started or anyio.Event()
        await eventually(lambda: app.started is not None and app.started.is_set(), what="start")
        try:
            yield app
        finally:
            await app.shutdown()
