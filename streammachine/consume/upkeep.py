"""A consumer's upkeep beside its loop: the keepalive of the entries it owns, and tidying the
group (consumers of dead processes, acked entries) — DESIGN.md "consumer names and liveness"."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .. import keys
from ..codec import as_text, parse_entry_id
from ..exceptions import REDIS_FAILURES
from ..presence.liveness import is_live, live_prefixes
from .commit import FENCE_LUA

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..settings import ConsumerConfig
    from .agent import Agent

__all__ = [
    "DELCONSUMER_SCRIPT",
    "TICK_S",
    "TOUCH_SCRIPT",
    "acked_floor",
    "agent_tick",
    "keepalive",
    "tidy",
]

log = logging.getLogger("streammachine.agent")

#: How often the process looks at its agents (pause switches, handler timeouts).
TICK_S = 0.5

# Keepalive: reset the idle time of the entries this consumer still owns (in flight, prefetched,
# waiting for a retry) once they have been idle `min idle` ms, so nobody claims them while the
# consumer is alive. JUSTID does not count a delivery. Entries another consumer claimed meanwhile
# are not in this consumer's PEL and are left alone.
# KEYS: [stream]; ARGV: group, consumer, min idle ms, max entries.
TOUCH_SCRIPT = """
local ids = {}
for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[3]), '-', '+', tonumber(ARGV[4]), ARGV[2])) do
  ids[#ids + 1] = e[1]
end
for c = 1, #ids, 500 do
  local chunk = {unpack(ids, c, math.min(c + 499, #ids))}
  chunk[#chunk + 1] = 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(chunk))
end
return #ids
"""

# Delete a consumer only if it owns nothing, in the same step (XGROUP DELCONSUMER drops the
# entries a consumer owns from the PEL: deleting one that just read or claimed loses them), and
# fence it. KEYS: stream, fence; ARGV: group, consumer. Returns -1 when it owned something.
DELCONSUMER_SCRIPT = (
    FENCE_LUA
    + """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
fence(ARGV[2])
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""
)


async def keepalive(
    redis: RedisConnection, stream: str, group: str, consumer: str, claim_idle_ms: int
) -> None:
    """Keep every entry `consumer` owns (in flight, prefetched, waiting for a retry) from being
    claimed while it lives: refresh their idle time once they have been idle a quarter of
    `claim_idle_ms`, well before anyone may claim them, by a script that touches only entries
    it still owns. A frozen or dead process stops refreshing, and then its entries are claimed.
    Runs until cancelled."""
    quarter_ms = max(1, claim_idle_ms // 4)
    touch = redis.script(TOUCH_SCRIPT)
    while True:
        await anyio.sleep(quarter_ms / 1000.0)
        try:
            await touch(keys=[stream], args=[group, consumer, quarter_ms, 10_000])
        except Exception:
            log.debug("keepalive failed", exc_info=True)


async def tidy(redis: RedisConnection, stream: str, cfg: ConsumerConfig, consumer: str) -> None:
    """Delete the consumers of dead processes (no live heartbeat) once they own nothing — in the
    same step as the check — and, with `trim="acked"`, trim entries every group has acked."""
    client = redis.client
    try:
        consumers = await client.xinfo_consumers(stream, cfg.group)
        idle = [c for c in consumers if int(c["idle"]) > cfg.claim_idle_ms]
        if idle:
            live = await live_prefixes(redis)
            delete = redis.script(DELCONSUMER_SCRIPT)
            for c in idle:
                name = as_text(c["name"])
                if is_live(name, live):
                    continue
                dropped = await delete(
                    keys=[stream, keys.fence(stream, cfg.group)], args=[cfg.group, name]
                )
                if int(dropped) > 0:
                    log.error("%s: deleting %s dropped %s entries", consumer, name, dropped)
                elif int(dropped) == 0:
                    log.info("%s: removed consumer %s of a stopped process", consumer, name)
        if cfg.trim == "acked":
            floor = await acked_floor(client, stream)
            if floor is not None:
                await client.xtrim(stream, minid=floor, approximate=True)
    except REDIS_FAILURES as exc:
        log.debug("%s: housekeeping skipped: %s", consumer, exc)


async def acked_floor(client: Any, stream: str) -> bytes | None:
    """The lowest id any group still needs (oldest pending, or next undelivered): entries
    below it were delivered to and acked by every group. None when there are no groups."""
    floor: tuple[int, int] | None = None
    for g in await client.xinfo_groups(stream):
        summary = await client.xpending(stream, g["name"])
        if summary["pending"]:
            cand = parse_entry_id(summary["min"])
        else:
            ms, seq = parse_entry_id(g["last-delivered-id"])
            cand = (ms, seq + 1)
        floor = cand if floor is None or cand < floor else floor
    return None if floor is None else f"{floor[0]}-{floor[1]}".encode()


def agent_tick(
    redis: RedisConnection, app_name: str, agents: Sequence[Agent]
) -> Callable[[], Awaitable[None]]:
    """The process's agent job (run by the process's `ticker.Ticker` every `TICK_S`): follow the
    app's paused agents in Redis (`keys.paused`, set by `streammachine pause`), and cancel handler
    calls that ran past their `timeout_s`."""
    key = keys.paused(app_name)

    async def tick() -> None:
        now = time.monotonic()
        for agent in agents:
            agent.overdue(now)
        paused = {as_text(m) for m in await redis.client.smembers(key)}
        for agent in agents:
            if agent.paused != (agent.name in paused):
                log.warning(
                    "%s: %s by an operator", agent.name,
                    "paused" if agent.name in paused else "resumed",
                )  # fmt: skip
                agent.switch.set(agent.name in paused)

    return tick
