"""Cron: tasks fired at wall-clock times, each fire time once across the app (claimed in Redis)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from .. import keys
from ..codec import as_text
from ..exceptions import ConfigError

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["CRON_CATCH_UP_S", "Cron"]

log = logging.getLogger("streammachine.schedule")


# --- cron ----------------------------------------------------------------------------------------

# Claim fire time ARGV[1] (epoch ms): only when it is newer than every fire time claimed so far,
# so each is run once across the app; a catch-up claim (ARGV[2] = 1) also needs an earlier one.
# A stored value that is not a time, or is more than an hour ahead of Redis' clock (no claim can
# be), is replaced. Returns {1 when claimed, the bad value found or ''}.
CLAIM_FIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.pcall('GET', KEYS[1])
local last, bad = nil, ''
if type(raw) == 'string' then
  last = tonumber(raw)
  if not last or last ~= last or last > now + 3600000 then last, bad = nil, raw end
elseif type(raw) == 'table' then
  bad = '(a key of another type)'
  redis.call('DEL', KEYS[1])
end
bad = string.sub(bad, 1, 60)
if ARGV[2] == '1' and not last and bad == '' then return {0, bad} end
if last and last >= tonumber(ARGV[1]) then return {0, bad} end
redis.call('SET', KEYS[1], ARGV[1])
return {1, bad}
"""

#: A fire time missed by at most this long (e.g. during a failover) is fired late, once.
CRON_CATCH_UP_S = 60.0


class Cron:
    """A registered `@app.cron(expr)` task: fired at wall-clock times, once per fire time across
    the app (`scope="app"`), or in every process (`scope="instance"`).

    Catch-up rule: a process that starts (or wakes) finds the newest past fire time; if nobody
    claimed it, the cron has fired before on that Redis, and it is at most `catch_up_s` old,
    it is fired late, once. Older missed fire times are skipped, never fired in a burst.

    Example:
        >>> Cron(lambda: None, "*/5 * * * *").fields  # doctest: +SKIP
        5
    """

    def __init__(
        self,
        fn: Callable[[], Awaitable[Any]],
        expr: str,
        *,
        tz: str = "UTC",
        scope: str = "app",
        name: str | None = None,
        catch_up_s: float = CRON_CATCH_UP_S,
    ) -> None:
        self.fields, self.tz = self.check(expr, tz, scope)
        self.fn = fn
        self.expr = expr
        self.scope = scope
        self.name: str = name or str(getattr(fn, "__name__", "cron"))
        self.catch_up_s = catch_up_s
        self.runs = 0
        self.failures = 0
        self.next_run: float | None = None
        #: The fire time (epoch seconds) of the run in progress, or of the last one.
        self.last_fire: float | None = None

    @staticmethod
    def check(expr: str, tz: str = "UTC", scope: str = "app") -> tuple[int, Any]:
        """Validate the arguments; returns the number of fields and the time zone."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from croniter import croniter

        if scope not in ("app", "instance"):
            raise ConfigError(f"scope must be 'app' or 'instance', not {scope!r}")
        fields = len(expr.split()) if isinstance(expr, str) else 0
        if fields not in (5, 6) or not croniter.is_valid(expr, second_at_beginning=fields == 6):
            raise ConfigError(
                f"cron {expr!r} is not a cron expression: give five fields "
                "(minute hour day month weekday, e.g. '*/5 * * * *') or six with a leading "
                "seconds field (e.g. '*/10 * * * * *')"
            )
        try:
            return fields, ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"tz {tz!r} is not a time zone: use an IANA name such as 'UTC' or 'Europe/Paris'"
            ) from None

    def __repr__(self) -> str:
        return f"Cron({self.name!r}, {self.expr!r}, scope={self.scope!r})"

    def _iter(self, start: float) -> Any:
        from croniter import croniter

        return croniter(
            self.expr, datetime.fromtimestamp(start, self.tz), second_at_beginning=self.fields == 6
        )

    def next_after(self, t: float) -> float:
        """The first fire time after `t` (epoch seconds)."""
        return float(self._iter(t).get_next(float))

    def prev_before(self, t: float) -> float:
        """The newest fire time at or before `t` (epoch seconds)."""
        return float(self._iter(t + 0.001).get_prev(float))

    async def run_once(self) -> None:
        """Run the task once now; an error is logged, not raised."""
        try:
            await self.fn()
            self.runs += 1
        except Exception:
            self.failures += 1
            log.exception("cron %s failed; it runs again at its next fire time", self.name)

    async def run(
        self, stop: anyio.Event, redis: RedisConnection | None = None, app_name: str = ""
    ) -> None:
        """Fire until `stop`; with `redis`, claim each fire time first (scope "app")."""
        key = keys.cron(app_name, self.name)
        script = redis.script(CLAIM_FIRE_SCRIPT) if redis is not None else None
        warned: list[str] = []

        async def claim(fire: float, catch_up: bool) -> bool:
            if script is None:
                return not catch_up
            try:
                ok, bad = await script(keys=[key], args=[int(fire * 1000), int(catch_up)])
                if bad and not warned:
                    warned.append(key)
                    log.warning(
                        "cron %s: its key %s held %r, not a fire time; replaced (said once)",
                        self.name, key, as_text(bad),
                    )  # fmt: skip
                return bool(int(ok))
            except Exception as exc:
                log.warning("cron %s: cannot claim its fire time (%s); skipped", self.name, exc)
                return False

        prev = self.prev_before(time.time())
        if time.time() - prev <= self.catch_up_s and await claim(prev, True):
            log.info("cron %s: firing the missed fire time %.3f late", self.name, prev)
            self.last_fire = prev
            await self.run_once()
        while not stop.is_set():
            fire = self.next_run = self.next_after(time.time())
            while not stop.is_set() and time.time() < fire:
                with anyio.move_on_after(max(0.0, fire - time.time())):
                    await stop.wait()
            if stop.is_set():
                break
            if await claim(fire, False):
                self.last_fire = fire
                await self.run_once()
