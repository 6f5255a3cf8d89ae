"""Taking entries: retries of one's own, stalled entries of dead processes, a partition's
takeover — each by a script that fences the consumers it takes from (DESIGN.md "commit
ownership").

Fencing: the fence hash `keys.fence(stream, group)` counts, per consumer, how often entries were
taken away from it. Every script here that takes entries from another consumer increments that
consumer's counter in the same step, so the victim's next commit sees a counter it did not know and
checks each of its entries against the PEL instead of trusting its batch (see `commit`). Each
script also returns the taker's own counter, the tag of the batch it takes into.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from ..codec import as_text, parse_entry_id
from ..failpoints import failpoint
from ..presence.liveness import LiveSet, is_live
from .commit import FENCE_LUA
from .upkeep import tidy

if TYPE_CHECKING:
    from ..connection import Script
    from ..message import Message
    from ..settings import ConsumerConfig
    from .commit import Committer, Pending
    from .context import Context, Ownership
    from .deadletter import Failures
    from .wire import Read, Wire

#: The fence counter a batch was read under; None: unknown (its commit checks each entry).
Tag = int | None


def older(a: Tag, b: Tag) -> Tag:
    """The older of two tags (unknown is oldest)."""
    return None if a is None or b is None else min(a, b)


__all__ = [
    "CLAIM_SCRIPT",
    "RECLAIM_SCRIPT",
    "TAKEOVER_SCRIPT",
    "Tag",
    "Taken",
    "Taking",
    "older",
]

log = logging.getLogger("streammachine.agent")

# Claim stalled entries of other consumers: each id still idle at least ARGV[3] ms and owned by
# someone else is taken (XCLAIM), its owner fenced first. KEYS: stream, fence; ARGV: group,
# claimer, min idle ms, ids... Returns {entries, claimer's counter, {id, deliveries before}...}.
CLAIM_SCRIPT = (
    FENCE_LUA
    + """
local group, me, idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
local take, counts, robbed = {}, {}, {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] ~= me and tonumber(p[1][3]) >= idle then
    take[#take + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = p[1][4]
    robbed[p[1][2]] = true
  end
end
for victim in pairs(robbed) do fence(victim) end
local epoch = redis.call('HGET', KEYS[2], me) or '0'
if #take == 0 then return {{}, epoch, {}} end
return {redis.call('XCLAIM', KEYS[1], group, me, idle, unpack(take)), epoch, counts}
"""
)

# A retry: take back (as a new delivery) those of these ids this consumer still owns.
# KEYS: stream, fence; ARGV: group, consumer, ids... Returns {entries, counter, {id, deliveries
# before, ...}}; an entry another consumer took is that one's now.
RECLAIM_SCRIPT = """
local mine, counts = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    mine[#mine + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = p[1][4]
  end
end
local epoch = redis.call('HGET', KEYS[2], ARGV[2]) or '0'
if #mine == 0 then return {{}, epoch, {}} end
return {redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine)), epoch, counts}
"""

# A partition's new owner takes every pending entry of the group, fencing each consumer that
# owned some. KEYS: stream, fence; ARGV: group, new owner. Returns {taken, counter}.
TAKEOVER_SCRIPT = (
    FENCE_LUA
    + """
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local owners = summary[4]
if owners and owners ~= false then
  for _, o in ipairs(owners) do
    if o[1] ~= ARGV[2] then fence(o[1]) end
  end
end
local taken = 0
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, cursor, 'COUNT', 1000, 'JUSTID')
  cursor = r[1]
  taken = taken + #r[2]
