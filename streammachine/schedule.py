"""Timer leases, cron, delayed sends and rate limits: scheduling that holds across processes and hosts.

Keys (each under one hash tag, so the keys of one scope share a Redis Cluster slot):

* `streammachine:lease:{<app>}:timers` — the token of the process that runs the app's
  `scope="app"` timers (SET NX PX, renewed by compare-and-pexpire, released by compare-and-delete);
* `streammachine:cron:{<app>}:<cron>` — the newest fire time (epoch ms) claimed of that cron;
  a fire time is run by the process whose compare-and-set moves it forward, so once;
* `streammachine:sched:{<namespace>}` — the delayed entries of a namespace: a sorted set scored
  by due time (epoch ms) whose members carry the whole entry (see `encode_entry`), so scheduling
  is one ZADD and moving is one script that reads nothing but that key; `…:inflight` (cluster
  fallback) and `…:failed` (entries Redis refused to append) beside it;
* `streammachine:rate:{<name>}` — a GCRA limiter's theoretical arrival time (epoch µs).

Example:
    >>> schedule_commands("default", "orders", ["id", "7"], 1700000000000)[0][:3]
    ['ZADD', 'streammachine:sched:{default}', 1700000000000]
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .exceptions import ConfigError

if TYPE_CHECKING:
    from .connection import RedisConnection
    from .timer import Timer

__all__ = [
    "Cron",
    "Lease",
    "RateLimiter",
    "ScheduledEntry",
    "Scheduler",
    "decode_entry",
    "due_ms",
    "encode_entry",
    "parse_duration",
    "parse_rate",
    "run_leased_timers",
    "schedule_commands",
    "scheduled_key",
    "takeover_bound_s",
]

log = logging.getLogger("streammachine.schedule")

PREFIX = "streammachine"
#: How often a mover looks for due entries when none is due sooner.
MOVER_POLL_S = 0.2
#: Entries one mover call moves at most (it calls again at once while there are more).
MOVE_LIMIT = 1000
#: A cluster mover's claim on entries it is appending; after this they are moved again.
INFLIGHT_MS = 30_000


# --- key names ---------------------------------------------------------------------------------


def scheduled_key(namespace: str) -> str:
    """The sorted set of the delayed entries of `namespace`.

    Example:
        >>> scheduled_key("default")
        'streammachine:sched:{default}'
    """
    return f"{PREFIX}:sched:{{{namespace}}}"


def timer_lease_key(app: str) -> str:
    """The lease key whose holder runs the `scope="app"` timers of app `app`."""
    return f"{PREFIX}:lease:{{{app}}}:timers"


def cron_key(app: str, cron: str) -> str:
    """The key holding the newest claimed fire time of cron `cron` of app `app`."""
    return f"{PREFIX}:cron:{{{app}}}:{cron}"


def rate_key(name: str) -> str:
    """The key of rate limiter `name`."""
    return f"{PREFIX}:rate:{{{name}}}"


# --- durations and rates -----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(\d*)\s*(s|sec|m|min|h|hour)\s*$")
_PER_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `"30s"`, `"250ms"`, `"5m"`, `"2h"`, `"1d"` or a plain number of seconds.

    Example:
        >>> parse_duration("1m"), parse_duration("250ms"), parse_duration("2")
        (60.0, 0.25, 2.0)
    """
    m = _DURATION.match(text)
    if m is None:
        raise ConfigError(
            f"{text!r} is not a duration: use a number with a unit, e.g. 30s, 250ms, 5m, 2h or 1d"
        )
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_rate(text: str) -> float:
    """Tokens per second in a rate such as `"200/s"`, `"10/m"`, `"5/h"` (or `"3/10s"`).

    Example:
        >>> parse_rate("200/s"), parse_rate("30/m"), parse_rate("3/10s")
        (200.0, 0.5, 0.3)
    """
    m = _RATE.match(text) if isinstance(text, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(
            f"rate_limit {text!r} is not a rate: use a positive count per unit, "
            "e.g. '200/s', '10/m' or '5/h'"
        )
    per = float(m.group(2) or 1) * _PER_S[m.group(3)]
    if per <= 0:
        raise ConfigError(f"rate_limit {text!r}: the period must be > 0")
    return float(m.group(1)) / per


def due_ms(delay_s: float | None = None, at: datetime | float | None = None) -> int | None:
    """The due time (epoch ms) of a delayed send, or None for a send now.

    Args:
        delay_s: seconds from now.
        at: a datetime (a naive one is local time, as `datetime.timestamp` takes it) or epoch
            seconds.

    Example:
        >>> due_ms(at=1700000000.5)
        1700000000500
    """
    if delay_s is not None and at is not None:
        raise ConfigError("give delay_s or at, not both")
    if delay_s is not None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float) or delay_s < 0:
            raise ConfigError(f"delay_s must be a number of seconds >= 0, not {delay_s!r}")
        return int((time.time() + delay_s) * 1000)
    if at is None:
        return None
    if isinstance(at, datetime):
        return int(at.timestamp() * 1000)
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ConfigError(f"at must be a datetime or epoch seconds, not {type(at).__name__}")
    return int(at * 1000)


