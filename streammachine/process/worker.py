"""A worker process of `streammachine run`: what it runs, and how it runs it.

The supervisor starts workers as `python -m streammachine.process.worker --worker LABEL TARGET ...`; each
imports the app from its reference (spawned, never forked from a loaded app), runs the agents it
was given and the timers (the "app"-scoped ones run only in the process holding the app's timer
lease in Redis, whichever worker or host that is), reports readiness with the sd_notify protocol and
stops when its runner is gone. `--describe PATH` only imports the app and writes its `Layout`,
which is how the supervisor learns an app's agents without importing user code itself.

Each gets its configuration from the runner explicitly: `--config PATH`, a `ChildConfig` (the
settings, and how to set up logging) in the runner's private folder — not environment variables.
How one process runs an app (readiness, the parent watch, the loop) is `runner`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from ..exceptions import RedisUnavailableError, StreamMachineError, not_ready
from ..settings import Settings
from .runner import error_line, run_loop, serve

if TYPE_CHECKING:
    from ..app import App

__all__ = [
    "ChildConfig",
    "Layout",
    "Spec",
    "main",
]

log = logging.getLogger("streammachine.process.worker")
T = TypeVar("T")

#: Exit status of a worker that could not import its app (restarting it will not help).
IMPORT_FAILED = 3
#: Exit status of a worker that gave up waiting for a Redis that was not ready (loading its
#: dataset, restarting): EX_TEMPFAIL. The supervisor never counts it as a failed start.
REDIS_NOT_READY = 75


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
        from ..urls import mask_url

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


def main(argv: list[str]) -> int:
    """A child of the supervisor: run (part of) the app, or `--describe` its layout."""
    parser = argparse.ArgumentParser(
        prog="python -m streammachine.process.worker",
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
        waited = isinstance(inner, RedisUnavailableError) and not_ready(inner.__cause__)
        return REDIS_NOT_READY if waited and not started else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
