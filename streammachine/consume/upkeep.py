"""A consumer's upkeep beside its loop: the keepalive of the entries it owns, and tidying the
group (consumers of dead processes, acked entries) — DESIGN.md "consumer names and liveness"."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from ..codec import as_text
from ..exceptions import REDIS_FAILURES
from ..presence.liveness import is_live, live_prefixes
from .commit import DELCONSUMER_SCRIPT, TOUCH_SCRIPT, acked_floor

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..settings import ConsumerConfig

__all__ = ["keepalive", "tidy"]

log = logging.getLogger("streammachine.consume.agent")


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
                dropped = await delete(keys=[stream], args=[cfg.group, name])
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