def takeover_bound_s(interval_s: float) -> float:
    """How long at most before another process runs a timer whose runner died.

    Example:
        >>> takeover_bound_s(0.5), takeover_bound_s(10)
        (5.0, 30.0)
    """
    return max(3.0 * interval_s, 5.0)


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
        `scheduled_key(namespace)` (the only key touched).

    Example:
        >>> cmds = schedule_commands("default", "orders", ["id", "7"], 1700000000000)
        >>> cmds[0][0], cmds[0][1]
        ('ZADD', 'streammachine:sched:{default}')
    """
    member = encode_entry(entry_id or _new_id(), stream, fields, maxlen)
    return [["ZADD", scheduled_key(namespace), int(due), member]]


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
        self.key = scheduled_key(namespace)
        self.inflight_key = f"{self.key}:inflight"
        self.failed_key = f"{self.key}:failed"
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Scheduler(namespace={self.namespace!r})"

    def _script(self, source: str) -> Any:
        client = self.redis.client
        found = self._scripts.get(source)
        if found is None or found.registered_client is not client:
            found = self._scripts[source] = client.register_script(source)
        return found

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
        reply = await self._script(MOVE_SCRIPT)(keys=[self.key, self.failed_key], args=[limit])
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
        reply = await self._script(CLAIM_SCRIPT)(
            keys=[self.key, self.inflight_key], args=[limit, INFLIGHT_MS]
        )
        now, nxt, members = int(reply[0]), reply[1], list(reply[2:])
        client = self.redis.client
        for member in members:
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


# --- leases and timers -------------------------------------------------------------------------

# Take or keep the lease: renew it when we hold it, else take it when nobody does.
LEASE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """A lease in Redis: at most one holder at a time, lost when the holder stops renewing it.

    Example:
        >>> lease = Lease(app.redis, "streammachine:lease:{orders}:timers", ttl_s=3)  # doctest: +SKIP
        >>> await lease.acquire()  # doctest: +SKIP
        True
    """

    def __init__(self, redis: RedisConnection, key: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = f"{time.time_ns():x}-{secrets.token_hex(8)}"
        self._scripts: dict[str, Any] = {}

    def _script(self, source: str) -> Any:
        client = self.redis.client
        found = self._scripts.get(source)
        if found is None or found.registered_client is not client:
            found = self._scripts[source] = client.register_script(source)
        return found

    async def acquire(self) -> bool:
        """Take the lease if free, or renew it if held; True when this holder has it."""
        return bool(
            await self._script(LEASE_SCRIPT)(keys=[self.key], args=[self.token, self.ttl_ms])
        )

    async def release(self) -> bool:
        """Give the lease up if this holder still has it."""
        return bool(await self._script(RELEASE_SCRIPT)(keys=[self.key], args=[self.token]))


async def run_leased_timers(
    redis: RedisConnection, app_name: str, timers: Sequence[Timer], stop: anyio.Event
) -> None:
    """Run `timers` in this process while it holds the app's timer lease (until `stop`).

    The lease lives `ttl = min(0.45 x bound, 15 s)` with `bound = max(3 x interval, 5 s)` of
    the shortest interval, is renewed every ttl/3, and the others try to take it as often; so a
    dead runner's timers run again elsewhere within the bound. When the lease is lost (another
    process took it, or Redis could not confirm it before it would have expired), a run in
    progress is cancelled so the timers never run in two processes at once; on a clean stop it
    finishes, and the lease is released so another process takes over at once.

    Example:
        >>> leased = [t for t in app.timers if t.config.scope == "app"]  # doctest: +SKIP
        >>> await run_leased_timers(app.redis, app.name, leased, stop)  # doctest: +SKIP
    """
    if not timers:
        return
    bound = takeover_bound_s(min(float(t.config.interval) for t in timers))
    ttl_s = min(0.45 * bound, 15.0)
    renew_s = ttl_s / 3
    lease = Lease(redis, timer_lease_key(app_name), ttl_s)
    failing = False

    async def try_lease() -> bool | None:
        nonlocal failing
        try:
            with anyio.fail_after(max(1.0, renew_s)):
                held = await lease.acquire()
            failing = False
            return held
        except Exception as exc:
            if not failing:
                log.warning("timer lease: Redis error (%s: %s)", type(exc).__name__, exc)
            failing = True
            return None

    try:
        while not stop.is_set():
            if not await try_lease():
                with anyio.move_on_after(renew_s):
                    await stop.wait()
                continue
            log.info("this process runs the timers of %s (lease %s)", app_name, lease.key)
            valid_until = anyio.current_time() + ttl_s
            timers_stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                for t in timers:
                    tg.start_soon(t.run, timers_stop)
                while True:
                    with anyio.move_on_after(renew_s):
                        await stop.wait()
                    if stop.is_set():
                        timers_stop.set()  # runs in progress finish
                        break
                    held = await try_lease()
                    if held:
                        valid_until = anyio.current_time() + ttl_s
                    elif held is False or anyio.current_time() >= valid_until - renew_s:
                        log.warning("timer lease of %s lost: its timers run elsewhere", app_name)
                        tg.cancel_scope.cancel()
                        break
    finally:
        with anyio.move_on_after(2.0, shield=True):
            try:
                await lease.release()
            except Exception as exc:
                log.debug("could not release the timer lease (%s); it expires", exc)


# --- cron ----------------------------------------------------------------------------------------

# Claim fire time ARGV[1] (epoch ms): only when it is newer than every fire time claimed so far,
# so each is run once across the app; a catch-up claim (ARGV[2] = 1) also needs an earlier one.
CLAIM_FIRE_SCRIPT = """
local last = redis.call('GET', KEYS[1])
if ARGV[2] == '1' and not last then return 0 end
if last and tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

