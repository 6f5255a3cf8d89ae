"""Delayed entries: `send(..., delay_s=)` kept in a sorted set per namespace until due, then moved
to their stream by one script that every running app calls (`Scheduler.run_mover`).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .. import keys
from ..failpoints import failpoint

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = [
    "INFLIGHT_MS",
    "MOVER_POLL_S",
    "MOVE_LIMIT",
    "ScheduledEntry",
    "Scheduler",
    "decode_entry",
    "encode_entry",
    "schedule_commands",
    "scheduled_summary",
]

log = logging.getLogger("streammachine.schedule")

#: How often a mover looks for due entries when none is due sooner.
MOVER_POLL_S = 0.2
#: Entries one mover call moves at most (it calls again at once while there are more).
MOVE_LIMIT = 1000
#: A cluster mover's claim on entries it is appending; after this they are moved again.
INFLIGHT_MS = 30_000


# --- delayed entries ---------------------------------------------------------------------------

_counter = itertools.count()


def _new_id() -> str:
    # Time first, so entries due at the same ms keep the order they were scheduled in.
    return f"{time.time_ns() + next(_counter) % 1000:016x}{secrets.token_hex(4)}"


_ID_LEN = 24


def _b(item: Any) -> bytes:
    if type(item) is bytes:
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return str(item).encode()


def encode_entry(
    entry_id: str, stream: str, fields: Sequence[bytes | str], maxlen: int | None = None
) -> bytes:
    """One delayed entry as a sorted-set member: its id, `|`, then `<len>:<bytes>` for the
    stream, the maxlen (0 = none, > 0 approximate, < 0 exact) and each field name and value.

    Length-prefixed bytes keep binary values and field order exact, and a Lua script can read
    them with string.find/sub (fakeredis' Lua, behind `memory://`, has no cmsgpack).

    Example:
        >>> encode_entry("0" * 24, "s", ["k", b"v"])[24:]
        b'|1:s1:01:k1:v'
    """
    parts = [entry_id.encode(), b"|"]
    for item in (stream, str(maxlen or 0), *fields):
        raw = _b(item)
        parts.append(b"%d:" % len(raw))
        parts.append(raw)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ScheduledEntry:
    """A delayed entry waiting in Redis."""

    id: str
    stream: str
    due_ms: int
    fields: list[tuple[bytes, bytes]]
    maxlen: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: fields decoded as UTF-8 (bad bytes replaced)."""
        return {
            "id": self.id,
            "stream": self.stream,
            "due_ms": self.due_ms,
            "fields": {
                k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in self.fields
            },
        }


def decode_entry(member: bytes, score: float) -> ScheduledEntry:
    """A sorted-set member written by `encode_entry` (and its score) as a `ScheduledEntry`."""
    items: list[bytes] = []
    pos, end = _ID_LEN + 1, len(member)
    while pos < end:
        colon = member.index(b":", pos)
        n = int(member[pos:colon])
        items.append(member[colon + 1 : colon + 1 + n])
        pos = colon + 1 + n
    flat = items[2:]
    return ScheduledEntry(
        id=member[:_ID_LEN].decode(),
        stream=items[0].decode("utf-8", "replace"),
        due_ms=int(score),
        fields=list(zip(flat[::2], flat[1::2], strict=False)),
        maxlen=int(items[1]),
    )


def _flat(fields: Mapping[Any, Any] | Sequence[Any]) -> list[Any]:
    if isinstance(fields, Mapping):
        return [x for kv in fields.items() for x in kv]
    return list(fields)


def schedule_commands(
    namespace: str,
    stream: str,
    fields: Sequence[bytes | str],
    due: int,
    maxlen: int | None = None,
    entry_id: str | None = None,
) -> list[list[Any]]:
    """The Redis commands that schedule one entry (for a commit that writes them atomically).

    Args:
        namespace: the storage namespace whose movers move it.
        stream: where it goes when due.
        fields: `[k1, v1, k2, v2, ...]`, str or bytes (bytes kept exactly).
        due: the due time, epoch ms.
        maxlen: trim `stream` when the entry is appended (> 0 approximately, < 0 exactly).
        entry_id: its schedule id (default: a new one).

    Returns:
        A list of commands, each a list of arguments; today one `ZADD` on
        `keys.scheduled(namespace)` (the only key touched).

    Example:
        >>> cmds = schedule_commands("default", "orders", ["id", "7"], 1700000000000)
        >>> cmds[0][0], cmds[0][1]
        ('ZADD', 'streammachine:sched:{default}')
    """
    member = encode_entry(entry_id or _new_id(), stream, fields, maxlen)
    return [["ZADD", keys.scheduled(namespace), int(due), member]]


# Moves the due entries of one namespace to their streams, removing them in the same step, so
# each is appended once. Time is Redis' clock (one clock for every host). An entry Redis refuses
# to append (e.g. its stream key is another type) goes to KEYS[2] instead of blocking the rest.
# KEYS: [scheduled, failed]; ARGV: [limit]. Returns {moved, failed, now_ms, next due score?}.
MOVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local failed = 0
for i = 1, #due do
  local m = due[i]
  local items, pos, len = {}, 26, #m
  while pos <= len do
    local colon = string.find(m, ':', pos, true)
    local n = tonumber(string.sub(m, pos, colon - 1))
    items[#items + 1] = string.sub(m, colon + 1, colon + n)
    pos = colon + n + 1
  end
  local maxlen, ok = tonumber(items[2]), nil
  if maxlen > 0 then
    ok = redis.pcall('XADD', items[1], 'MAXLEN', '~', maxlen, '*', unpack(items, 3))
  elseif maxlen < 0 then
    ok = redis.pcall('XADD', items[1], 'MAXLEN', -maxlen, '*', unpack(items, 3))
  else
    ok = redis.pcall('XADD', items[1], '*', unpack(items, 3))
  end
  if type(ok) == 'table' and ok.err then
    failed = failed + 1
    redis.call('ZADD', KEYS[2], now, m)
  end
end
if #due > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due - failed, failed, now, nxt[2]}
"""

# Cluster fallback (a stream may live in another slot than the sorted set, and a script may only
# touch keys of its own slot): claim due entries into KEYS[2] with a deadline, the caller appends
# them and then removes them from KEYS[2]. A caller that dies in between leaves them there; after
# the deadline the next claim hands them out again, so they are appended at least once.
# KEYS: [scheduled, inflight]; ARGV: [limit, inflight ms]. Returns {now_ms, next due?, members...}.
CLAIM_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for i = 1, #stale do
  redis.call('ZADD', KEYS[1], now, stale[i])
  redis.call('ZREM', KEYS[2], stale[i])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for i = 1, #due do redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), due[i]) end
if #due > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {now, nxt[2] or '', unpack(due)}
"""


@dataclass(frozen=True, slots=True)
class MoveResult:
    """What one mover call did: entries moved, entries Redis refused, Redis' time and the next
    due time (None when nothing waits)."""

    moved: int
    failed: int
    now_ms: int
    next_due_ms: int | None


class Scheduler:
    """The delayed entries of one namespace: schedule them, list them, move the due ones.

    Every running App runs `run_mover` for its storage namespace; any number of movers may run
    at once, and each entry is appended to its stream once (on a Redis Cluster, at least once:
    see `move_due`).

    Example:
        >>> sched = Scheduler(app.redis, "default")  # doctest: +SKIP
        >>> await sched.schedule("orders", {"id": "7"}, due_ms(delay_s=30))  # doctest: +SKIP
        '17a2b3c4d5e6f708a1b2c3d4'
    """

    def __init__(self, redis: RedisConnection, namespace: str = "default") -> None:
        self.redis = redis
        self.namespace = namespace
        self.key = keys.scheduled(namespace)
        self.inflight_key = f"{self.key}:inflight"
        self.failed_key = f"{self.key}:failed"

    def __repr__(self) -> str:
        return f"Scheduler(namespace={self.namespace!r})"

    async def schedule(
        self,
        stream: str,
        fields: Mapping[Any, Any] | Sequence[Any],
        due: int,
        maxlen: int | None = None,
    ) -> str:
        """Keep one entry until `due` (epoch ms); returns its schedule id."""
        return (await self.schedule_many(stream, [fields], due, maxlen))[0]

    async def schedule_many(
        self,
        stream: str,
        records: Sequence[Mapping[Any, Any] | Sequence[Any]],
        due: int,
        maxlen: int | None = None,
    ) -> list[str]:
        """Keep many entries until `due` (one ZADD); returns their schedule ids in order."""
        ids = [_new_id() for _ in records]
        args: list[Any] = []
        for entry_id, fields in zip(ids, records, strict=True):
            args += [int(due), encode_entry(entry_id, stream, _flat(fields), maxlen)]
        if args:
            await self.redis.client.execute_command("ZADD", self.key, *args)  # type: ignore[no-untyped-call]
        return ids

    async def move_due(self, limit: int = MOVE_LIMIT) -> MoveResult:
        """Append up to `limit` due entries to their streams and remove them, in one script.

        On a Redis Cluster the streams may be on other nodes, which one script cannot reach:
        due entries are claimed into `…:inflight` with a deadline, appended, then removed from
        it; if this process dies in between, they are appended again after `INFLIGHT_MS`
        (at-least-once there, exactly once on one node).
        """
        if self.redis.is_cluster:
            return await self._move_cluster(limit)
        reply = await self.redis.script(MOVE_SCRIPT)(keys=[self.key, self.failed_key], args=[limit])
        moved, failed, now = int(reply[0]), int(reply[1]), int(reply[2])
        if failed:
            log.error(
                "%d delayed entries could not be appended (is a stream key of another type?); "
                "they are kept in %s",
                failed, self.failed_key,
            )  # fmt: skip
        nxt = int(float(reply[3])) if len(reply) > 3 and reply[3] else None
        return MoveResult(moved, failed, now, nxt)

    async def _move_cluster(self, limit: int) -> MoveResult:
        reply = await self.redis.script(CLAIM_SCRIPT)(
            keys=[self.key, self.inflight_key], args=[limit, INFLIGHT_MS]
        )
        now, nxt, members = int(reply[0]), reply[1], list(reply[2:])
        client = self.redis.client
        for member in members:
            failpoint("mover.claimed")  # claimed into the in-flight set, not appended yet
            e = decode_entry(member, now)
            fields = [x for kv in e.fields for x in kv]
            args: list[Any] = ["XADD", e.stream]
            if e.maxlen > 0:
                args += ["MAXLEN", "~", e.maxlen]
            elif e.maxlen < 0:
                args += ["MAXLEN", -e.maxlen]
            await client.execute_command(*args, "*", *fields)  # type: ignore[no-untyped-call]
            await client.zrem(self.inflight_key, member)
        return MoveResult(len(members), 0, now, int(float(nxt)) if nxt else None)

    async def run_mover(self, stop: anyio.Event, poll_s: float = MOVER_POLL_S) -> None:
        """Move due entries until `stop` (an `App.background` task): one cheap call every
        `poll_s` while nothing is due sooner, at once again while a call found a full batch."""
        failing = False
        while not stop.is_set():
            try:
                with anyio.fail_after(10):
                    r = await self.move_due()
                if failing:
                    log.info("delayed-entry mover: Redis answers again")
                failing = False
            except Exception as exc:  # the mover must never take the app down
                if not failing:
                    log.warning(
                        "delayed-entry mover failed (%s: %s); retrying", type(exc).__name__, exc
                    )
                failing = True
                with anyio.move_on_after(1.0):
                    await stop.wait()
                continue
            if r.moved + r.failed >= MOVE_LIMIT:
                await anyio.lowlevel.checkpoint()
                continue
            wait = poll_s
            if r.next_due_ms is not None:
                wait = min(wait, max(0.0, (r.next_due_ms - r.now_ms) / 1000))
            with anyio.move_on_after(wait):
                await stop.wait()

    async def entries(self, stream: str | None = None, limit: int = 1000) -> list[ScheduledEntry]:
        """What waits, soonest first (at most `limit`, of `stream` only when given)."""
        out: list[ScheduledEntry] = []
        start, page = 0, 1000
        client = self.redis.client
        while len(out) < limit:
            reply: Any = await client.zrange(self.key, start, start + page - 1, withscores=True)
            for member, score in reply:
                e = decode_entry(member, score)
                if stream is None or e.stream == stream:
                    out.append(e)
                    if len(out) >= limit:
                        break
            if len(reply) < page:
                break
            start += page
        return out

    async def summary(self) -> dict[str, Any]:
        """`{"namespace", "count", "oldest_due_ms"}` (oldest = soonest due; None when empty)."""
        return await scheduled_summary(self.redis.client, self.key)


async def scheduled_summary(client: Any, key: str) -> dict[str, Any]:
    """Count and soonest due time of one scheduled key (for the dashboard and `/metrics`)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcard(key)
        pipe.zrange(key, 0, 0, withscores=True)
        count, first = await pipe.execute()
    namespace = key[key.index("{") + 1 : key.rindex("}")] if "{" in key else key
    return {
        "namespace": namespace,
        "count": int(count),
        "oldest_due_ms": int(first[0][1]) if first else None,
    }