until cursor == '0-0'
return {taken, redis.call('HGET', KEYS[2], ARGV[2]) or '0'}
"""
)


class Taken:
    """What a taking script returned: the entries (id, fields, or None when trimmed), the
    taker's fence counter, and each entry's deliveries before this one."""

    __slots__ = ("before", "entries", "epoch")

    def __init__(self, reply: Any) -> None:
        entries, epoch, counts = reply
        self.entries: list[Any] = list(entries or [])
        self.epoch = as_text(epoch)
        self.before = {as_text(k): int(v) for k, v in zip(counts[::2], counts[1::2], strict=True)}

    def gone(self) -> list[str]:
        """Ids deleted from the stream (trimmed) while pending: nothing left to handle."""
        return [as_text(e[0]) for e in self.entries if e and e[1] is None]

    def present(self) -> list[Any]:
        """The entries that still exist, as XCLAIM returned them."""
        return [e for e in self.entries if e and e[1] is not None]


def claim_cursor_after(pending: list[Any], scan: int) -> str:
    """Where the next XPENDING scan of stalled entries starts: after the last one seen when the
    scan was full, else from the start."""
    if len(pending) < scan:
        return "-"
    ms, seq = parse_entry_id(pending[-1][0])
    return f"{ms}-{seq + 1}"


async def take(wire: Wire, script: Script, stream: str, fence: str, args: list[Any]) -> Any:
    """Run a taking `script` on the consumer's own connection; the reply, or None on a Redis
    error (logged)."""
    replies = await wire.call([script.command([stream, fence], args)])
    reply = replies[0]
    if isinstance(reply, Exception):
        log.warning("%s: %s", wire.name, reply)
        return None
    return reply


class Taking:
    """The consumer's taking of entries (a part of `consumer.Consumer`): its own pending entries
    again, its due retries, stalled entries of dead processes, a partition's takeover."""

    cfg: ConsumerConfig
    name: str
    stream: str
    failures: Failures
    committer: Committer
    live: LiveSet
    faults: set[str]
    again: list[Message]
    again_tag: Tag
    next_claim: float
    next_housekeeping: float
    claim_cursor: str
    housekeeper: bool
    ctx: Context
    wire: Wire
    ownership: Ownership | None

    if TYPE_CHECKING:

        @property
        def epoch(self) -> Tag: ...

        def _read_cmd(self, block: bool, start_id: str = ">") -> list[Any]: ...
        def _paused(self) -> bool: ...
        def _take(self, read: Read) -> list[Message]: ...
        async def _exchange(self, cmds: list[list[Any]]) -> list[Message]: ...
        async def _call(self, cmds: list[list[Any]]) -> list[Any]: ...
        async def _run(self, source: str, args: list[Any]) -> Any: ...
        async def _outage(self) -> None: ...
        async def _handle(self, batch: list[Message], tag: Tag) -> Pending | None: ...
        async def _flush(self, commit: Pending | None) -> None: ...

    async def _drain_pending(
        self, stop: anyio.Event, *, takeover: bool = False, skip: set[str] | None = None
    ) -> None:
        """Handle the entries this consumer already owns, in order, before new ones: at start
        (a restart under the same name), and after a lost connection (the lost reply of a read
        may have delivered entries this consumer never saw; nobody else may claim them while it
        lives). `skip`: entries in hand; with `takeover`, first take every pending entry of the
        group (fencing their owners)."""
        if takeover:
            args = [self.cfg.group, self.name]
            reply = await self._run(TAKEOVER_SCRIPT, args)
            if reply is not None:
                self.committer.epoch = as_text(reply[1])
                if int(reply[0]):
                    log.info("%s: took over %d pending entries", self.name, int(reply[0]))
        after = "0"
        while not stop.is_set():
            tag = self.epoch
            batch = await self._exchange([self._read_cmd(False, after)])
            if not batch:
                return
            after = batch[-1].key or after
            gone = [m.key for m in batch if m._fields is None]
            if gone:  # trimmed from the stream while pending: nothing left to handle
                await self._call([["XACK", self.stream, self.cfg.group, *gone]])
            held = skip or set()
            batch = [
                m
                for m in batch
                if m._fields is not None
                and m.key not in held
                and m.key not in self.failures.retry_at
            ]
            await self._count_deliveries(batch)
            await self._flush(await self._handle(batch, tag))

    async def _count_deliveries(self, batch: list[Message]) -> None:
        """Set `deliveries` of re-read own entries from the PEL (one range query)."""
        if not batch:
            return
        lo, hi = batch[0].key or "-", batch[-1].key or "+"
        replies = await self._call([["XPENDING", self.stream, self.cfg.group, lo, hi, len(batch), self.name]])  # fmt: skip
        if replies and isinstance(replies[0], list):
            counts = {as_text(e[0]): int(e[3]) for e in replies[0]}
            for m in batch:
                m.deliveries = counts.get(m.key or "", 1)

    async def _with_due_work(self, batch: list[Message], tag: Tag) -> tuple[list[Message], Tag]:
        """`batch` plus the entries due now (handled again, retries, stalled entries of others),
        each once, and the tag of the whole (the oldest of its parts')."""
        due: list[Message] = []
        if self.again:
            due, self.again = self.again, []
            tag = older(tag, self.again_tag)
        more, more_tag = await self._due_work()
        if more:
            due += more
            tag = older(tag, more_tag)
        if not due:
            return batch, tag
        seen = {m.key for m in batch}
        for m in due:
            if m.key not in seen:
                seen.add(m.key)
                batch.append(m)
        if self.ownership is not None and self.ownership.sole:  # a partition: in id order
            batch.sort(key=lambda m: parse_entry_id(m.key or "0-0"))
        return batch, tag

    async def _due_work(self) -> tuple[list[Message], Tag]:
        faults, self.faults = self.faults, set()
        if "moved" in faults:
            await self._outage()
        if "error" in faults:
            await anyio.sleep(1.0)
        if "nogroup" in faults:
            log.warning("%s: group %s vanished; recreating", self.name, self.cfg.group)
            try:
                await self.ctx.prepare()
            except Exception:
                log.debug("recreating group failed", exc_info=True)
        out: list[Message] = []
        tag: Tag = self.epoch
        retries = self.failures.due()
        if retries:
            msgs, t = await self._reclaim(retries)
            out += msgs
            tag = older(tag, t)
        now = time.monotonic()
        if now >= self.next_claim and not self._paused():
            self.next_claim = now + self.cfg.claim_interval_ms / 1000.0
            msgs, t = await self._claim_stalled()
            out += msgs
            tag = older(tag, t)
            # Only while the lease holds: a former owner (frozen past its lease, or stopping
            # after it lost it) would take the new owner's entries and strand them again.
            if self.ownership is not None and self.ownership.sole and self.ownership.holds():
                msgs, t = await self._take_strays()
                out += msgs
                tag = older(tag, t)
            if self.housekeeper and now >= self.next_housekeeping:
                self.next_housekeeping = now + max(1.0, self.cfg.claim_interval_ms / 1000.0)
                await tidy(self.ctx.redis, self.stream, self.cfg, self.name)
        return out, tag

    async def _reclaim(self, retries: list[str]) -> tuple[list[Message], Tag]:
        """Take back, as new deliveries, the due retries this consumer still owns."""
        reply = await self._run(RECLAIM_SCRIPT, [self.cfg.group, self.name, *retries])
        if reply is None:
            for entry_id in retries:  # still ours: try again soon
                self.failures.later(entry_id, 1.0)
            return [], None
        return await self._taken(Taken(reply))

    async def _claim_stalled(self) -> tuple[list[Message], Tag]:
        """Claim entries of *other* consumers idle longer than `claim_idle_ms`, whose process
        is no longer alive (its heartbeat ran out); the claim script fences their owners.

        XPENDING IDLE lists them with their owners (XAUTOCLAIM cannot leave out the consumer's
        own); the script re-checks owner and idle time, so an entry refreshed meanwhile stays."""
        cfg = self.cfg
        scan = max(cfg.count * 4, 100)
        cmd = ["XPENDING", self.stream, cfg.group, "IDLE", cfg.claim_idle_ms, self.claim_cursor, "+", scan]  # fmt: skip
        replies = await self._call([cmd])
        if not replies or isinstance(replies[0], Exception):
            if replies:
                log.warning("%s: XPENDING failed: %s", self.name, replies[0])
            return [], None
        pending = replies[0]
        self.claim_cursor = claim_cursor_after(pending, scan)
        owners = {as_text(e[1]) for e in pending} - {self.name}
        if not owners:
            return [], None
        # Never from a live process, even while a handler blocks its loop (else two workers take
        # each other's in-flight batches for ever); a frozen or dead one's heartbeat runs out.
        live = await self.live.get()
        dead = {o for o in owners if not is_live(o, live)}
        ids = [as_text(e[0]) for e in pending if as_text(e[1]) in dead][: cfg.count]
        if not ids:
            return [], None
        reply = await self._run(CLAIM_SCRIPT, [cfg.group, self.name, cfg.claim_idle_ms, *ids])
        if reply is None:
            return [], None
        failpoint("claim.taken")
        msgs, tag = await self._taken(Taken(reply))
        if msgs:
            log.info("%s: claimed %d stalled entries", self.name, len(msgs))
        return msgs, tag

    async def _take_strays(self) -> tuple[list[Message], Tag]:
        """A partition's owner takes what other consumers hold in its stream, live or not: with
        the lease it is the only consumer, so such an entry is stranded (a stalled former
        owner's read that reached Redis after the takeover). Only entries idle past
        `claim_idle_ms`, re-checked by the fencing claim script: a live owner's keepalive keeps
        its own fresh, so a former owner frozen after its lease check cannot take them."""
        cfg, idle = self.cfg, self.cfg.claim_idle_ms
        cmd = ["XPENDING", self.stream, cfg.group, "IDLE", idle, "-", "+", max(cfg.count * 4, 100)]
        replies = await self._call([cmd])
        rows = replies[0] if replies and isinstance(replies[0], list) else []
        ids = [
            as_text(e[0])
            for e in rows
            if isinstance(e, list) and len(e) > 1 and as_text(e[1]) != self.name
        ][: cfg.count]
        if not ids:
            return [], None
        reply = await self._run(CLAIM_SCRIPT, [cfg.group, self.name, idle, *ids])
        msgs, tag = await self._taken(Taken(reply)) if reply is not None else ([], None)
        if msgs:
            log.warning("%s: took %d entries a former owner's late read left", self.name, len(msgs))
        return msgs, tag

    async def _taken(self, taken: Taken) -> tuple[list[Message], Tag]:
        gone = taken.gone()
        if gone:  # deleted from the stream (trimmed) while pending: nothing left to handle
            await self._call([["XACK", self.stream, self.cfg.group, *gone]])
        present = taken.present()
        msgs = self._take(self.wire.read([(self.stream, present)])) if present else []
        for m in msgs:
            m.deliveries = taken.before.get(m.key or "", 0) + 1
        self.committer.epoch = taken.epoch
        return msgs, int(taken.epoch)
