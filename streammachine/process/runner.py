"""The runner's side of one process: readiness (sd_notify), the watch on the parent process, the
dashboard beside the app, and the event loop (uvloop where available).

`App.start` (the one lazy call from the library into process/), `streammachine run` and every
worker process run an app through `serve` on `run_loop`.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..exceptions import StreamMachineError
from ..settings import Settings

if TYPE_CHECKING:
    from ..app import App

__all__ = ["error_line", "notify_systemd", "run_loop", "serve"]

log = logging.getLogger("streammachine.worker")
T = TypeVar("T")


def notify_systemd(state: str) -> bool:
    """Send `state` (e.g. ``READY=1``) to the notify socket of the settings (systemd's
    NOTIFY_SOCKET, or the supervisor's for a worker) when there is one.

    Example:
        >>> notify_systemd("READY=1")  # doctest: +SKIP
        True
    """
    where = path = Settings.current().notify_socket
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", where, exc)
        return False
    return True


def error_line(exc: BaseException) -> str:
    """One line for an exception raised by user code: what, and where (file:line)."""
    if isinstance(exc, SyntaxError):
        return f"syntax error in {exc.filename}:{exc.lineno}: {exc.msg}"
    if isinstance(exc, StreamMachineError):
        return str(exc)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


async def serve(
    app: App,
    *,
    agents: Sequence[str] | None = None,
    timers: bool = True,
    ready: str = "READY=1",
    parent_pid: int | None = None,
    dashboard: bool | None = None,
) -> int:
    started = app.started = anyio.Event()

    async def announce() -> None:
        await started.wait()
        notify_systemd(ready)

    if parent_pid is not None:

        async def watch_parent(stop: anyio.Event) -> None:
            while not stop.is_set():
                with anyio.move_on_after(1.0):
                    await stop.wait()
                if os.getppid() != parent_pid and not stop.is_set():
                    log.warning("the runner (pid %d) is gone: stopping", parent_pid)
                    app.request_stop()

        app.background.append(watch_parent)

    if app.dashboard_enabled if dashboard is None else dashboard:
        from ..dashboard.server import serve_dashboard

        # The runner serves the dashboard beside the app, until the app stops.
        app.background.append(
            functools.partial(
                serve_dashboard,
                app.redis.url,
                app.dashboard_host,
                app.dashboard_port,
                app=app,  # so it serves this app's /asyncapi.json
            )
        )

    code, error = 1, None
    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        try:
            code = await app.run(install_signal_handlers=True, agents=agents, timers=timers)
        except Exception as exc:
            error = exc  # raised below, not wrapped in the task group's ExceptionGroup
        finally:
            notify_systemd("STOPPING=1")
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return code


def run_loop(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run `fn(*args)` on a new asyncio event loop, uvloop where available (the one place that
    picks the loop: `App.start`, `streammachine run` and the CLI commands use it).

    Example:
        >>> run_loop(anyio.sleep, 0)
    """
    result: T = anyio.run(
        fn, *args, backend="asyncio", backend_options={"use_uvloop": os.name != "nt"}
    )
    return result