#: A fire time missed by at most this long (e.g. during a failover) is fired late, once.
CRON_CATCH_UP_S = 60.0


class Cron:
    """A registered `@app.cron(expr)` task: fired at wall-clock times, once per fire time across
    the app (`scope="app"`), or in every process (`scope="instance"`).

    Catch-up rule: a process that starts (or wakes) finds the newest past fire time; if nobody
    claimed it, the cron has fired before on that Redis, and it is at most `catch_up_s` old,
    it is fired late, once. Older missed fire times are skipped, never fired in a burst.

    Example:
        >>> Cron(lambda: None, "*/5 * * * *").fields  # doctest: +SKIP
        5
    """

    def __init__(
        self,
        fn: Callable[[], Awaitable[Any]],
        expr: str,
        *,
        tz: str = "UTC",
        scope: str = "app",
        name: str | None = None,
        catch_up_s: float = CRON_CATCH_UP_S,
    ) -> None:
        self.fields, self.tz = self.check(expr, tz, scope)
        self.fn = fn
        self.expr = expr
        self.scope = scope
        self.name: str = name or str(getattr(fn, "__name__", "cron"))
        self.catch_up_s = catch_up_s
        self.runs = 0
        self.failures = 0
        self.next_run: float | None = None
        #: The fire time (epoch seconds) of the run in progress, or of the last one.
        self.last_fire: float | None = None

    @staticmethod
    def check(expr: str, tz: str = "UTC", scope: str = "app") -> tuple[int, Any]:
        """Validate the arguments; returns the number of fields and the time zone."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from croniter import croniter

        if scope not in ("app", "instance"):
            raise ConfigError(f"scope must be 'app' or 'instance', not {scope!r}")
        fields = len(expr.split()) if isinstance(expr, str) else 0
        if fields not in (5, 6) or not croniter.is_valid(expr, second_at_beginning=fields == 6):
            raise ConfigError(
                f"cron {expr!r} is not a cron expression: give five fields "
                "(minute hour day month weekday, e.g. '*/5 * * * *') or six with a leading "
                "seconds field (e.g. '*/10 * * * * *')"
            )
        try:
            return fields, ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"tz {tz!r} is not a time zone: use an IANA name such as 'UTC' or 'Europe/Paris'"
            ) from None

    def __repr__(self) -> str:
        return f"Cron({self.name!r}, {self.expr!r}, scope={self.scope!r})"

    def _iter(self, start: float) -> Any:
        from croniter import croniter

        return croniter(
            self.expr, datetime.fromtimestamp(start, self.tz), second_at_beginning=self.fields == 6
        )

    def next_after(self, t: float) -> float:
        """The first fire time after `t` (epoch seconds)."""
        return float(self._iter(t).get_next(float))

    def prev_before(self, t: float) -> float:
        """The newest fire time at or before `t` (epoch seconds)."""
        return float(self._iter(t + 0.001).get_prev(float))

    async def run_once(self) -> None:
        """Run the task once now; an error is logged, not raised."""
        try:
            await self.fn()
            self.runs += 1
        except Exception:
            self.failures += 1
            log.exception("cron %s failed; it runs again at its next fire time", self.name)

    async def run(
        self, stop: anyio.Event, redis: RedisConnection | None = None, app_name: str = ""
    ) -> None:
        """Fire until `stop`; with `redis`, claim each fire time first (scope "app")."""
        key = cron_key(app_name, self.name)
        script = redis.client.register_script(CLAIM_FIRE_SCRIPT) if redis is not None else None

        async def claim(fire: float, catch_up: bool) -> bool:
            if script is None:
                return not catch_up
            try:
                return bool(await script(keys=[key], args=[int(fire * 1000), int(catch_up)]))
            except Exception as exc:
                log.warning("cron %s: cannot claim its fire time (%s); skipped", self.name, exc)
                return False

        prev = self.prev_before(time.time())
        if time.time() - prev <= self.catch_up_s and await claim(prev, True):
            log.info("cron %s: firing the missed fire time %.3f late", self.name, prev)
            self.last_fire = prev
            await self.run_once()
        while not stop.is_set():
            fire = self.next_run = self.next_after(time.time())
            while not stop.is_set() and time.time() < fire:
                with anyio.move_on_after(max(0.0, fire - time.time())):
                    await stop.wait()
            if stop.is_set():
                break
            if await claim(fire, False):
                self.last_fire = fire
                await self.run_once()


# --- rate limits ---------------------------------------------------------------------------------

# GCRA as reservations: each call takes n tokens and returns how long (µs) the caller waits before
# using them, so waiting callers never call again and the combined rate is the limit. KEYS[1]
# holds the theoretical arrival time (epoch µs, Redis' clock); ARGV: µs per token, burst
# tolerance µs, n.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
local new = tat + tonumber(ARGV[3]) * tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return wait
"""


