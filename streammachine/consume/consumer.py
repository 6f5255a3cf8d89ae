"""One consumer's loop: read → deliver → commit, overlapped.

Right after a batch arrives the consumer sends [commit of the previous batch, XREADGROUP for the
next] in one write, runs the handlers while Redis works, then reads both replies. When a read
comes back empty it falls back to a blocking read (idle costs no CPU). Between batches it takes
the work that is due: its own retries, and entries of *other* consumers idle longer than
`claim_idle_ms` (never its own: those it still holds, prefetched or waiting for a retry). A
keepalive task refreshes every entry it owns so nobody claims them while it lives, and the first
consumer of each stream in a process tidies the group (dead consumers, acked entries).

The connection is `wire.Wire`, the handler call and failures are `delivery`, the commit is
`commit`, the keepalive and tidying are `upkeep`; this module is only the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ..codec import as_text, parse_entry_id
from ..presence.liveness import LiveSet, is_live
from .commit import (
    DELCONSUMER_SCRIPT,
    RECLAIM_SCRIPT,
    Batch,
    commit_commands,
    current_batch,
    sha1,
    write_outputs,
)
from .upkeep import keepalive, tidy
from .wire import Read, Wire, WireLost

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..message import Message
    from ..schedule.rate import RateLimiter
    from ..settings import ConsumerConfig
    from .agent import AgentStats
    from .delivery import Delivery, Failures

__all__ = ["Consumer"]

log = logging.getLogger("streammachine.consume.agent")


@dataclass(slots=True)
class Pending:
    """A batch's commit not yet confirmed: its commands and the entries it acks."""

    cmds: list[list[Any]]
    ids: list[str]


Commit = Pending | None


