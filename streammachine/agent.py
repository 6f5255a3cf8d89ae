"""One agent: XREADGROUP → decode → handler → XACK, with its output committed atomically.

Each consumer owns a dedicated connection and overlaps I/O with handling: right after a batch
arrives it sends [commit of the previous batch, XREADGROUP for the next] in one write, then runs the
handlers while Redis works, then reads both replies. When a read comes back empty it falls back to
a blocking read (idle costs no CPU). Sends made inside a handler are buffered and written by the
commit — a Lua script that writes them and acks only the entries this consumer still owns — so a
stream-to-stream stage is exactly-once on one Redis node.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import traceback
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import Payload, StructCodec, encode_fields
from .exceptions import Retry, SerializationError, Skip
from .message import Message, messages_from_reply
from .settings import ConsumerConfig

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from .app import App

__all__ = ["Agent", "AgentStats", "current_batch"]

log = logging.getLogger("streammachine.agent")

Handler = Callable[..., Awaitable[Any]]

# Writes outputs and acks only for entries this consumer still owns in the group's PEL, so a
# consumer that stalled while another claimed its entries drops them instead of committing twice.
# KEYS: [source stream, output streams...]; ARGV: group, consumer, lowest id, highest id, and the
# batch packed with msgpack: [[id, [[key index, maxlen (0 = none), [k1, v1, ...]], ...]], ...].
COMMIT_SCRIPT = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local entries = cmsgpack.unpack(ARGV[5])
local owned = {}
for _, e in ipairs(redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], #entries * 4, consumer)) do
  owned[e[1]] = true
end
local acks = {}
for _, entry in ipairs(entries) do
  if owned[entry[1]] then
    for _, out in ipairs(entry[2]) do
      local maxlen, fields = out[2], out[3]
      if maxlen > 0 then
        redis.call('XADD', KEYS[out[1]], 'MAXLEN', '~', maxlen, '*', unpack(fields))
      elseif maxlen < 0 then
        redis.call('XADD', KEYS[out[1]], 'MAXLEN', -maxlen, '*', unpack(fields))
      else
        redis.call('XADD', KEYS[out[1]], '*', unpack(fields))
      end
    end
    acks[#acks + 1] = entry[1]
  end
end
local acked = 0
for c = 1, #acks, 1000 do
  acked = acked + redis.call('XACK', stream, group, unpack(acks, c, math.min(c + 999, #acks)))
end
return acked
"""


