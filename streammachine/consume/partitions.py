"""One owner per partition: the partitions of a partitioned agent divided among live processes,
or the one owner of an exclusive agent's stream.

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
  lease, runs the agent's `on_owned` hook (e.g. restoring a snapshot), first takes over every
  pending entry of the partition and handles them in id order (the consumer's `takeover`), then
  new ones;
- when a process dies its leases expire and the survivors take its partitions the same way;
- at every claim pass the owner also takes (fencing) whatever another consumer holds in its
  partition, live process or not: a stalled former owner's read that reached Redis after the
  takeover left entries with a consumer that will never handle them.

An exclusive agent (`exclusive=True`) is the same with one "partition", the stream itself, and
no balancing: the holder keeps it, the others wait as standbys and take it over (in order, after
`on_owned`) when the holder stops or dies.

Everything read back from Redis is checked (another tenant may have written anything there): a
member that is not a process id is ignored, every member's expiry is capped at now + the lease
TTL (so a far-future one cannot own partitions for ever), a lease key of another type is
deleted and one without a bounded expiry gets one; each problem is logged once as a warning,
and `ownership.ownership()` says which partitions have no live owner.

`concurrency` bounds how many of its partitions a process handles at the same moment.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .. import keys
from ..codec import as_text
from ..exceptions import REDIS_FAILURES, UNREACHABLE
from ..schedule.lease import Lease
from ..settings import MAX_LEASE_MS
from .context import Ownership
from .ownership import LEASE_TTL_S, key_names, lease_holder, member_id, valid_member

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from .agent import Agent

__all__ = ["OWNERSHIP_SCRIPT", "RENEW_S", "ConsumerFactory", "OnOwned", "PartitionOwner"]

log = logging.getLogger("streammachine.consume.partitions")

#: How often an owner renews its leases (at most; a quarter of a shorter lease TTL).
RENEW_S = 1.0

# KEYS[1] the members, KEYS[2..] the leases; ARGV[1] this member, ARGV[2] the TTL in ms, ARGV[3]
# the longest expiry a lease of ours can have (MAX_LEASE_MS).
# Announce ARGV[1] until now + TTL (Redis' clock), cap every member's expiry there too (one with
# a far-future score would own partitions for ever), drop expired members. A key of another
# type is deleted; a lease without expiry, or with one no lease of ours has, is given the TTL.
# Returns the live members, the lease values and what was repaired.
OWNERSHIP_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local cap = now + ttl
local repaired = {}
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  repaired[#repaired + 1] = KEYS[1] .. ' held a ' .. kind
end
local far = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cap, '+inf')
for _, m in ipairs(far) do
  redis.call('ZADD', KEYS[1], cap, m)
end
if #far > 0 then
  repaired[#repaired + 1] = KEYS[1] .. ': ' .. #far .. ' members expiring after the lease TTL'
end
redis.call('ZADD', KEYS[1], cap, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local leases = {}
for i = 2, #KEYS do
  kind = redis.call('TYPE', KEYS[i])['ok']
  if kind == 'string' then
    local left = redis.call('PTTL', KEYS[i])
    if left < 0 or left > tonumber(ARGV[3]) then
      redis.call('PEXPIRE', KEYS[i], ttl)
      repaired[#repaired + 1] = KEYS[i] .. ' had no expiry or a far one'
    end
    leases[#leases + 1] = redis.call('GET', KEYS[i])
  else
    if kind ~= 'none' then
      redis.call('DEL', KEYS[i])
      repaired[#repaired + 1] = KEYS[i] .. ' held a ' .. kind
    end
    leases[#leases + 1] = false
  end
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), leases, repaired}
"""


class Runs(Protocol):
    """A consumer, as PartitionOwner runs it."""

    async def run(self, stop: anyio.Event) -> None: ...


#: Makes the consumer of one partition: (stream, index, *, housekeeper, ownership),
#: e.g. `Agent.consumer`.
ConsumerFactory = Callable[..., Runs]
#: Called when this process has taken partition `index` (its lease held), before it consumes it.
OnOwned = Callable[["PartitionOwner", int], Awaitable[None]]


