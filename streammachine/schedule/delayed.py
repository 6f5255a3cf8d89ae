"""Delayed entries: `send(..., delay_s=)` kept in a sorted set per namespace until due, then moved
to their stream by one script that every running app calls (`Scheduler.run_mover`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from redis.exceptions import ResponseError

from .. import keys
from ..failpoints import failpoint
from .backlog import scheduled_summary
from .entries import (
    MAX_DELAYED_FIELDS,
    ScheduledEntry,
    decode_entry,
    encode_entry,
    flat_fields,
    new_id,
    schedule_commands,
)

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = [
    "INFLIGHT_MS",
    "MAX_DELAYED_FIELDS",
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

#: How often at the latest a mover looks for due entries: it looks when the soonest entry is due,
#: and at once after its own app scheduled one; so only an entry another process scheduled less
#: than this before its due time may be appended up to this late.
MOVER_POLL_S = 1.0
#: Entries one mover call moves at most (it calls again at once while there are more).
MOVE_LIMIT = 1000
#: A cluster mover's claim on entries it is appending; after this they are moved again.
INFLIGHT_MS = 30_000


# Moves the due entries of one namespace to their streams, removing them in the same step, so
# each is appended once. Time is Redis' clock (one clock for every host). An entry that cannot be
# appended (a member that is not an entry, more fields than the script's stack holds, its stream
# key of another type, ...) goes to KEYS[2] instead of blocking the rest.
# KEYS: [scheduled, failed]; ARGV: [limit, max fields].
# Returns {moved, failed, now_ms, next due score or '', why the first failure or ''}.
MOVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local cap = tonumber(ARGV[2]) * 2 + 2
local function move(m)
  local len = #m
  if len < 26 or string.sub(m, 25, 25) ~= '|' then return 'not a delayed entry' end
  local items, pos = {}, 26
  while pos <= len do
    local colon = string.find(m, ':', pos, true)
    if not colon or colon - pos > 12 then return 'not a delayed entry' end
    local n = tonumber(string.sub(m, pos, colon - 1))
    if not n or n < 0 or n % 1 ~= 0 or colon + n > len then return 'not a delayed entry' end
    if #items >= cap then return 'more fields than a delayed entry may hold' end
    items[#items + 1] = string.sub(m, colon + 1, colon + n)
    pos = colon + n + 1
  end
  if #items < 4 or #items % 2 == 1 then return 'not a delayed entry (no fields)' end
  local maxlen, ok = tonumber(items[2]), nil
  if not maxlen then return 'not a delayed entry (bad maxlen)' end
  if maxlen > 0 then
    ok = redis.pcall('XADD', items[1], 'MAXLEN', '~', maxlen, '*', unpack(items, 3))
  elseif maxlen < 0 then
    ok = redis.pcall('XADD', items[1], 'MAXLEN', -maxlen, '*', unpack(items, 3))
  else
    ok = redis.pcall('XADD', items[1], '*', unpack(items, 3))
  end
  if type(ok) == 'table' and ok.err then return ok.err end
  return nil
end
local failed, why = 0, ''
for i = 1, #due do
  local done, err = pcall(move, due[i])
  if err then
    failed = failed + 1
    if why == '' then why = tostring(err) end
    redis.call('ZADD', KEYS[2], now, due[i])
  end
end
if #due > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #due - 1) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due - failed, failed, now, nxt[2] or '', why}
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
        self._wake: anyio.Event | None = None  # set by a send: the mover looks at once

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
        ids = [new_id() for _ in records]
        args: list[Any] = []
        for entry_id, fields in zip(ids, records, strict=True):
            args += [int(due), encode_entry(entry_id, stream, flat_fields(fields), maxlen)]
        if args:
            await self.redis.client.execute_command("ZADD", self.key, *args)  # type: ignore[no-untyped-call]
            if self._wake is not None:
                self._wake.set()
        return ids

    async def move_due(self, limit: int = MOVE_LIMIT) -> MoveResult:
        """Append up to `limit` due entries to their streams and remove them, in one script.

        An entry that cannot be appended (not an entry, too many fields, a stream key of another
        type) is moved to `…:failed` (scored by when it failed) and the rest go on.

        On a Redis Cluster the streams may be on other nodes, which one script cannot reach:
        due entries are claimed into `…:inflight` with a deadline, appended, then removed from
        it; if this process dies in between, they are appended again after `INFLIGHT_MS`
        (at-least-once there, exactly once on one node).
        """
        if self.redis.is_cluster:
            return await self._move_cluster(limit)
        reply = await self.redis.script(MOVE_SCRIPT)(
            keys=[self.key, self.failed_key], args=[limit, MAX_DELAYED_FIELDS]
        )
        moved, failed, now = int(reply[0]), int(reply[1]), int(reply[2])
        if failed:
            why = reply[4] if len(reply) > 4 else b""
            self._failed(failed, why.decode("utf-8", "replace") if isinstance(why, bytes) else why)
        nxt = int(float(reply[3])) if len(reply) > 3 and reply[3] else None
        return MoveResult(moved, failed, now, nxt)

    def _failed(self, n: int, why: str) -> None:
        log.error(
            "%d delayed entries could not be appended (%s); they are kept in %s",
            n, str(why)[:200], self.failed_key,
        )  # fmt: skip

    async def _move_cluster(self, limit: int) -> MoveResult:
        reply = await self.redis.script(CLAIM_SCRIPT)(
            keys=[self.key, self.inflight_key], args=[limit, INFLIGHT_MS]
        )
        now, nxt, members = int(reply[0]), reply[1], list(reply[2:])
        client = self.redis.client
        failed, why = 0, ""
        for member in members:
            failpoint("mover.claimed")  # claimed into the in-flight set, not appended yet
            try:
                e = decode_entry(member, now)
                if not 1 <= len(e.fields) <= MAX_DELAYED_FIELDS:
                    raise ValueError(f"it has {len(e.fields)} fields")
                fields = [x for kv in e.fields for x in kv]
                args: list[Any] = ["XADD", e.stream]
                if e.maxlen > 0:
                    args += ["MAXLEN", "~", e.maxlen]
                elif e.maxlen < 0:
                    args += ["MAXLEN", -e.maxlen]
                await client.execute_command(*args, "*", *fields)  # type: ignore[no-untyped-call]
            except (ValueError, IndexError, ResponseError) as exc:  # cannot be delivered
                failed += 1
                why = why or f"{type(exc).__name__}: {exc}"
                await client.zadd(self.failed_key, {member: now})
            await client.zrem(self.inflight_key, member)
        if failed:
            self._failed(failed, why)
        nxt_ms = int(float(nxt)) if nxt else None
        return MoveResult(len(members) - failed, failed, now, nxt_ms)

    def wake(self) -> None:
        """Have this scheduler's running mover look at once (a send scheduled something)."""
        if self._wake is not None:
            self._wake.set()

    async def run_mover(self, stop: anyio.Event, poll_s: float = MOVER_POLL_S) -> None:
        """Move due entries until `stop` (an `App.background` task): one cheap call when the
        soonest entry is due, at the latest every `poll_s` (entries other processes schedule),
        at once when this scheduler scheduled something, and at once again while a call found
        a full batch."""
        failing = False
        while not stop.is_set():
            wake = self._wake = anyio.Event()
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
                async with anyio.create_task_group() as tg:

                    async def woken(event: anyio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(woken, stop)
                    tg.start_soon(woken, wake)

    async def entries(self, stream: str | None = None, limit: int = 1000) -> list[ScheduledEntry]:
        """What waits, soonest first (at most `limit`, of `stream` only when given)."""
        out: list[ScheduledEntry] = []
        start, page = 0, 1000
        client = self.redis.client
        while len(out) < limit:
            reply: Any = await client.zrange(self.key, start, start + page - 1, withscores=True)
            for member, score in reply:
                try:
                    e = decode_entry(member, score)
                except (ValueError, IndexError):  # not an entry (the mover sets it aside)
                    continue
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
