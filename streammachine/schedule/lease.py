"""Timer leases: one process of an app (across workers and hosts) runs its `scope="app"` timers,
the holder of a lease in Redis; another takes over within `takeover_bound_s` when it dies.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from .. import keys
from ..settings import MAX_LEASE_MS
from .timing import takeover_bound_s

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from .timer import Timer

__all__ = ["Lease", "run_leased_timers"]

log = logging.getLogger("streammachine.schedule")


# --- leases and timers -------------------------------------------------------------------------

# Take or keep the lease: renew it when we hold it, else take it when nobody does. A value no
# lease of ours can have left (no expiry, or one beyond ARGV[3] ms) is given ARGV[2] ms to expire,
# a key of another type is deleted, so garbage written there stops nothing for long.
# Returns {1 when held, what was repaired or ''}.
LEASE_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
local repaired = ''
if kind ~= 'string' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  repaired = 'it held a ' .. kind .. '; deleted'
end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, repaired}
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, repaired}
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 or left > tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  repaired = 'it held ' .. string.format('%q', string.sub(v, 1, 60)) .. ' with no expiry or a far one; ' ..
    'it expires in ' .. ARGV[2] .. ' ms'
end
return {0, repaired}
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """A lease in Redis: at most one holder at a time, lost when the holder stops renewing it.

    Example:
        >>> lease = Lease(app.redis, "streammachine:lease:{orders}:timers", ttl_s=3)  # doctest: +SKIP
        >>> await lease.acquire()  # doctest: +SKIP
        True
    """

    def __init__(self, redis: RedisConnection, key: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = f"{time.time_ns():x}-{secrets.token_hex(8)}"
        self._warned = False

    async def acquire(self) -> bool:
        """Take the lease if free, or renew it if held; True when this holder has it. Garbage
        in the key (no expiry, a far one, another type) is repaired and said once."""
        held, repaired = await self.redis.script(LEASE_SCRIPT)(
            keys=[self.key], args=[self.token, self.ttl_ms, max(MAX_LEASE_MS, self.ttl_ms)]
        )
        if repaired and not self._warned:
            self._warned = True
            why = repaired.decode("utf-8", "replace") if isinstance(repaired, bytes) else repaired
            log.warning("lease %s was not one StreamMachine writes: %s (said once)", self.key, why)
        return bool(int(held))

    async def release(self) -> bool:
        """Give the lease up if this holder still has it."""
        return bool(await self.redis.script(RELEASE_SCRIPT)(keys=[self.key], args=[self.token]))


async def run_leased_timers(
    redis: RedisConnection, app_name: str, timers: Sequence[Timer], stop: anyio.Event
) -> None:
    """Run `timers` in this process while it holds the app's timer lease (until `stop`).

    The lease lives `ttl = min(0.45 x bound, 15 s)` with `bound = max(3 x interval, 5 s)` of
    the shortest interval, is renewed every ttl/3, and the others try to take it as often; so a
    dead runner's timers run again elsewhere within the bound. When the lease is lost (another
    process took it, or Redis could not confirm it before it would have expired), a run in
    progress is cancelled so the timers never run in two processes at once; on a clean stop it
    finishes, and the lease is released so another process takes over at once.

    Example:
        >>> leased = [t for t in app.timers if t.config.scope == "app"]  # doctest: +SKIP
        >>> await run_leased_timers(app.redis, app.name, leased, stop)  # doctest: +SKIP
    """
    if not timers:
        return
    bound = takeover_bound_s(min(float(t.config.interval) for t in timers))
    ttl_s = min(0.45 * bound, 15.0)
    renew_s = ttl_s / 3
    lease = Lease(redis, keys.timer_lease(app_name), ttl_s)
    failing = False

    async def try_lease() -> bool | None:
        nonlocal failing
        try:
            with anyio.fail_after(max(1.0, renew_s)):
                held = await lease.acquire()
            failing = False
            return held
        except Exception as exc:
            if not failing:
                log.warning("timer lease: Redis error (%s: %s)", type(exc).__name__, exc)
            failing = True
            return None

    try:
        while not stop.is_set():
            if not await try_lease():
                with anyio.move_on_after(renew_s):
                    await stop.wait()
                continue
            log.info("this process runs the timers of %s (lease %s)", app_name, lease.key)
            valid_until = anyio.current_time() + ttl_s
            timers_stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                for t in timers:
                    tg.start_soon(t.run, timers_stop)
                while True:
                    with anyio.move_on_after(renew_s):
                        await stop.wait()
                    if stop.is_set():
                        timers_stop.set()  # runs in progress finish
                        break
                    held = await try_lease()
                    if held:
                        valid_until = anyio.current_time() + ttl_s
                    elif held is False or anyio.current_time() >= valid_until - renew_s:
                        log.warning("timer lease of %s lost: its timers run elsewhere", app_name)
                        tg.cancel_scope.cancel()
                        break
    finally:
        with anyio.move_on_after(2.0, shield=True):
            try:
                await lease.release()
            except Exception as exc:
                log.debug("could not release the timer lease (%s); it expires", exc)
