"""One consumer's loop: read → handle → commit, overlapped.

Right after a batch arrives the consumer sends [commit of the previous batch, XREADGROUP for the
next] in one write, runs the handlers while Redis works, then reads both replies. When a read
comes back empty it falls back to a blocking read (idle costs no CPU). Between batches it takes
the work that is due (`claims`): its own retries, and entries of *other* consumers idle longer
than `claim_idle_ms` whose process is dead. The keepalive (`upkeep`) refreshes every entry it owns
so nobody claims them while it lives; the first consumer of each stream in a process tidies the
group.

Each batch carries the fence counter the consumer knew when it got the entries (its tag); the
commit (`commit.Committer`) writes without checking each entry when the counter has not moved.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from ..failpoints import failpoint
from ..presence.liveness import LiveSet
from .claims import CLAIM_SCRIPT, RECLAIM_SCRIPT, TAKEOVER_SCRIPT, Tag, Taking, older
from .commit import Committer, Pending, Verdict
from .crossslot import write_now
from .outbox import current_outbox
from .upkeep import DELCONSUMER_SCRIPT, keepalive
from .wire import Read, Wire, WireLost, read_command

if TYPE_CHECKING:
    from ..message import Message
    from .context import Context, Ownership

__all__ = ["Consumer"]

log = logging.getLogger("streammachine.agent")


class Consumer(Taking):
    """One consumer of an agent on one stream.

    Args:
        ctx: what it works with (stream, name, configuration, connection, handler, ...).
        housekeeper: whether this consumer tidies the group (one per stream and process).
        ownership: for a partition's single owner: the lease check, takeover and gate.
    """

    def __init__(
        self, ctx: Context, *, housekeeper: bool = False, ownership: Ownership | None = None
    ) -> None:
        self.ctx = ctx
        self.cfg = cfg = ctx.config
        self.stream, self.name = ctx.stream, ctx.name
        self.failures = ctx.failures
        self.stats = ctx.stats
        self.housekeeper = housekeeper
        self.ownership = ownership
        redis = ctx.redis
        self.memory = redis.is_memory
        self.wire = Wire(
            redis, ctx.stream, ctx.name, down_exit_s=ctx.down_exit_s, on_down=ctx.on_down
        )
        self.committer = Committer(redis, ctx.stream, cfg.group, ctx.name)
        self.wire.scripts = [
            *self.committer.scripts(),
            *(redis.script(s) for s in (CLAIM_SCRIPT, RECLAIM_SCRIPT, TAKEOVER_SCRIPT)),
            redis.script(DELCONSUMER_SCRIPT),
        ]
        self.live = LiveSet(redis)
        self.next_claim = time.monotonic() + cfg.claim_interval_ms / 1000.0
        self.next_housekeeping = time.monotonic()
        self.claim_cursor = "-"
        #: commits to send again (their reply was lost, or the scripts had to be reloaded)
        self.redo: list[Pending] = []
        #: the commit sent with the read in flight
        self.riding: Pending | None = None
        #: messages to handle again at once (a state check failed in their commit)
        self.again: list[Message] = []
        self.again_tag: Tag = None
        #: read own pending entries again: a read whose reply was lost may have delivered some
        self.resync = False
        self.faults: set[str] = set()
        self.warned_cross_slot = False
        #: entries read at once: no more than the rate limit takes at once (its burst)
        self.read_count = (
            cfg.count if ctx.limiter is None else min(cfg.count, ctx.limiter.max_batch)
        )
        self.stopping: anyio.Event | None = None

    @property
    def epoch(self) -> Tag:
        """The fence counter this consumer knows (the tag of what it reads next)."""
        e = self.committer.epoch
        return None if e is None else int(e)

    def _holds(self) -> bool:
        return self.ownership is None or self.ownership.holds()

    # --- the loop ---------------------------------------------------------------------------

    def _read_cmd(self, block: bool, start_id: str = ">") -> list[Any]:
        cfg = self.cfg
        block_ms = cfg.block_ms if block and not self.memory else None
        return read_command(cfg.group, self.name, self.read_count, block_ms, self.stream, start_id)

    async def run(self, stop: anyio.Event) -> None:
        """Consume until `stop` is set, then drain: finish and commit the batch in hand."""
        self.stopping = stop
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_stop, stop)
            cfg = self.cfg
            tg.start_soon(
                keepalive, self.ctx.redis, self.stream, cfg.group, self.name, cfg.claim_idle_ms
            )
            try:
                while True:
                    try:
                        await self._loop(stop)
                        break
                    except Exception:
                        # A bug or an unexpected reply must not take the app down: start over on
                        # a fresh connection; unacked entries are still pending and come back,
                        # and a commit whose reply was not read is sent again, checked.
                        log.exception("%s: consumer loop failed; restarting it", self.name)
                        riding, self.riding = self.riding, None
                        if riding is not None:
                            self.redo.append(self.committer.again(riding))
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

    def _paused(self) -> bool:
        switch = self.ctx.switch
        return switch is not None and switch.paused

    async def _loop(self, stop: anyio.Event) -> None:
        commit: Pending | None = None
        takeover = self.ownership is not None and self.ownership.takeover
        # Commits that may have been applied go first, checked entry by entry: the drain below
        # handles again whatever they did not ack.
        while self.redo:
            await self._flush(self.redo.pop())
        self.again = []  # still ours and pending: the drain handles them
        await self._drain_pending(stop, takeover=takeover)
        batch: list[Message] = []
        tag: Tag = None
        while True:
            if not self._holds():
                # The partition moved to another owner: what is in hand is its to handle.
                log.info("%s: no longer owns %s; stopping", self.name, self.stream)
                break
            while self.redo:
                await self._flush(self.redo.pop())
            if self.resync:
                # The commit in hand first: the drain handles again every owned entry not acked.
                self.resync = False
                await self._flush(commit)
                commit = None
                held = {m.key or "" for m in (*batch, *self.again)}
                await self._drain_pending(stop, skip=held)
            if self._paused() and not stop.is_set():
                # Paused by an operator: commit what is done, hold what is in hand (the
                # keepalive keeps it ours), read nothing until resumed.
                await self._flush(commit)
                commit = None
                await self.ctx.switch.wait(stop)  # type: ignore[union-attr]
                continue
            if not batch:
                if stop.is_set():
                    break
                tag = self.epoch
                batch = await self._exchange(self._with(commit, self._read_cmd(True)))
                commit = None
                if not batch and self.memory and not stop.is_set():
                    await anyio.sleep(0.005)
                batch, tag = await self._with_due_work(batch, tag)
                continue
            # Overlap: ask for the next batch now, handle this one while Redis works.
            cmds: list[list[Any]] | None = None
            next_tag = self.epoch
            if stop.is_set() or self._paused():
                await self._flush(commit)
            else:
                cmds = self._with(commit, self._read_cmd(False))
                if not await self._send(cmds):
                    cmds = None
            commit = await self._handle(batch, tag)
            batch = await self._recv(cmds) if cmds else []
            batch, tag = await self._with_due_work(batch, next_tag)
        await self._flush(commit)
        await self._retire()

    def _with(self, commit: Pending | None, read: list[Any]) -> list[list[Any]]:
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
            await self._lost()
            return False
        return True

    async def _recv(self, cmds: list[list[Any]]) -> list[Message]:
        try:
            replies = await self.wire.recv(len(cmds))
        except WireLost:
            await self._lost()
            return []
        riding, self.riding = self.riding, None
        if riding is not None:
            failpoint("commit.applied")
            verdict = self.committer.judge(riding, replies[0])
            if verdict.reload:  # not applied: load the scripts, send it again
                await self._reload()
                self.redo.append(riding)
            else:
                self._act(riding, verdict)
        return self._take(self.wire.read(replies[-1]))

    async def _call(self, cmds: list[list[Any]]) -> list[Any]:
        """Commands on the consumer's connection; [] when it broke (after the outage backoff)."""
        try:
            return await self.wire.call(cmds)
        except WireLost:
            await self._outage()
            return []

    async def _run(self, source: str, args: list[Any]) -> Any:
        """A script of `claims` on the consumer's connection (KEYS: stream, fence); its reply, or
        None when Redis refused it (logged) or the connection broke."""
        script = self.ctx.redis.script(source)
        try:
            reply = await self.wire.run(script, [self.stream, self.committer.fence], args)
        except WireLost:
            await self._outage()
            return None
        if isinstance(reply, Exception):
            log.warning("%s: %s", self.name, reply)
            return None
        return reply

    def _take(self, read: Read) -> list[Message]:
        if read.fault is not None:
            self.faults.add(read.fault)
        return read.messages

    async def _reload(self) -> None:
        try:
            await self.wire.load_scripts()
        except WireLost:
            await self._outage()

    def _act(self, pending: Pending, verdict: Verdict) -> None:
        """Carry out what a commit's reply means (other than reloading the scripts)."""
        if verdict.error is not None:
            log.error(
                "%s: commit failed (%s); handling its entries again", self.name, verdict.error
            )
        for entry_id in verdict.retry:
            # Still ours: a whole batch partly taken by another consumer (its owned entries are
            # handled again), or a commit Redis refused (e.g. OOM).
            self.failures.later(entry_id, verdict.retry_after_s)
        if verdict.again:
            self.again_tag = older(self.again_tag, self.epoch) if self.again else self.epoch
            self.again += verdict.again
        if verdict.dropped and not pending.check:
            self.stats.dropped += verdict.dropped
            log.warning(
                "%s: dropped %d outputs or state changes of entries another consumer took while "
                "this one stalled (that one writes them)", self.name, verdict.dropped,
            )  # fmt: skip

    async def _lost(self) -> None:
        # The commit may or may not have been applied: send it again, checked entry by entry.
        riding, self.riding = self.riding, None
        if riding is not None:
            self.redo.append(self.committer.again(riding))
        await self._outage()

    async def _outage(self) -> None:
        self.resync = True
        await self.wire.outage()
        try:
            await self.ctx.prepare()
        except Exception:
            log.debug("recreating the group after reconnecting failed", exc_info=True)

    # --- handling ---------------------------------------------------------------------------

    async def _handle(self, batch: list[Message], tag: Tag) -> Pending | None:
        """Run the handler over `batch`; return the commit of what succeeded."""
        ctx = self.ctx
        if ctx.limiter is not None and not await ctx.limiter.take(len(batch), self.stopping):
            # Sleeping costs no CPU, and the keepalive keeps the batch from being claimed; a stop
            # ends the wait, and the batch stays pending (handled after a restart or a claim).
            return None
        if not self._holds():
            return None  # lost the partition (e.g. frozen past its lease): the batch is not ours
        out = self.committer.outbox(self.cfg.maxlen, ctx.namespace)
        token = current_outbox.set(out)
        self.stats.running += 1
        gate = self.ownership.gate if self.ownership is not None else None
        try:
            if gate is None:
                done, failed = await ctx.delivery.run(batch, out)
            else:
                async with gate:
                    done, failed = await ctx.delivery.run(batch, out)
        finally:
            out.closed = True
            current_outbox.reset(token)
            self.stats.running -= 1
        if failed:
            await self.failures.handle(failed)
        if out.ops and not self._atomic(out.targets()):
            await write_now(self.ctx.redis, done, out, group=self.cfg.group, stream=self.stream)
        # What else this consumer may own while the commit runs: retries waiting, and a batch
        # in hand (read, not handled yet) of up to `count` entries plus claimed ones.
        margin = len(self.failures.retry_at) + len(self.again) + 2 * self.cfg.count + 100
        return self.committer.build(done, batch, out, margin=margin, tag=tag)

    def _atomic(self, written: set[str]) -> bool:
        """Whether the operations and acks can be committed in one script (same node and
        slot)."""
        if self.ctx.redis.same_slot([self.stream, *written]):
            return True
        if not self.warned_cross_slot:
            self.warned_cross_slot = True
            log.warning(
                "%s: %s and its outputs %s are in different cluster slots: at-least-once "
                "(outputs before the ack); one hash tag, e.g. {orders}:in and {orders}:out, "
                "keeps it exactly-once.", self.name, self.stream, sorted(written),
            )  # fmt: skip
        return False

    async def _flush(self, commit: Pending | None) -> None:
        """Write a pending commit now (at shutdown, or when no read rides with it)."""
        for _ in range(3):
            if commit is None:
                return
            replies = await self._call(commit.cmds)
            if not replies:
                commit = self.committer.again(commit)  # may have been applied: check it
                continue
            verdict = self.committer.judge(commit, replies[0])
            if not verdict.reload:
                self._act(commit, verdict)
                return
            await self._reload()
        if commit is not None:
            for entry_id in commit.ids:  # still ours, unacked: handle them again
                self.failures.later(entry_id, 1.0)

    async def _retire(self) -> None:
        """On a clean stop, delete this consumer if it owns nothing (checked in the same step)."""
        if self.failures.retry_at:
            return
        try:
            script = self.ctx.redis.script(DELCONSUMER_SCRIPT)
            await self.wire.run(
                script, [self.stream, self.committer.fence], [self.cfg.group, self.name]
            )
        except Exception:
            log.debug("retire failed", exc_info=True)
