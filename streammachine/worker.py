"""A worker process of `streammachine run`: what it runs, and how it runs it.

The supervisor starts workers as `python -m streammachine.worker --worker LABEL TARGET ...`; each
imports the app from its reference (spawned, never forked from a loaded app), runs the agents it
was given and the timers (the "app"-scoped ones run only in the process holding the app's timer
lease in Redis, whichever worker or host that is), reports readiness with the sd_notify protocol and
stops when its runner is gone. `--describe PATH` only imports the app and writes its `Layout`,
which is how the supervisor learns an app's agents without importing user code itself.

Each gets its configuration from the runner explicitly: `--config PATH`, a `ChildConfig` (the
settings, and how to set up logging) in the runner's private folder — not environment variables.
`serve` is the runner's side of one process (readiness, the parent watch, the dashboard); `App.start`
uses it too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from .exceptions import StreamMachineError
from .settings import Settings

if TYPE_CHECKING:
    from .app import App

__all__ = [
    "ChildConfig",
    "Layout",
    "Spec",
    "error_line",
    "main",
    "notify_systemd",
    "run_loop",
    "serve",
]

log = logging.getLogger("streammachine.worker")
T = TypeVar("T")

#: Exit status of a worker that could not import its app (restarting it will not help).
IMPORT_FAILED = 3


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


class AgentInfo(msgspec.Struct, frozen=True):
    """One agent as the supervisor sees it."""

    name: str
    stream: str
    group: str
    processes: int


class Layout(msgspec.Struct, frozen=True):
    """What the supervisor needs to know of an app to place its work in processes.

    Example:
        >>> Layout("orders", [AgentInfo("bill", "orders", "billing", 0)], ["beat"], 30.0,
        ...        "redis://localhost:6379/0").specs(2)[1].timers
        True
    """

    name: str
    agents: list[AgentInfo]
    timers: list[str]
    shutdown_timeout_s: float
    redis: str
    #: (url, host, port) of the dashboard the supervisor serves, when the app enables it.
    dashboard: tuple[str, str, int] | None = None

    @classmethod
    def of(cls, app: App) -> Layout:
        """The layout of a loaded app (the Redis URL masked)."""
        from .connection import mask_url

        agents = [
            AgentInfo(a.name, a.config.stream, a.config.group, a.config.processes or 0)
            for a in app.agents
        ]
        return cls(
            app.name,
            agents,
            [t.name for t in app.timers] + [c.name for c in app.crons],
            app.config.shutdown_timeout_s,
            mask_url(app.redis.url),
            (app.redis.url, app.dashboard_host, app.dashboard_port)
            if app.dashboard_enabled
            else None,
        )

    def specs(self, workers: int) -> list[Spec]:
        """The worker processes for `workers` regular workers plus the dedicated agents."""
        plain = tuple(a.name for a in self.agents if not a.processes)
        dedicated = [a for a in self.agents if a.processes]
        # Every worker runs the timers: a lease in Redis picks the one process of the app (across
        # workers and hosts) that runs the "app"-scoped ones; "instance"-scoped ones run in each.
        specs = [
            Spec(f"worker-{i}", plain, timers=True)
            for i in range(workers)
            if plain or (i == 0 and (self.timers or not dedicated))
        ]
        for a in dedicated:
            specs += [Spec(f"{a.name}-{j}", (a.name,), timers=True) for j in range(a.processes)]
        return specs

    def banner(self, where: str) -> str:
        """The startup log line: app, agents, timers, workers and (masked) Redis URL."""
        agents = ", ".join(
            f"{a.name} ({a.stream}/{a.group}"
            + (f", {a.processes} processes)" if a.processes else ")")
            for a in self.agents
        )
        timers = ", ".join(self.timers)
        return (
            f"starting {self.name}: agents {agents or '-'}; timers {timers or '-'}; "
            f"{where}; Redis {self.redis}"
        )

    def problem(self, processes: int) -> str | None:
        """Why this layout cannot run in `processes` processes, if it cannot."""
        if processes > 1 and self.redis.startswith("memory://"):
            return (
                "memory:// is a separate in-process Redis in each process: --workers and "
                "processes= need a real Redis server (set REDIS_URL or --redis-url)"
            )
        return None


@dataclass(frozen=True, slots=True)
class Spec:
    """One worker process: its label, the agents it runs (None = all) and whether it runs timers."""

    label: str
    agents: tuple[str, ...] | None
    timers: bool


class ChildConfig(msgspec.Struct, frozen=True):
    """What the runner hands each worker process (as uvicorn hands its Config to a child),
    written to a file in the runner's private folder: nothing travels in environment variables.

    `log_setup` is a `module:function` reference called with `log_args` before anything else
    (the CLI's logging setup: the library itself never configures logging).
    """

    settings: Settings
    log_setup: str | None = None
    log_args: list[str] = []

    def apply(self) -> None:
        """In the child: set up logging as the runner asked, then install the settings."""
        if self.log_setup:
            import importlib

            module, _, attr = self.log_setup.partition(":")
            getattr(importlib.import_module(module), attr)(*self.log_args)
        self.settings.install()


class _Probe(msgspec.Struct):
    layout: Layout | None = None
    error: str | None = None


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
        import functools

        from .dashboard.server import serve_dashboard

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


def main(argv: list[str]) -> int:
    """A child of the supervisor: run (part of) the app, or `--describe` its layout."""
    parser = argparse.ArgumentParser(
        prog="python -m streammachine.worker",
        description="A worker process of `streammachine run` (internal).",
    )
    parser.add_argument("target")
    parser.add_argument("--worker", default="worker")
    parser.add_argument("--describe", metavar="PATH")
    parser.add_argument("--agents", help="JSON list of the agent names to run")
    parser.add_argument("--no-timers", action="store_true")
    parser.add_argument("--parent", type=int)
    parser.add_argument("--config", metavar="PATH", help="the runner's ChildConfig (JSON)")
    args = parser.parse_args(argv)
    from .importer import import_app

    try:
        if args.config:
            config = msgspec.json.decode(Path(args.config).read_bytes(), type=ChildConfig)
        else:
            config = ChildConfig(Settings.from_env())
        config.apply()
        app = import_app(args.target)
        layout = Layout.of(app)
    except Exception as exc:
        message = error_line(exc)
        if not isinstance(exc, StreamMachineError):
            message = f"cannot import {args.target}: {message}"
        if args.describe:
            Path(args.describe).write_bytes(msgspec.json.encode(_Probe(error=message)))
        else:
            log.error("%s could not start: %s", args.worker, message)
        return IMPORT_FAILED
    if args.describe:
        Path(args.describe).write_bytes(msgspec.json.encode(_Probe(layout=layout)))
        return 0
    agents = None if args.agents is None else list(json.loads(args.agents))
    ready = f"READY=1\nWORKER_PID={os.getpid()}"
    try:
        return run_loop(
            lambda: serve(
                app,
                agents=agents,
                timers=not args.no_timers,
                ready=ready,
                parent_pid=args.parent,
                dashboard=False,  # the supervisor serves it, once per run
            )
        )
    except Exception as exc:
        inner: BaseException = exc
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        started = app.started is not None and app.started.is_set()
        what = "stopped" if started else "could not start"
        trace = None if isinstance(inner, StreamMachineError) else inner
        log.error("%s %s: %s", args.worker, what, error_line(inner), exc_info=trace)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