class RateLimiter:
    """A rate limit shared by every process and host using the same `name` on one Redis (GCRA,
    one script call per `acquire`).

    Args:
        redis: the connection.
        name: the limit's name (its key is `streammachine:rate:{<name>}`).
        rate: `"200/s"`, `"10/m"`, `"5/h"`, or tokens per second as a number.
        burst: tokens that may be taken at once after a quiet spell (default 1).

    Example:
        >>> limiter = RateLimiter(app.redis, "orders:bill", "200/s")  # doctest: +SKIP
        >>> await limiter.acquire(len(batch))  # doctest: +SKIP
        0.0
    """

    def __init__(
        self, redis: RedisConnection, name: str, rate: str | float, *, burst: int = 1
    ) -> None:
        per_s = parse_rate(rate) if isinstance(rate, str) else float(rate)
        if per_s <= 0 or burst < 1:
            raise ConfigError("a rate must be > 0 and burst >= 1")
        self.redis = redis
        self.name = name
        self.rate_per_s = per_s
        self.key = rate_key(name)
        self.interval_us = 1e6 / per_s
        self.tolerance_us = (burst - 1) * self.interval_us
        self._script: Any = None

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {self.rate_per_s:g}/s)"

    async def reserve(self, n: int = 1) -> float:
        """Take `n` tokens now; returns the seconds to wait before using them."""
        client = self.redis.client
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(RATE_SCRIPT)
        wait_us = await self._script(
            keys=[self.key], args=[repr(self.interval_us), repr(self.tolerance_us), int(n)]
        )
        return float(wait_us) / 1e6

    async def acquire(self, n: int = 1) -> float:
        """Wait (sleeping, not polling) until `n` tokens are allowed; returns the seconds waited."""
        if n <= 0:
            return 0.0
        wait = await self.reserve(n)
        if wait > 0:
            await anyio.sleep(wait)
        return wait
