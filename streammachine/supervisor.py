"""Running an app: in this process, or as a supervisor of worker processes.

One worker runs in the runner's own process (PID-1 and systemd friendly).
"""

from __future__ import annotations

import logging
import os
import socket

import anyio

from .importer import import_app

__all__ = ["notify_systemd", "run_app"]

log = logging.getLogger("streammachine.supervisor")


def notify_systemd(state: str) -> bool:
    """Send `state` (e.g. ``READY=1``) to systemd's NOTIFY_SOCKET when it is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


async def _serve(target: str) -> int:
    app = import_app(target)
    started = app.started = anyio.Event()

    async def announce() -> None:
        await started.wait()
        notify_systemd("READY=1")

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        try:
            code = await app.run(install_signal_handlers=True)
        finally:
            notify_systemd("STOPPING=1")
            tg.cancel_scope.cancel()
    return code


def run_app(
    target: str, *, workers: int = 1, reload: bool = False, reload_dirs: list[str] | None = None
) -> int:
    """Run the app named by `target` until it is stopped; returns the exit status."""
    return anyio.run(
        _serve, target, backend="asyncio", backend_options={"use_uvloop": os.name != "nt"}
    )
