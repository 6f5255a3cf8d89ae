"""Running an App: start/run until stopped, supervision of its tasks, the shutdown deadline,
signals, and closing its resources.

`Lifecycle` is a part of `App` (a mixin); it reads the App's attributes declared below.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Collection, Coroutine
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio

from .consume.upkeep import TICK_S, agent_tick
from .exceptions import REDIS_FAILURES
from .schedule.lease import run_leased_timers
from .ticker import Ticker
from .tracing import get_tracing

if TYPE_CHECKING:
    from .connection import RedisConnection
    from .consume.agent import Agent
    from .schedule.cron import Cron
    from .schedule.delayed import Scheduler
    from .schedule.timer import Timer
    from .settings import AppConfig, Settings
    from .tracing import Tracing

__all__ = ["Lifecycle"]

log = logging.getLogger("streammachine.app")

_inside_app: ContextVar[bool] = ContextVar("streammachine_inside_app", default=False)


class Lifecycle:
    """`App.start`, `App.run`, `App.shutdown` and what they need."""

    name: str
    config: AppConfig
    settings: Settings
    agents: list[Agent]
    timers: list[Timer]
    crons: list[Cron]
    startup_hooks: list[Callable[[], Awaitable[Any]]]
    shutdown_hooks: list[Callable[[], Awaitable[Any]]]
    background: list[Callable[[anyio.Event], Coroutine[Any, Any, None]]]
    tracing: Tracing | None
    active_agents: list[Agent] | None
    active_timers: list[Timer] | None
    started: anyio.Event | None
    _redis: RedisConnection | None
    _process_pool: ProcessPoolExecutor | None
    _thread_pool: ThreadPoolExecutor | None
    _stop: anyio.Event | None
    _stopped: anyio.Event | None
    _forced: bool
    _exit_code: int
    _tasks: int

    if TYPE_CHECKING:

        @property
        def redis(self) -> RedisConnection: ...

        @property
        def scheduler(self) -> Scheduler: ...

    def start(self) -> None:
        """Run the app until SIGINT/SIGTERM (blocking, on uvloop where available).

        Example:
            >>> if __name__ == "__main__":  # doctest: +SKIP
            ...     app.start()
        """
        # The runner's side does what `streammachine run` does in one process: signals, readiness
        # and the dashboard when enabled.
        from .process.runner import run_loop, serve

        run_loop(serve, self)

    async def run(
        self,
        *,
        install_signal_handlers: bool = False,
        agents: Collection[str] | None = None,
        timers: bool = True,
    ) -> int:
        """Run in the current event loop until `shutdown()` (or a signal, when handled).

        Args:
            install_signal_handlers: stop on SIGINT/SIGTERM (a second one forces).
            agents: run only the agents with these names (the supervisor's workers use it).
            timers: run the timers and crons ("app"-scoped ones run in the process holding
                the app's timer lease, "instance"-scoped ones here).

        The dashboard (`dashboard_enabled`) is served by the runner (`start()`, `streammachine
        run`), once per run, not by this method.

        Returns 0 after a clean stop and 1 when a second signal forced it.
        """
        chosen = [a for a in self.agents if agents is None or a.name in agents]
        self.tracing = get_tracing()
        chosen_timers = self.timers if timers else []
        chosen_crons = self.crons if timers else []
        self.active_agents, self.active_timers = chosen, chosen_timers
        extras = list(self.background)
        # Every running app moves the due delayed entries of its namespace.
        extras.append(self.scheduler.run_mover)
        # One loop for the process's periodic jobs (`ticker`).
        ticker = Ticker()
        switches = agent_tick(self.redis, self.name, chosen)
        if chosen:
            ticker.every(TICK_S, "agent switches", switches)
        extras.append(ticker.run)
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self.started = self.started or anyio.Event()
        self._forced = False
        self._exit_code = 0
        token = _inside_app.set(True)
        if install_signal_handlers:
            self._install_signal_handlers()
        try:
            # A Redis that is still loading (or restarting) is waited for, not a failed start.
            await self.redis.connect(wait_s=self.settings.redis_wait_s, stop=self._stop)
            if self._stop.is_set():
                log.info("%s stopped before Redis was ready", self.name)
                return self._exit_code or (1 if self._forced else 0)
            for hook in self.startup_hooks:
                await hook()
            for agent in chosen:
                await agent.prepare()
            if chosen:
                # A worker started while an agent is paused reads nothing of it.
                with contextlib.suppress(*REDIS_FAILURES):
                    await switches()
            async with anyio.create_task_group() as tg:
                for agent in chosen:
                    tg.start_soon(self._supervised, agent.run, self._stop)
                # One process of the app (the lease holder) runs the "app" timers.
                leased = [t for t in chosen_timers if t.config.scope == "app"]
                if leased:
                    tg.start_soon(
                        self._supervised,
                        functools.partial(run_leased_timers, self.redis, self.name, leased),
                        self._stop,
                    )
                for t in chosen_timers:
                    if t.config.scope == "instance":
                        tg.start_soon(self._supervised, t.run, self._stop)
                for c in chosen_crons:
                    claim = self.redis if c.scope == "app" else None
                    tg.start_soon(
                        self._supervised,
                        functools.partial(c.run, redis=claim, app_name=self.name),
                        self._stop,
                    )
                for extra in extras:
                    tg.start_soon(extra, self._stop)
                tg.start_soon(self._deadline, tg.cancel_scope)
                self.started.set()
                log.info(
                    "%s running: %d agents, %d timers on %s",
                    self.name, len(chosen), len(chosen_timers), self.redis,
                )  # fmt: skip
            for hook in self.shutdown_hooks:
                try:
                    await hook()
                except Exception:
                    log.exception("on_shutdown hook %s failed", getattr(hook, "__name__", hook))
        finally:
            _inside_app.reset(token)
            if install_signal_handlers:
                self._remove_signal_handlers()
            with anyio.CancelScope(shield=True):
                await self.aclose()
            self._stopped.set()
        return self._exit_code or (1 if self._forced else 0)

    async def _supervised(
        self, fn: Callable[[anyio.Event], Awaitable[None]], stop: anyio.Event
    ) -> None:
        self._tasks += 1
        try:
            await fn(stop)
        finally:
            self._tasks -= 1

    async def _deadline(self, scope: anyio.CancelScope) -> None:
        """After a stop request, give in-flight work `shutdown_timeout_s`, then cancel it."""
        assert self._stop is not None
        await self._stop.wait()
        with anyio.move_on_after(self.config.shutdown_timeout_s):
            while self._tasks and not self._forced:
                await anyio.sleep(0.05)
        if self._tasks:
            log.warning("shutdown: cancelling work still running; its entries stay pending")
            scope.cancel()

    def fail(self, reason: str, code: int = 1) -> None:
        """Stop at once with exit status `code` (e.g. Redis down for too long)."""
        log.error("stopping: %s", reason)
        self._exit_code = code
        self.request_stop(force=True)

    def request_stop(self, force: bool = False) -> None:
        """Ask a running app to stop (thread-unsafe; from the app's loop)."""
        if force:
            self._forced = True
        if self._stop is not None:
            self._stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                log.debug("cannot handle %s here", sig)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self._stop is not None and self._stop.is_set():
            log.warning("second %s: forcing shutdown", signal.Signals(sig).name)
            self.request_stop(force=True)
            return
        log.info("%s: draining (send it again to force)", signal.Signals(sig).name)
        self.request_stop()

    async def shutdown(self) -> None:
        """Stop gracefully: stop reading, let in-flight handlers finish and commit, run the
        `on_shutdown` hooks and close the pools. From inside the app it only requests the stop.
        """
        if self._stop is None:
            await self.aclose()
            return
        self._stop.set()
        if not _inside_app.get() and self._stopped is not None:
            await self._stopped.wait()

    async def aclose(self) -> None:
        """Close pools and connections."""
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=False, cancel_futures=True)
            self._process_pool = None
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
            self._thread_pool = None
        if self._redis is not None:
            await self._redis.close()