class PartitionOwner:
    """Runs the consumers of the partitions this process owns, following the rebalances.

    Args:
        redis: the connection.
        stream, group: the agent's stream and group.
        consumer: makes the consumer of one partition (see `ConsumerFactory`).
        partitions: K partitions `<stream>:p0..`; None: exclusive, one owner of `stream` itself.
        concurrency: how many partitions this process handles at the same moment.
        ttl_s: how long a lease lives without renewal (a dead owner's partitions move then).
        renew_s: how often leases are renewed (default: a second, or a quarter of `ttl_s`).
        on_owned: awaited when this process takes a partition, before it consumes it.

    Example:
        >>> await PartitionOwner.of(agent).run(stop)  # doctest: +SKIP
    """

    def __init__(
        self,
        redis: RedisConnection,
        stream: str,
        group: str,
        consumer: ConsumerFactory,
        *,
        partitions: int | None = None,
        concurrency: int = 1,
        ttl_s: float = LEASE_TTL_S,
        renew_s: float | None = None,
        on_owned: OnOwned | None = None,
    ) -> None:
        self.redis = redis
        self.stream, self.group = stream, group
        self.make_consumer = consumer
        self.exclusive = partitions is None
        self.k = partitions or 1
        self.streams = (
            [stream] if self.exclusive else [keys.partition(stream, i) for i in range(self.k)]
        )
        self.ttl_s = ttl_s
        # Renewed 4 times per TTL: a lease survives two late renewals on a busy loop.
        self.renew_s = min(RENEW_S, ttl_s / 4) if renew_s is None else renew_s
        self.on_owned = on_owned
        self.id = member_id()
        self.members_key, lease_keys = key_names(stream, group, partitions)
        self.leases = {i: Lease(redis, key, ttl_s) for i, key in enumerate(lease_keys)}
        for lease in self.leases.values():
            lease.token = f"{self.id}/{lease.token}"
        #: partition → when (loop clock) its lease stops being valid unless renewed
        self.valid_until: dict[int, float] = {}
        self.stops: dict[int, anyio.Event] = {}
        self.done: dict[int, anyio.Event] = {}
        #: partitions whose `on_owned` has run in this ownership
        self.ready: set[int] = set()
        self.gate = anyio.Semaphore(max(1, concurrency))
        self.members: list[str] = []
        #: partitions being drained before their lease is released
        self.leaving: set[int] = set()
        self._warned: set[str] = set()

    @classmethod
    def of(cls, agent: Agent) -> PartitionOwner:
        """The owner of a partitioned (or exclusive) agent's partitions in this process."""
        cfg = agent.config
        return cls(
            agent.host.redis, cfg.stream, cfg.group, agent.consumer,
            partitions=cfg.partitions or None, concurrency=cfg.concurrency,
            ttl_s=cfg.lease_ms / 1000.0, on_owned=agent.on_owned,
        )  # fmt: skip

    def holds(self, index: int) -> bool:
        """Whether this process may still consume partition `index` (its lease is valid)."""
        return anyio.current_time() < self.valid_until.get(index, 0.0)

    def serving(self, index: int) -> bool:
        """Whether this process holds partition `index` and its `on_owned` hook has run."""
        return index in self.ready and self.holds(index)

    def target(self) -> set[int]:
        """The partitions this process should own among the live members (exclusive: the one,
        whoever holds it keeps it)."""
        if self.exclusive:
            return {0}
        if self.id not in self.members:
            return set()
        p, me = len(self.members), self.members.index(self.id)
        return {i for i in range(self.k) if i % p == me}

    def _warn(self, message: str) -> None:
        """Log a problem with what Redis holds, once per process and problem."""
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s/%s: %s", self.stream, self.group, message)

    async def run(self, stop: anyio.Event) -> None:
        """Own partitions until `stop`; then drain them, release the leases and leave."""
        announce = self.redis.script(OWNERSHIP_SCRIPT)
        lease_keys = [lease.key for lease in self.leases.values()]
        ttl_ms = int(self.ttl_s * 1000)
        args: list[str | int] = [self.id, ttl_ms, max(MAX_LEASE_MS, ttl_ms)]
        async with anyio.create_task_group() as tg:
            while not stop.is_set():
                try:
                    raw, leases, repaired = await announce(
                        keys=[self.members_key, *lease_keys], args=args
                    )
                    for note in repaired:
                        self._warn(f"repaired {as_text(note)} (written by someone else)")
                    for key, value in zip(lease_keys, leases, strict=False):
                        if value is not None and lease_holder(value) is None:
                            self._warn(f"{key} holds {as_text(value)[:80]!r}, not a lease")
                    self.members = self.valid_members(raw)
                    await self._rebalance(tg, stop)
                except UNREACHABLE as exc:  # Redis away: leases run out, consumers stop
                    log.debug("partition ownership of %s: %s", self.stream, exc)
                except Exception as exc:  # never stop owning over one bad reply; say it once
                    self._warn(f"partition ownership failed this round: {exc!r}")
                with anyio.move_on_after(self.renew_s):
                    await stop.wait()
            for i in list(self.stops):
                self.stops[i].set()
        with anyio.move_on_after(2.0, shield=True):
            try:
                for lease in self.leases.values():
                    await lease.release()
                await self.redis.client.zrem(self.members_key, self.id)
            except Exception as exc:
                log.debug(
                    "could not release the partitions of %s (%s); they expire", self.stream, exc
                )

    def valid_members(self, raw: list[Any]) -> list[str]:
        """The members that are process ids, sorted by name (ZRANGE sorts by expiry), so every
        process sees one order; the others are ignored, and said once."""
        members = []
        for m in raw:
            member = valid_member(m)
            if member is None:
                self._warn(f"ignoring a member that is not a process id: {as_text(m)[:80]!r}")
            else:
                members.append(member)
        return sorted(members)

    async def _acquire(self, index: int) -> bool:
        """Take or renew the lease of `index`; False when another holds it or Redis refused."""
        try:
            return await self.leases[index].acquire()
        except UNREACHABLE:
            raise
        except REDIS_FAILURES as exc:  # e.g. WRONGTYPE: repaired by the next announce
            self._warn(f"partition {index}: {self.leases[index].key}: {exc}")
            return False

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
            if await self._acquire(i):
                self.valid_until[i] = start + self.ttl_s - self.renew_s
            elif not self.holds(i) and i not in self.leaving:
                log.warning("%s/%s: lost partition %d; stopping it", self.stream, self.group, i)
                self.leaving.add(i)
                self.stops[i].set()
                tg.start_soon(self._hand_over, i)
        taken = []
        for i in sorted(target - set(self.stops)):
            start = anyio.current_time()
            if await self._acquire(i):
                self.valid_until[i] = start + self.ttl_s - self.renew_s
                self.stops[i], self.done[i] = anyio.Event(), anyio.Event()
                tg.start_soon(self._consume, i, stop)
                taken.append(i)
        if taken and self.exclusive:
            log.info("%s/%s: this process is the owner now", self.stream, self.group)
        elif taken:
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
        self.ready.discard(index)

    async def _consume(self, index: int, stop: anyio.Event) -> None:
        own_stop, done = self.stops[index], self.done[index]
        try:
            if self.on_owned is not None:
                try:
                    await self.on_owned(self, index)
                except Exception as exc:
                    # Held, not served: tried again at the next renewal; said once.
                    self._warn(f"partition {index}: taking it over failed: {exc!r}")
                    return
            self.ready.add(index)
            async with anyio.create_task_group() as tg:

                async def follow() -> None:  # the app's stop drains this partition too
                    await stop.wait()
                    own_stop.set()

                tg.start_soon(follow)
                lost = False

                def holds() -> bool:
                    # Once false, false for this consumer: a batch it dropped when the lease
                    # lapsed stays pending with it, and only a new consumer (which handles its
                    # own pending entries first) picks it up, in order, after `on_owned`.
                    nonlocal lost
                    lost = lost or not self.holds(index)
                    return not lost

                consumer = self.make_consumer(
                    self.streams[index],
                    index,
                    housekeeper=True,
                    ownership=Ownership(holds, takeover=True, gate=self.gate, sole=True),
                )
                await consumer.run(own_stop)
                tg.cancel_scope.cancel()
        finally:
            done.set()
            if index not in self.leaving:  # it stopped by itself (lease ran out): retake later
                self._forget(index)
