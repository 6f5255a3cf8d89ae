"""One consumer of an agent: its own connection, its own read → handle → commit loop.

It overlaps I/O with handling: right after a batch arrives it sends [commit of the previous batch,
XREADGROUP for the next] in one write, then runs the handlers while Redis works, then reads both
replies. When a read comes back empty it falls back to a blocking read (idle costs no CPU). Around
that loop: its own pending entries first, retries with backoff, dead letters, XAUTOCLAIM of stalled
entries, keepalive for long handlers, housekeeping, and riding out Redis outages.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import encode_fields
from .commit import COMMIT_SCRIPT, Batch, acked_floor, current_batch, id_order, pack, pack_batch
from .exceptions import Retry, SerializationError, Skip
from .message import Message, messages_from_reply

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from .agent import Agent

__all__ = ["Consumer"]

log = logging.getLogger("streammachine.agent")


class Consumer:
    """One consumer of an agent: its own connection, its own read-handle-commit loop."""

    def __init__(self, agent: Agent, index: int, stream: str | None = None) -> None:
        self.agent = agent
        self.cfg = agent.config
        self.stream = stream or agent.config.stream
        self.name = agent.consumer_name(index)
        self.redis = agent.app.redis
        self.memory = self.redis.is_memory
        self.conn: AbstractConnection | None = None
        self.client_id: int | None = None
        self.blocked = False
        self.sha: str | None = None
        self.retry_at: dict[str, float] = {}
        self.next_claim = time.monotonic() + self.cfg.claim_interval_ms / 1000.0
        self.outage_since: float | None = None
        self.outage_attempts = 0
        self.inflight: list[Any] = []
        self.is_first = index == 0
        self.redo: list[list[list[Any]]] = []
        self.read_errors = 0
        self.moved = False
        self.warned_cross_slot = False
        self.recreate = False

    # --- connection -------------------------------------------------------------------------

    async def _connect(self) -> AbstractConnection:
        conn = await self.redis.new_connection(self.stream)
        await conn.connect()  # type: ignore[no-untyped-call]
        self.conn = conn
        if not self.memory:
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
        await conn.send_command("SCRIPT", "LOAD", COMMIT_SCRIPT)
        self.sha = (await conn.read_response()).decode()
        return conn

    async def _call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands in one write and read every reply (errors returned, not raised)."""
        conn = self.conn or await self._connect()
        await conn.send_packed_command(pack(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def _unblock(self) -> None:
        if self.blocked and self.client_id is not None:
            try:
                await self.redis.client.execute_command("CLIENT", "UNBLOCK", self.client_id)  # type: ignore[no-untyped-call]
            except Exception:
                log.debug("CLIENT UNBLOCK failed", exc_info=True)

    # --- the loop ---------------------------------------------------------------------------

    def _read_cmd(self, block: bool, start_id: str = ">") -> list[Any]:
        cmd: list[Any] = ["XREADGROUP", "GROUP", self.cfg.group, self.name, "COUNT", self.cfg.count]
        if block and not self.memory:
            cmd += ["BLOCK", self.cfg.block_ms]
        return [*cmd, "STREAMS", self.stream, start_id]

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_stop, stop)
            tg.start_soon(self._keepalive)
            try:
                while True:
                    try:
                        await self._loop(stop)
                        break
                    except Exception:
                        # A bug or an unexpected reply must not take the app down: start over on
                        # a fresh connection; unacked entries are still pending and come back.
                        log.exception("%s: consumer loop failed; restarting it", self.name)
                        await self._close()
                        await anyio.sleep(1.0)
            finally:
                tg.cancel_scope.cancel()
                await self._close()

    async def _watch_stop(self, stop: anyio.Event) -> None:
        await stop.wait()
        # A read may be about to block; unblocking is cheap, so repeat until it has returned.
        while True:
            await self._unblock()
            await anyio.sleep(0.05)

    async def _loop(self, stop: anyio.Event) -> None:
        commit: list[list[Any]] | None = None
        await self._drain_pending(stop)
        batch: list[Message] = []
        while True:
            while self.redo:
                await self._flush(self.redo.pop())
            if not batch:
                if stop.is_set():
                    break
                batch = await self._exchange(self._with(commit, self._read_cmd(not stop.is_set())))
                commit = None
                if not batch and self.memory and not stop.is_set():
                    await anyio.sleep(0.005)
                batch += await self._due_work()
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
            batch += await self._due_work()
        await self._flush(commit)
        await self._retire()

    async def _drain_pending(self, stop: anyio.Event) -> None:
        """Handle the entries this consumer already owns (a restart under the same name), in
        order, before new ones; with `takeover`, first take every pending entry of the group."""
        if self.cfg.takeover:
            replies = await self._call(
                [["XAUTOCLAIM", self.stream, self.cfg.group, self.name, 0, "0-0", "COUNT", 1_000_000, "JUSTID"]]
            )  # fmt: skip
            if not isinstance(replies[0], Exception) and replies[0][1]:
                log.info("%s: took over %d pending entries", self.name, len(replies[0][1]))
        after = "0"
        while not stop.is_set():
            batch = await self._exchange([self._read_cmd(False, after)])
            if not batch:
                return
            after = batch[-1].key or after
            await self._flush(await self._handle([m for m in batch if m._fields is not None]))

    def _with(self, commit: list[list[Any]] | None, read: list[Any]) -> list[list[Any]]:
        return [*commit, read] if commit else [read]

    async def _exchange(self, cmds: list[list[Any]]) -> list[Message]:
        """Send `cmds` (the last one a read) and return the read's messages."""
        self.blocked = "BLOCK" in cmds[-1]
        try:
            if not await self._send(cmds):
                return []
            return await self._recv(cmds)
        finally:
            self.blocked = False

    async def _send(self, cmds: list[list[Any]]) -> bool:
        try:
            conn = self.conn or await self._connect()
            await conn.send_packed_command(pack(cmds), check_health=False)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._lost(cmds)
            return False
        return True

    async def _recv(self, cmds: list[list[Any]]) -> list[Message]:
        replies: list[Any] = []
        try:
            assert self.conn is not None
            for _ in cmds:
                try:
                    replies.append(await self.conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except (RedisConnectionError, RedisTimeoutError, OSError, AssertionError):
            await self._lost(cmds)
            return []
        return self._parse(cmds, replies)

    async def _lost(self, cmds: list[list[Any]]) -> None:
        # The commit may or may not have been applied; it is idempotent, so send it again.
        if len(cmds) > 1:
            self.redo.append(cmds[:-1])
        await self._on_outage()

    def _parse(self, cmds: list[list[Any]], replies: list[Any]) -> list[Message]:
        if self.outage_since is not None:
            log.warning(
                "%s: Redis is back after %.1f s", self.name, time.monotonic() - self.outage_since
            )
            self.outage_since = None
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                if "NOSCRIPT" in str(reply):
                    self.redo.append(cmds[:-1])
                else:
                    log.error("%s: commit failed (%s); entries stay pending", self.name, reply)
                break
        reply = replies[-1]
        if isinstance(reply, ResponseError):
            if str(reply).startswith(("MOVED", "ASK", "READONLY")):
                # A resharding or a failover: find the node that serves the stream now.
                log.warning("%s: %s moved (%s); reconnecting", self.name, self.stream, reply)
                self.moved = True
            elif "NOGROUP" in str(reply):
                log.warning("%s: group %s vanished; recreating", self.name, self.cfg.group)
                self.recreate = True
            else:
                log.error("%s: read failed: %s", self.name, reply)
                self.read_errors += 1
            return []
        if not reply:
            return []
        if isinstance(reply, dict):
            reply = list(reply.items())
        return messages_from_reply(reply, self.name)

    async def _on_outage(self) -> None:
        if self.conn is not None:
            await self.conn.disconnect()
            self.conn = None
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            self.outage_attempts = 0
            log.error("%s: lost Redis at %s; retrying with backoff", self.name, self.redis)
        limit_s = self.agent.app.settings.redis_down_exit_s
        if limit_s is not None and now - self.outage_since > limit_s:
            self.agent.app.fail(f"Redis unreachable for more than {limit_s:g} s", code=3)
        self.outage_attempts += 1
        delay_s = min(2.0, 0.05 * 2**self.outage_attempts)
        await anyio.sleep(delay_s * (0.5 + random.random() / 2))
        try:
            if self.redis.is_cluster:
                await self.redis.client.nodes_manager.initialize()  # type: ignore[attr-defined]
            await self._connect()
            await self.agent.prepare()
        except Exception:
            log.debug("reconnect failed", exc_info=True)

    async def _keepalive(self) -> None:
        """Keep a long handler's entries from being claimed: refresh their idle time (XCLAIM
        JUSTID, which does not count a delivery) once they have been idle a quarter of
        `claim_idle_ms`, well before anyone may claim them."""
        quarter_ms = max(1, self.cfg.claim_idle_ms // 4)
        while True:
            await anyio.sleep(quarter_ms / 1000.0)
            ids = self.inflight
            if not ids:
                continue
            try:
                await self.redis.client.xclaim(
                    self.stream, self.cfg.group, self.name, quarter_ms, ids, justid=True
                )
            except Exception:
                log.debug("keepalive XCLAIM failed", exc_info=True)

    async def _housekeeping(self) -> None:
        """Delete consumers of dead processes once they own nothing, and trim acked entries."""
        client, cfg = self.redis.client, self.cfg
        try:
            for c in await client.xinfo_consumers(self.stream, cfg.group):
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != self.name and not c["pending"] and c["idle"] > cfg.claim_idle_ms:
                    await client.xgroup_delconsumer(self.stream, cfg.group, name)
                    log.info("%s: removed idle consumer %s (it owned nothing)", self.name, name)
            if cfg.trim == "acked":
                floor = await acked_floor(client, self.stream)
                if floor is not None:
                    await client.xtrim(self.stream, minid=floor, approximate=True)
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
            log.debug("%s: housekeeping skipped: %s", self.name, exc)

    async def _due_work(self) -> list[Message]:
        """Entries due for a retry, and stalled entries of other consumers (XAUTOCLAIM)."""
        if self.moved:
            self.moved = False
            await self._on_outage()
        if self.read_errors:
            await anyio.sleep(min(5.0, 0.1 * 2 ** min(self.read_errors, 6)))
            self.read_errors = 0
        if self.recreate:
            self.recreate = False
            try:
                await self.agent.prepare()
            except Exception:
                log.debug("recreating group failed", exc_info=True)
        now = time.monotonic()
        out: list[Message] = []
        due = [i for i, t in self.retry_at.items() if t <= now]
        if due:
            for i in due:
                del self.retry_at[i]
            out += await self._claim(["XCLAIM", self.stream, self.cfg.group, self.name, 0, *due])
        if now >= self.next_claim:
            self.next_claim = now + self.cfg.claim_interval_ms / 1000.0
            if self.is_first:
                await self._housekeeping()
            out += await self._claim(
                ["XAUTOCLAIM", self.stream, self.cfg.group, self.name,
                 self.cfg.claim_idle_ms, "0-0", "COUNT", self.cfg.count]
            )  # fmt: skip
        return out

    async def _claim(self, cmd: list[Any]) -> list[Message]:
        try:
            (reply,) = await self._call([cmd])
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._on_outage()
            return []
        if isinstance(reply, Exception):
            log.warning("%s: %s failed: %s", self.name, cmd[0], reply)
            return []
        entries = reply[1] if cmd[0] == "XAUTOCLAIM" else reply
        entries = [e for e in entries if e and e[1] is not None]
        if cmd[0] == "XAUTOCLAIM" and entries:
            log.info("%s: claimed %d stalled entries", self.name, len(entries))
        return messages_from_reply([(self.stream, entries)], self.name)

    # --- handling ---------------------------------------------------------------------------

    async def _handle(self, batch: list[Message]) -> list[list[Any]] | None:
        """Run the handler over `batch`; return the commit command for what succeeded."""
        agent, stats = self.agent, self.agent.stats
        out = Batch(maxlen=self.cfg.maxlen)
        token = current_batch.set(out)
        self.inflight = [m.key or "" for m in batch]
        done: list[str] = []
        failed: list[tuple[Message, BaseException]] = []
        agent.running += 1
        try:
            if agent.batch:
                await self._handle_whole(batch, out, done, failed)
            else:
                fn, codec, observe = agent.fn, agent.codec, stats.observe
                tracing = agent.app.tracing
                if tracing is not None:
                    fn = tracing.wrap(fn, self.stream, self.cfg.group)
                skipped = stats.skipped
                for msg in batch:
                    out.current = msg.key or ""
                    t0 = time.perf_counter()
                    try:
                        if codec is not None:
                            msg.value = codec.decode(msg._fields)
                        await fn(msg)
                    except Skip:
                        stats.skipped += 1
                        out.outputs.pop(out.current, None)
                        done.append(out.current)
                        continue
                    except Exception as exc:
                        out.outputs.pop(out.current, None)
                        failed.append((msg, exc))
                        continue
                    observe(time.perf_counter() - t0)
                    done.append(out.current)
                stats.processed += len(done) - (stats.skipped - skipped)
        finally:
            out.closed = True
            self.inflight = []
            current_batch.reset(token)
            agent.running -= 1
        if failed:
            await self._on_failures(failed)
        if out.outputs and not self._atomic(out):
            await self._write_outputs(done, out)
        return self._commit_cmd(done, out)

    def _atomic(self, out: Batch) -> bool:
        """Whether outputs and acks can be committed in one script (same node and slot)."""
        topics = {t for outs in out.outputs.values() for t, _, _ in outs}
        if self.redis.same_slot([self.stream, *topics]):
            return True
        if not self.warned_cross_slot:
            self.warned_cross_slot = True
            log.warning(
                "%s: %s and its outputs %s are in different cluster slots: outputs are written "
                "before the ack (at-least-once). Name them with one hash tag, e.g. {orders}:in "
                "and {orders}:out, to keep exactly-once.",
                self.name, self.stream, sorted(topics),
            )  # fmt: skip
        return False

    async def _write_outputs(self, done: list[str], out: Batch) -> None:
        """The at-least-once fallback: write the outputs now; the commit then only acks."""
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for entry_id in done:
                for topic, maxlen, flat in out.outputs.get(entry_id, ()):
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    pipe.xadd(topic, fields, maxlen=abs(maxlen) or None, approximate=maxlen > 0)
            await pipe.execute()
        out.outputs.clear()

    async def _handle_whole(
        self,
        batch: list[Message],
        out: Batch,
        done: list[str],
        failed: list[tuple[Message, BaseException]],
    ) -> None:
        codec = self.agent.codec
        if codec is not None:
            valid = []
            for msg in batch:
                try:
                    msg.value = codec.decode(msg._fields)
                except SerializationError as exc:
                    failed.append((msg, exc))
                    continue
                valid.append(msg)
            batch = valid
            if not batch:
                return
        out.current = batch[0].key or ""
        t0 = time.perf_counter()
        try:
            await self.agent.fn(batch)
        except Skip:
            pass
        except Exception as exc:
            out.outputs.clear()
            failed.extend((m, exc) for m in batch)
            return
        self.agent.stats.observe(time.perf_counter() - t0)
        self.agent.stats.processed += len(batch)
        done.extend(m.key or "" for m in batch)

    def _commit_cmd(self, done: list[str], out: Batch) -> list[list[Any]] | None:
        """The commands that commit a batch: its acks, and its outputs only where still owned."""
        if not done:
            return None
        stream, group = self.stream, self.cfg.group
        if not out.outputs:
            return [["XACK", stream, group, *done]]
        keys: dict[str, int] = {stream: 1}
        entries: list[Any] = []  # only the entries that have outputs
        done_set = set(done)
        for entry_id, outs in out.outputs.items():
            if entry_id in done_set:
                entries.append(
                    [entry_id, [[keys.setdefault(t, len(keys) + 1), m, f] for t, m, f in outs]]
                )
        if self.memory:
            # The in-process server has no cmsgpack; nothing else can claim in between.
            names = {v: k for k, v in keys.items()}
            cmds: list[list[Any]] = [["MULTI"]]
            for _, outs in entries:
                for idx, maxlen, flat in outs:
                    trim = ["MAXLEN", "~", maxlen] if maxlen > 0 else []
                    trim = ["MAXLEN", -maxlen] if maxlen < 0 else trim
                    cmds.append(["XADD", names[idx], *trim, "*", *flat])
            return [*cmds, ["XACK", stream, group, *done], ["EXEC"]]
        order = [id_order(i) for i in done]
        lo, hi = done[order.index(min(order))], done[order.index(max(order))]
        payload, extra = pack_batch([done, entries], out.binary)
        margin = len(self.retry_at) + 100  # own pending entries in the range besides this batch
        script = ["EVALSHA", self._script_sha(), len(keys), *keys]
        return [[*script, group, self.name, lo, hi, payload, margin, *extra]]

    def _script_sha(self) -> str:
        if self.sha is None:
            import hashlib

            self.sha = hashlib.sha1(COMMIT_SCRIPT.encode()).hexdigest()
        return self.sha

    async def _flush(self, commit: list[list[Any]] | None) -> None:
        """Write a pending commit now (at shutdown, or when no read rides with it)."""
        if not commit:
            return
        for _ in range(3):
            try:
                replies = await self._call(commit)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await self._on_outage()
                continue
            errors = [r for r in replies if isinstance(r, Exception)]
            if any("NOSCRIPT" in str(e) for e in errors):
                await self._call([["SCRIPT", "LOAD", COMMIT_SCRIPT]])
                continue
            if errors:
                log.error("%s: commit failed: %s", self.name, errors[0])
            return

    async def _on_failures(self, failed: list[tuple[Message, BaseException]]) -> None:
        """Log each failure; schedule a retry after backoff or dead-letter it."""
        stats, cfg = self.agent.stats, self.cfg
        for msg, exc in failed:
            key = msg.key or ""
            if isinstance(exc, Retry):
                stats.retried += 1
                self.retry_at[key] = time.monotonic() + exc.delay_s
                continue
            stats.failed += 1
            deliveries = await self._deliveries(key)
            if isinstance(exc, SerializationError) or (
                cfg.max_deliveries and deliveries >= cfg.max_deliveries
            ):
                await self._dead_letter(msg, exc, deliveries)
                continue
            log.error(
                "%s: handler %s failed on %s %s (delivery %d); it stays pending",
                self.name, self.agent.name, self.stream, key, deliveries,
                exc_info=(type(exc), exc, exc.__traceback__),
            )  # fmt: skip
            backoff_s = min(60.0, cfg.retry_backoff_ms / 1000.0 * 2 ** max(0, deliveries - 1))
            self.retry_at[key] = time.monotonic() + backoff_s * (0.5 + random.random() / 2)
            stats.retried += 1

    # Failure handling runs while the next read is in flight on this consumer's connection,
    # so it talks to Redis through the shared pool.

    async def _deliveries(self, entry_id: str) -> int:
        try:
            reply = await self.redis.client.xpending_range(
                self.stream, self.cfg.group, entry_id, entry_id, 1
            )
            return int(reply[0]["times_delivered"]) if reply else 1
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError):
            return 1

    async def _dead_letter(self, msg: Message, exc: BaseException, deliveries: int) -> None:
        cfg = self.cfg
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        fields = dict(msg.message)
        fields.update(
            error=str(exc)[:2000] or type(exc).__name__,
            error_type=type(exc).__name__,
            traceback=tb,
            deliveries=str(deliveries),
            source_stream=self.stream,
            source_id=msg.key or "",
            group=cfg.group,
            failed_at=f"{time.time():.3f}",
        )
        try:
            dead = cfg.dead_letter or f"{self.stream}:dead"
            atomic = self.redis.same_slot([self.stream, dead])
            async with self.redis.client.pipeline(transaction=atomic) as pipe:
                pipe.xadd(dead, encode_fields(fields))  # type: ignore[arg-type]
                pipe.xack(self.stream, cfg.group, msg.key or "")
                await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as err:
            log.error(
                "%s: dead-lettering %s failed (%s); it stays pending", self.name, msg.key, err
            )
            return
        self.agent.stats.dead += 1
        log.error(
            "%s: %s %s moved to %s after %d deliveries: %s: %s",
            self.name, self.stream, msg.key, cfg.dead_letter, deliveries, type(exc).__name__, exc,
        )  # fmt: skip

    async def _retire(self) -> None:
        """On a clean stop, leave the group tidy: delete this consumer if it owns nothing."""
        try:
            (reply,) = await self._call(
                [["XPENDING", self.stream, self.cfg.group, "-", "+", 1, self.name]]
            )
            if not reply and not self.retry_at:
                await self._call(
                    [["XGROUP", "DELCONSUMER", self.stream, self.cfg.group, self.name]]
                )
        except Exception:
            log.debug("retire failed", exc_info=True)

    async def _close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with anyio.CancelScope(shield=True):
                await conn.disconnect()