#: Upper bounds (seconds) of the handler-latency histogram buckets; the last is +Inf.
LATENCY_BUCKETS_S = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(slots=True)
class AgentStats:
    """Counters of one agent in this process; `latency_buckets[i]` counts handler calls that
    took at most `LATENCY_BUCKETS_S[i]` (not cumulative; the last slot is +Inf)."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0
    latency_s_total: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))

    def observe(self, seconds: float) -> None:
        """Count one handler call that took `seconds`."""
        self.latency_s_total += seconds
        self.latency_buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {
            "processed": self.processed,
            "failed": self.failed,
            "retried": self.retried,
            "dead": self.dead,
            "skipped": self.skipped,
            "latency_s_total": round(self.latency_s_total, 6),
            "latency_buckets": list(self.latency_buckets),
        }


@dataclass(slots=True)
class Batch:
    """The handler output of one batch, keyed by the entry that produced it."""

    current: str = ""
    outputs: dict[str, list[tuple[str, int, list[Any]]]] = field(default_factory=dict)
    closed: bool = False
    maxlen: int | None = None

    def add(self, topic: str, maxlen: int | None, fields: dict[Any, Any]) -> None:
        """Buffer an output; `maxlen` > 0 trims approximately, < 0 exactly to -maxlen."""
        maxlen = maxlen or self.maxlen
        flat: list[Any] = []
        for k, v in fields.items():
            flat.append(k)
            flat.append(v)
        self.outputs.setdefault(self.current, []).append((topic, maxlen or 0, flat))


#: The batch whose handler is running in this task, so `App.send` can buffer into it.
current_batch: ContextVar[Batch | None] = ContextVar("streammachine_batch", default=None)


class Agent:
    """A registered consumer of one stream in one group (`@app.agent`)."""

    def __init__(
        self,
        app: App,
        fn: Handler,
        config: ConsumerConfig,
        *,
        schema: type[msgspec.Struct] | None = None,
        payload: Payload = "fields",
        batch: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.config = config
        self.name = config.name or getattr(fn, "__name__", "agent")
        self.schema = schema
        self.codec = StructCodec(schema, payload) if schema is not None else None
        self.batch = batch
        self.stats = AgentStats()
        self.running = 0

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, stream={self.config.stream!r}, group={self.config.group!r})"

    def consumer_name(self, index: int) -> str:
        """`<host>-<pid>-<agent>-<n>`: stable for the process and readable in XINFO."""
        return f"{socket.gethostname()}-{os.getpid()}-{self.name}-{index}"

    @property
    def streams(self) -> list[str]:
        """The streams this agent consumes: its stream, or `<stream>:p0 … :p{K-1}` when it has
        K partitions."""
        k = self.config.partitions
        base = self.config.stream
        return [f"{base}:p{i}" for i in range(k)] if k else [base]

    async def prepare(self) -> None:
        """Create the group (MKSTREAM) if it does not exist; an existing group keeps its place."""
        for stream in self.streams:
            created = await self.app.redis.ensure_group(
                stream, self.config.group, self.config.start
            )
            if created:
                log.info("created group %s on %s", self.config.group, stream)

    async def run(self, stop: anyio.Event) -> None:
        """Run `concurrency` consumers per stream until `stop` is set and they have drained."""
        async with anyio.create_task_group() as tg:
            n = 0
            for stream in self.streams:
                for _ in range(self.config.concurrency):
                    tg.start_soon(Consumer(self, n, stream).run, stop)
                    n += 1


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
        await conn.send_packed_command(_pack(commands), check_health=False)
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
        # Entries this consumer already owns (a restart under the same name) come first.
        batch = await self._exchange([self._read_cmd(False, "0")])
        batch = [m for m in batch if m._fields is not None]
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
            await conn.send_packed_command(_pack(cmds), check_health=False)
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
        entries: list[Any] = []
        for entry_id in done:
            outs = out.outputs.get(entry_id, ())
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
        lo, hi = min(done, key=_id_order), max(done, key=_id_order)
        payload = _pack_batch(entries)
        return [
            ["EVALSHA", self._script_sha(), len(keys), *keys, group, self.name, lo, hi, payload]
        ]

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


async def acked_floor(client: Any, stream: str) -> bytes | None:
    """The lowest id any group still needs (oldest pending, or next undelivered): entries
    below it were delivered to and acked by every group. None when there are no groups."""
    floor: tuple[int, int] | None = None
    for g in await client.xinfo_groups(stream):
        summary = await client.xpending(stream, g["name"])
        if summary["pending"]:
            cand = _id_order(_text(summary["min"]))
        else:
            ms, seq = _id_order(_text(g["last-delivered-id"]))
            cand = (ms, seq + 1)
        floor = cand if floor is None or cand < floor else floor
    return None if floor is None else f"{floor[0]}-{floor[1]}".encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_pack_batch = msgspec.msgpack.Encoder().encode


def _pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP-encode commands; several times faster than redis-py's packer for long commands."""
    out: list[bytes] = []
    add = out.append
    for cmd in commands:
        add(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            t = type(arg)
            if t is str:
                b = arg.encode()
            elif t is bytes:
                b = arg
            elif t is int:
                b = b"%d" % arg
            else:
                b = (
                    arg.encode()
                    if isinstance(arg, str)
                    else bytes(arg)
                    if isinstance(arg, bytes | bytearray | memoryview)
                    else str(arg).encode()
                )
            add(b"$%d\r\n" % len(b))
            add(b)
            add(b"\r\n")
    return b"".join(out)


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))


def encode_output(record: Any) -> dict[Any, Any]:
    """Fields of a record sent from a handler (validated now, so errors surface in the handler)."""
    return encode_fields(record)