class Consumer:
    """One consumer of an agent on one stream.

    Args:
        cfg, stream, name: the agent's configuration, the stream it reads (the agent's or one
            of its partitions) and its consumer name in the group.
        redis, delivery, failures, stats: the connection manager, the handler call, retries
            and dead letters, the agent's counters.
        prepare: creates the group again (after NOGROUP or a reconnect).
        housekeeper: whether this consumer tidies the group (one per stream and process).
        wire: its connection (default: a new `Wire`).
        namespace: the storage namespace of delayed sends made in the handler.
        limiter: the agent's rate limit, taken per batch before it is handled.
        takeover: at start, take every pending entry of the group on `stream` and handle them
            in id order before new ones (a partition's new owner; `cfg.takeover`).
        holds: whether the consumer may still consume `stream` (a partition's lease), asked
            before every read and batch; when it says no the consumer stops.
        gate: bounds how many consumers handle a batch at once (a partitioned agent's
            `concurrency`).
    """

    def __init__(
        self,
        cfg: ConsumerConfig,
        stream: str,
        name: str,
        redis: RedisConnection,
        delivery: Delivery,
        failures: Failures,
        stats: AgentStats,
        prepare: Callable[[], Awaitable[None]],
        *,
        housekeeper: bool = False,
        wire: Wire | None = None,
        namespace: str = "default",
        limiter: RateLimiter | None = None,
        takeover: bool = False,
        holds: Callable[[], bool] | None = None,
        gate: anyio.Semaphore | None = None,
    ) -> None:
        self.cfg = cfg
        self.stream = stream
        self.name = name
        self.redis = redis
        self.delivery = delivery
        self.failures = failures
        self.stats = stats
        self.prepare = prepare
        self.housekeeper = housekeeper
        self.wire = wire or Wire(redis, stream, name)
        self.live = LiveSet(redis)
        self.namespace = namespace
        self.limiter = limiter
        self.takeover = takeover
        self.holds = holds
        self.gate = gate
        self.memory = redis.is_memory
        self.next_claim = time.monotonic() + cfg.claim_interval_ms / 1000.0
        self.next_housekeeping = time.monotonic()
        self.claim_cursor = "-"
        self.redo: list[Pending] = []
        #: the commit sent with the read in flight
        self.riding: Commit = None
        #: read own pending entries again: a read whose reply was lost may have delivered some
        self.resync = False
        self.faults: set[str] = set()
        self.warned_cross_slot = False

    # --- the loop ---------------------------------------------------------------------------

    def _read_cmd(self, block: bool, start_id: str = ">") -> list[Any]:
        cmd: list[Any] = ["XREADGROUP", "GROUP", self.cfg.group, self.name, "COUNT", self.cfg.count]
        if block and not self.memory:
            cmd += ["BLOCK", self.cfg.block_ms]
        return [*cmd, "STREAMS", self.stream, start_id]

    async def run(self, stop: anyio.Event) -> None:
        """Consume until `stop` is set, then drain: finish and commit the batch in hand."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_stop, stop)
            cfg = self.cfg
            tg.start_soon(
                keepalive, self.redis, self.stream, cfg.group, self.name, cfg.claim_idle_ms
            )
            try:
                while True:
                    try:
                        await self._loop(stop)
                        break
                    except Exception:
                        # A bug or an unexpected reply must not take the app down: start over on
                        # a fresh connection; unacked entries are still pending and come back.
                        log.exception("%s: consumer loop failed; restarting it", self.name)
                        await self.wire.close()
                        await anyio.sleep(1.0)
            finally:
                tg.cancel_scope.cancel()
                await self.wire.close()

    async def _watch_stop(self, stop: anyio.Event) -> None:
        await stop.wait()
        # A read may be about to block; unblocking is cheap, so repeat until it has returned.
        while True:
            await self.wire.unblock()
            await anyio.sleep(0.05)

    async def _loop(self, stop: anyio.Event) -> None:
        commit: Commit = None
        await self._drain_pending(stop, takeover=self.takeover)
        batch: list[Message] = []
        while True:
            if self.holds is not None and not self.holds():
                # The partition moved to another owner: what is in hand is its to handle.
                log.info("%s: no longer owns %s; stopping", self.name, self.stream)
                break
            while self.redo:
                await self._flush(self.redo.pop())
            if self.resync:
                self.resync = False
                await self._drain_pending(stop, skip={m.key or "" for m in batch})
            if not batch:
                if stop.is_set():
                    break
                batch = await self._exchange(self._with(commit, self._read_cmd(True)))
                commit = None
                if not batch and self.memory and not stop.is_set():
                    await anyio.sleep(0.005)
                batch = await self._with_due_work(batch)
                continue
            # Overlap: ask for the next batch now, handle this one while Redis works.
            cmds: list[list[Any]] | None = None
            if stop.is_set():
                await self._flush(commit)
            else:
                cmds = self._with(commit, self._read_cmd(False))
                if not await self._send(cmds):
                    cmds = None
            commit = await self._handle(batch)
            batch = await self._recv(cmds) if cmds else []
            batch = await self._with_due_work(batch)
        await self._flush(commit)
        await self._retire()

    async def _drain_pending(
        self, stop: anyio.Event, *, takeover: bool = False, skip: set[str] | None = None
    ) -> None:
        """Handle the entries this consumer already owns, in order, before new ones: at start
        (a restart under the same name), and after a lost connection (the lost reply of a read
        may have delivered entries this consumer never saw; nobody else may claim them while it
        lives). `skip`: entries in hand; with `takeover`, first take every pending entry of the
        group."""
        if takeover:
            cmd = ["XAUTOCLAIM", self.stream, self.cfg.group, self.name, 0, "0-0", "COUNT", 1_000_000, "JUSTID"]  # fmt: skip
            replies = await self._call([cmd])
            if replies and not isinstance(replies[0], Exception) and replies[0][1]:
                log.info("%s: took over %d pending entries", self.name, len(replies[0][1]))
        after = "0"
        while not stop.is_set():
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
            await self._flush(await self._handle(batch))

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

    def _with(self, commit: Commit, read: list[Any]) -> list[list[Any]]:
        self.riding = commit
        return [*commit.cmds, read] if commit else [read]

    async def _exchange(self, cmds: list[list[Any]]) -> list[Message]:
        """Send `cmds` (the last one a read) and return the read's messages."""
        self.wire.blocked = "BLOCK" in cmds[-1]
        try:
            if not await self._send(cmds):
                return []
            return await self._recv(cmds)
        finally:
            self.wire.blocked = False

    async def _send(self, cmds: list[list[Any]]) -> bool:
        try:
            await self.wire.send(cmds)
        except WireLost:
            await self._lost(cmds)
            return False
        return True

    async def _recv(self, cmds: list[list[Any]]) -> list[Message]:
        try:
            replies = await self.wire.recv(len(cmds))
        except WireLost:
            await self._lost(cmds)
            return []
        riding, self.riding = self.riding, None
        if riding is not None and self._committed(riding, replies[:-1]):
            self.redo.append(riding)
        return self._take(self.wire.read(replies[-1]))

    async def _call(self, cmds: list[list[Any]]) -> list[Any]:
        """Commands on the consumer's connection; [] when it broke (after the outage backoff)."""
        try:
            return await self.wire.call(cmds)
        except WireLost:
            await self._outage()
            return []

    def _take(self, read: Read) -> list[Message]:
        if read.fault is not None:
            self.faults.add(read.fault)
        return read.messages

    def _committed(self, commit: Pending, replies: list[Any]) -> bool:
        """Act on a commit's replies; True when the scripts must be loaded again (NOSCRIPT)."""
        for reply in replies:
            if isinstance(reply, list):
                # A batch whose entries were partly claimed away: nothing was written; handle
                # the ones still owned again (the others are their new owner's).
                for entry_id in reply:
                    self.failures.later(as_text(entry_id))
            elif isinstance(reply, Exception):
                if "NOSCRIPT" in str(reply):
                    return True
                # E.g. OOM: the entries stay ours (and the keepalive keeps them): retry them.
                log.error("%s: commit failed (%s); handling its entries again", self.name, reply)
                for entry_id in commit.ids:
                    self.failures.later(entry_id, 1.0)
        return False

    async def _lost(self, cmds: list[list[Any]]) -> None:
        # The commit may or may not have been applied; it is idempotent, so send it again.
        riding, self.riding = self.riding, None
        if riding is not None:
            self.redo.append(riding)
        await self._outage()

    async def _outage(self) -> None:
        self.resync = True
        await self.wire.outage()
        try:
            await self.prepare()
        except Exception:
            log.debug("recreating the group after reconnecting failed", exc_info=True)

    # --- due work ---------------------------------------------------------------------------

    async def _with_due_work(self, batch: list[Message]) -> list[Message]:
        """`batch` plus the entries due now (retries, stalled entries of others), each once."""
        due = await self._due_work()
        if not due:
            return batch
        seen = {m.key for m in batch}
        for m in due:
            if m.key not in seen:
                seen.add(m.key)
                batch.append(m)
        return batch

    async def _due_work(self) -> list[Message]:
        faults, self.faults = self.faults, set()
        if "moved" in faults:
            await self._outage()
        if "error" in faults:
            await anyio.sleep(1.0)
        if "nogroup" in faults:
            log.warning("%s: group %s vanished; recreating", self.name, self.cfg.group)
            try:
                await self.prepare()
            except Exception:
                log.debug("recreating group failed", exc_info=True)
        out: list[Message] = []
        retries = self.failures.due()
        if retries:
            out += await self._reclaim(retries)
        now = time.monotonic()
        if now >= self.next_claim:
            self.next_claim = now + self.cfg.claim_interval_ms / 1000.0
            out += await self._claim_stalled()
            if self.housekeeper and now >= self.next_housekeeping:
                self.next_housekeeping = now + max(1.0, self.cfg.claim_interval_ms / 1000.0)
                await tidy(self.redis, self.stream, self.cfg, self.name)
        return out

    async def _reclaim(self, retries: list[str]) -> list[Message]:
        """Take back, as new deliveries, the due retries this consumer still owns."""
        cmd = ["EVALSHA", sha1(RECLAIM_SCRIPT), 1, self.stream, self.cfg.group, self.name, *retries]
        replies = await self._call([cmd])
        if not replies or isinstance(replies[0], Exception):
            if replies:
                log.warning("%s: retry failed: %s", self.name, replies[0])
            for entry_id in retries:  # still ours: try again soon
                self.failures.later(entry_id, 1.0)
            return []
        entries, counts = replies[0]
        before = {as_text(k): int(v) for k, v in zip(counts[::2], counts[1::2], strict=True)}
        msgs = self._entries(entries)
        for m in msgs:
            m.deliveries = before.get(m.key or "", 0) + 1
        return msgs

    async def _claim_stalled(self) -> list[Message]:
        """Claim entries of *other* consumers idle longer than `claim_idle_ms`, whose process
        is no longer alive (its heartbeat ran out).

        XPENDING IDLE lists them with their owners (XAUTOCLAIM cannot leave out the consumer's
        own); XCLAIM re-checks the idle time, so an entry refreshed meanwhile stays."""
        cfg = self.cfg
        scan = max(cfg.count * 4, 100)
        cmd = ["XPENDING", self.stream, cfg.group, "IDLE", cfg.claim_idle_ms, self.claim_cursor, "+", scan]  # fmt: skip
        replies = await self._call([cmd])
        if not replies or isinstance(replies[0], Exception):
            if replies:
                log.warning("%s: XPENDING failed: %s", self.name, replies[0])
            return []
        pending = replies[0]
        last = parse_entry_id(pending[-1][0]) if len(pending) == scan else None  # inclusive
        self.claim_cursor = f"{last[0]}-{last[1] + 1}" if last else "-"
        owners = {as_text(e[1]) for e in pending} - {self.name}
        if not owners:
            return []
        # Never from a live process, even while a handler blocks its loop (else two workers take
        # each other's in-flight batches for ever); a frozen or dead one's heartbeat runs out.
        live = await self.live.get()
        dead = {o for o in owners if not is_live(o, live)}
        theirs = {as_text(e[0]): int(e[3]) for e in pending if as_text(e[1]) in dead}
        if not theirs:
            return []
        ids = list(theirs)[: cfg.count]
        replies = await self._call([["XCLAIM", self.stream, cfg.group, self.name, cfg.claim_idle_ms, *ids]])  # fmt: skip
        if not replies or isinstance(replies[0], Exception):
            return []
        gone = [as_text(e[0]) for e in replies[0] if e and e[1] is None]
        if gone:  # deleted from the stream (trimmed) while pending: nothing left to handle
            await self._call([["XACK", self.stream, cfg.group, *gone]])
        msgs = self._entries(replies[0])
        for m in msgs:
            m.deliveries = theirs.get(m.key or "", 0) + 1
        if msgs:
            log.info("%s: claimed %d stalled entries", self.name, len(msgs))
        return msgs

    def _entries(self, reply: list[Any]) -> list[Message]:
        entries = [e for e in reply if e and e[1] is not None]
        return self._take(self.wire.read([(self.stream, entries)] if entries else []))

    # --- handling ---------------------------------------------------------------------------

    async def _handle(self, batch: list[Message]) -> Commit:
        """Run the handler over `batch`; return the commit command for what succeeded."""
        if self.limiter is not None:
            # Sleeping costs no CPU, and the keepalive keeps the batch from being claimed.
            await self.limiter.take(len(batch))
        if self.holds is not None and not self.holds():
            return None  # lost the partition (e.g. frozen past its lease): the batch is not ours
        out = Batch(maxlen=self.cfg.maxlen, namespace=self.namespace)
        token = current_batch.set(out)
        self.stats.running += 1
        try:
            if self.gate is None:
                done, failed = await self.delivery.run(batch, out)
            else:
                async with self.gate:
                    done, failed = await self.delivery.run(batch, out)
        finally:
            out.closed = True
            current_batch.reset(token)
            self.stats.running -= 1
        if failed:
            await self.failures.handle(failed)
        if out.outputs and not self._atomic(out):
            await write_outputs(self.redis.client, done, out)
        # What else this consumer may own while the commit runs: retries waiting, and a batch
        # in hand (read, not handled yet) of up to `count` entries plus claimed ones.
        margin = len(self.failures.retry_at) + 2 * self.cfg.count + 100
        cmds = commit_commands(
            self.stream, self.cfg.group, self.name, done, out, memory=self.memory, margin=margin
        )
        return Pending(cmds, done) if cmds else None

    def _atomic(self, out: Batch) -> bool:
        """Whether outputs and acks can be committed in one script (same node and slot)."""
        topics = out.keys()
        if self.redis.same_slot([self.stream, *topics]):
            return True
        if not self.warned_cross_slot:
            self.warned_cross_slot = True
            log.warning(
                "%s: %s and its outputs %s are in different cluster slots: at-least-once "
                "(outputs before the ack); one hash tag, e.g. {orders}:in and {orders}:out, "
                "keeps it exactly-once.", self.name, self.stream, sorted(topics),
            )  # fmt: skip
        return False

    async def _flush(self, commit: Commit) -> None:
        """Write a pending commit now (at shutdown, or when no read rides with it)."""
        if not commit:
            return
        for _ in range(3):
            replies = await self._call(commit.cmds)
            if not replies:
                continue
            if not self._committed(commit, replies):
                return
            await self.wire.close()  # NOSCRIPT: connecting loads the scripts again
        for entry_id in commit.ids:  # still ours, unacked: handle them again
            self.failures.later(entry_id, 1.0)

    async def _retire(self) -> None:
        """On a clean stop, delete this consumer if it owns nothing (checked in the same step)."""
        if self.failures.retry_at:
            return
        cmd = ["EVAL", DELCONSUMER_SCRIPT, 1, self.stream, self.cfg.group, self.name]
        try:
            await self.wire.call([cmd])
        except Exception:
            log.debug("retire failed", exc_info=True)
