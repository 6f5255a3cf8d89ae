"""Periodic tasks: a fixed interval on the loop clock, no drift, never overlapping itself."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..settings import TimerConfig

__all__ = ["Timer"]

log = logging.getLogger("streammachine.schedule.timer")


class Timer:
    """A registered `@app.timer(interval)` task.

    Ticks fall on `start + k * interval`; a run that takes longer than the interval skips the
    ticks it missed instead of running twice in a row, and an error is logged and the timer goes on.
    """

    def __init__(self, fn: Callable[[], Awaitable[Any]], config: TimerConfig) -> None:
        self.fn = fn
        self.config = config
        self.name = config.name or getattr(fn, "__name__", "timer")
        self.runs = 0
        self.failures = 0
        self.running = False
        self.next_run: float | None = None

    def __repr__(self) -> str:
        return f"Timer({self.name!r}, every {self.config.interval:g} s)"

    async def run_once(self) -> None:
        """Run the task once now; an error is logged, not raised."""
        self.running = True
        try:
            await self.fn()
            self.runs += 1
        except Exception:
            self.failures += 1
            log.exception("timer %s failed; it runs again at its next tick", self.name)
        finally:
            self.running = False

    async def run(self, stop: anyio.Event) -> None:
        """Tick until `stop` is set; a run in progress finishes first."""
        interval = float(self.config.interval)
        start = anyio.current_time()
        k = 1
        while not stop.is_set():
            self.next_run = start + k * interval
            with anyio.move_on_after(max(0.0, self.next_run - anyio.current_time())):
                await stop.wait()
            if stop.is_set():
                break
            await self.run_once()
            # The next tick after now: late runs skip missed ticks rather than pile up.
            k = max(k + 1, math.floor((anyio.current_time() - start) / interval) + 1)
