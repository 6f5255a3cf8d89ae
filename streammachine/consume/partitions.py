"""One owner per partition: the partitions of a partitioned agent divided among live processes.

Within a group, each partition stream (`<stream>:p<i>`) is handled by exactly one consumer at a
time across every process and host, so every key's entries are handled in order (DESIGN.md
"partitions"). Each process of the agent:

- announces itself in a sorted set of members (scored by expiry, Redis' clock) and reads the
  live ones; partition i belongs to member i mod P of the sorted members, so with K partitions
  and P processes each owns ⌈K/P⌉ or ⌊K/P⌋;
- holds a lease per partition it owns (`schedule.Lease`, renewed every second); it consumes a
  partition only while its lease is valid, and checks that before every read and every batch;
- on a rebalance (a process joined) stops the partitions that moved away — the consumer
  finishes and commits the batch in hand — then releases their leases; the new owner takes the
  lease, first takes over every pending entry of the partition and handles them in id order
  (the consumer's `takeover`), then new ones;
- when a process dies its leases expire and the survivors take its partitions the same way.

`concurrency` bounds how many of its partitions a process handles at the same moment.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

import anyio

from .. import keys
from ..exceptions import REDIS_FAILURES
from ..schedule.lease import Lease
from .context import Ownership

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from .agent import Agent

__all__ = ["LEASE_TTL_S", "PartitionOwner", "partition_owners"]

log = logging.getLogger("streammachine.consume.partitions")

#: A partition's lease lives this long without renewal: a dead owner's partitions move then.
LEASE_TTL_S = 5.0
RENEW_S = 1.0

# Announce ARGV[1] as a member until now + ARGV[2] ms (Redis' clock), drop expired members,
# return the live ones.
MEMBERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


async def partition_owners(
    client: Any, stream: str, group: str, partitions: int
) -> dict[int, str | None]:
    """Who owns each partition now: index → owner id (`<host>-<pid>-<random>`), None if free.

    Example:
        >>> await partition_owners(conn.client, "ticks", "prices", 4)  # doctest: +SKIP
        {0: 'web-1-42-a1b2c3', 1: 'web-2-7-d4e5f6', 2: 'web-1-42-a1b2c3', 3: None}
    """
    values = await client.mget([keys.partition_lease(stream, group, i) for i in range(partitions)])
    out: dict[int, str | None] = {}
    for i, v in enumerate(values):
        token = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        out[i] = token.rsplit("/", 1)[0] if token else None
    return out


class PartitionOwner:
    """Runs the consumers of the partitions this process owns, following the rebalances."""

    def __init__(self, agent: Agent, *, ttl_s: float = LEASE_TTL_S, renew_s: float = RENEW_S):
        self.agent = agent
        self.redis: RedisConnection = agent.host.redis
        cfg = agent.config
        self.stream, self.group = cfg.stream, cfg.group
        self.k = cfg.partitions or 1
        self.ttl_s, self.renew_s = ttl_s, renew_s
        #: This process among the members: readable, unique even when a pid is reused.
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.leases = {
            i: Lease(self.redis, keys.partition_lease(self.stream, self.group, i), ttl_s)
            for i in range(self.k)
        }
        for lease in self.leases.values():
            lease.token = f"{self.id}/{lease.token}"
        #: partition → when (loop clock) its lease stops being valid unless renewed
        self.valid_until: dict[int, float] = {}
        self.stops: dict[int, anyio.Event] = {}
        self.done: dict[int, anyio.Event] = {}
        self.gate = anyio.Semaphore(max(1, cfg.concurrency))
        self.members: list[str] = []
        #: partitions being drained before their lease is released
        self.leaving: set[int] = set()

    def holds(self, index: int) -> bool:
        """Whether this process may still consume partition `index` (its lease is valid)."""
        return anyio.current_time() < self.valid_until.get(index, 0.0)

    def target(self) -> set[int]:
        """The partitions this process should own among the live members."""
        if self.id not in self.members:
            return set()
        p, me = len(self.members), self.members.index(self.id)
        return {i for i in range(self.k) if i % p == me}

    async def run(self, stop: anyio.Event) -> None:
        """Own partitions until `stop`; then drain them, release the leases and leave."""
        announce = self.redis.script(MEMBERS_SCRIPT)
        ttl_ms = int(self.ttl_s * 1000)
        async with anyio.create_task_group() as tg:
            while not stop.is_set():
                try:
                    raw = await announce(
                        keys=[keys.partition_members(self.stream, self.group)],
                        args=[self.id, ttl_ms],
                    )
                    # Sorted by name (ZRANGE sorts by expiry), so every process sees one order.
                    self.members = sorted(
                        m.decode() if isinstance(m, bytes) else str(m) for m in raw
                    )
                    await self._rebalance(tg, stop)
                except Exception as exc:  # Redis unreachable: leases run out, consumers stop
                    log.debug("partition ownership of %s: %s", self.stream, exc)
                with anyio.move_on_after(self.renew_s):
                    await stop.wait()
            for i in list(self.stops):
                self.stops[i].set()
        with anyio.move_on_after(2.0, shield=True):
            try:
                for i in range(self.k):
                    await self.leases[i].release()
                await self.redis.client.zrem(
                    keys.partition_members(self.stream, self.group), self.id
                )
            except Exception as exc:
                log.debug(
                    "could not release the partitions of %s (%s); they expire", self.stream, exc
                )

    async def _rebalance(self, tg: Any, stop: anyio.Event) -> None:
        target = self.target()
        moving = set(self.stops) - target - self.leaving
        for i in sorted(moving):  # cooperative handoff: drain and commit, then release
            self.leaving.add(i)
            self.stops[i].set()
            tg.start_soon(self._hand_over, i)
        if moving:
            log.info("%s/%s: handing over partitions %s", self.stream, self.group, sorted(moving))
        for i in sorted(set(self.stops)):  # renew (also while handing over), or stop when lost
            start = anyio.current_time()
            if await self.leases[i].acquire():
                self.valid_until[i] = start + self.ttl_s - self.renew_s
            elif not self.holds(i) and i not in self.leaving:
                log.warning("%s/%s: lost partition %d; stopping it", self.stream, self.group, i)
                self.leaving.add(i)
                self.stops[i].set()
                tg.start_soon(self._hand_over, i)
        taken = []
        for i in sorted(target - set(self.stops)):
            start = anyio.current_time()
            if await self.leases[i].acquire():
                self.valid_until[i] = start + self.ttl_s - self.renew_s
                self.stops[i], self.done[i] = anyio.Event(), anyio.Event()
                tg.start_soon(self._consume, i, stop)
                taken.append(i)
        if taken:
            log.info(
                "%s/%s: took partitions %s (%d members)",
                self.stream, self.group, taken, len(self.members),
            )  # fmt: skip

    async def _hand_over(self, index: int) -> None:
        await self.done[index].wait()
        try:
            await self.leases[index].release()
        except REDIS_FAILURES as exc:  # Redis away: the lease simply runs out
            log.debug(
                "%s/%s: could not release partition %d (%s)", self.stream, self.group, index, exc
            )
        finally:
            self._forget(index)
            self.leaving.discard(index)

    def _forget(self, index: int) -> None:
        self.stops.pop(index, None)
        self.done.pop(index, None)
        self.valid_until.pop(index, None)

    async def _consume(self, index: int, stop: anyio.Event) -> None:
        own_stop, done = self.stops[index], self.done[index]
        try:
            async with anyio.create_task_group() as tg:

                async def follow() -> None:  # the app's stop drains this partition too
                    await stop.wait()
                    own_stop.set()

                tg.start_soon(follow)
                consumer = self.agent.consumer(
                    keys.partition(self.stream, index),
                    index,
                    housekeeper=True,
                    ownership=Ownership(lambda: self.holds(index), takeover=True, gate=self.gate),
                )
                await consumer.run(own_stop)
                tg.cancel_scope.cancel()
        finally:
            done.set()
            if index not in self.leaving:  # it stopped by itself (lease ran out): retake later
                self._forget(index)
