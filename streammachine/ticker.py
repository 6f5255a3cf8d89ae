"""One tick per process: the periodic jobs of a running app — its heartbeat, the delayed-send
mover, the agents' pause switches and handler timeouts — run by one loop that wakes only when a
job is due (an idle worker wakes a few times a second, not once per concern), each job bounded in
time, its failures logged once per outage and never fatal.

Example:
    >>> ticker = Ticker()
    >>> ticker.every(2.0, "heartbeat", beat)  # doctest: +SKIP
    >>> await ticker.run(stop)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

__all__ = ["Job", "Ticker"]

log = logging.getLogger("streammachine.app")

#: A job: does its work once; returns when it wants to run next (seconds from now), or None for
#: its regular interval.
JobFn = Callable[[], Awaitable[float | None]]


@dataclass(eq=False)
class Job:
    """One periodic job of the tick."""

    name: str
    every_s: float
    fn: JobFn
    #: when it runs next (loop clock)
    due: float = 0.0
    failing: bool = False
    on_stop: Callable[[], Awaitable[None]] | None = None

    async def run(self) -> float:
        """Run once (bounded by its interval, at least a second); the delay until the next run."""
        try:
            with anyio.fail_after(max(1.0, self.every_s)):
                hint = await self.fn()
            if self.failing:
                log.info("%s: works again", self.name)
            self.failing = False
        except Exception as exc:  # a job must never take the app down
            if not self.failing:
                log.warning(
                    "%s failed (%s: %s); retrying every %g s",
                    self.name, type(exc).__name__, exc, max(1.0, self.every_s),
                )  # fmt: skip
            self.failing = True
            return max(1.0, self.every_s)
        return self.every_s if hint is None else max(0.0, min(hint, self.every_s))


class Ticker:
    """The periodic jobs of one process, run by one loop."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def every(
        self,
        seconds: float,
        name: str,
        fn: JobFn,
        *,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> Job:
        """Run `fn` every `seconds` (or when it asks, sooner); `on_stop` runs once at the end."""
        job = Job(name, seconds, fn, on_stop=on_stop)
        self.jobs.append(job)
        return job

    async def run(self, stop: anyio.Event) -> None:
        """Run the jobs until `stop`, then their `on_stop` (bounded, shielded)."""
        try:
            while self.jobs and not stop.is_set():
                now = anyio.current_time()
                for job in self.jobs:
                    if job.due <= now and not stop.is_set():
                        job.due = anyio.current_time() + await job.run()
                wait = min(job.due for job in self.jobs) - anyio.current_time()
                if wait > 0:
                    with anyio.move_on_after(wait):
                        await stop.wait()
        finally:
            with anyio.move_on_after(2.0, shield=True):
                for job in self.jobs:
                    if job.on_stop is not None:
                        try:
                            await job.on_stop()
                        except Exception as exc:
                            log.debug("%s: stopping failed (%s)", job.name, exc)
