"""Every commit of a batch, and the scripts that guard a consumer's entries.

Sends made inside a handler are buffered in the batch (`current_batch`) and written by one Lua
script together with the batch's acks, only for the entries the consumer still owns in the group's
PEL: on one Redis node a stream-to-stream stage is then exactly-once, even when a consumer stalls
long enough for another to claim its entries. `memory://` (fakeredis, which has no cmsgpack) runs
a twin of the script that takes the batch as flat arguments and gives the same guarantees.

The other scripts make the liveness rules of DESIGN.md atomic: keepalive refreshes only entries the
consumer still owns, a retry re-takes only entries it still owns, and a dead consumer is deleted
only in the same step that checks it owns nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..codec import parse_entry_id

XADD, ZADD = 0, 1

__all__ = [
    "COMMIT_SCRIPT",
    "DELCONSUMER_SCRIPT",
    "MEMORY_COMMIT_SCRIPT",
    "RECLAIM_SCRIPT",
    "TOUCH_SCRIPT",
    "Batch",
    "acked_floor",
    "commit_commands",
    "current_batch",
    "pack",
    "sha1",
    "write_outputs",
]

# Writes outputs and acks only for entries this consumer still owns in the group's PEL, so a
# consumer that stalled while another claimed its entries drops them instead of committing twice.
# A batch handler's output belongs to the whole batch ("whole" = 1): it is written only if the
# consumer still owns every entry; otherwise nothing is written or acked and the script returns
# the ids it still owns, which the consumer handles again (the others are their new owner's).
# KEYS: [source stream, output keys...]; ARGV: group, consumer, lowest id, highest id, the batch
# packed with msgpack: [[done ids], [[entry id, key index, maxlen (0 = none), [k1, v1, ...],
# kind], ...], whole], kind 0 = XADD, 1 = a delayed send: ZADD of [member] with the due time in
# the maxlen slot; how many other entries this consumer may own, then the bytes values lifted
# out of the batch (a field that is a number n stands for ARGV[6 + n]).
COMMIT_SCRIPT = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local batch = cmsgpack.unpack(ARGV[5])
local done, outputs = batch[1], batch[2]
local binary = #ARGV > 6
local owned = {}
local count = #done + tonumber(ARGV[6])
for _, e in ipairs(redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], count, consumer)) do
  owned[e[1]] = true
end
if batch[3] == 1 then
  local kept = {}
  for _, id in ipairs(done) do
    if owned[id] then kept[#kept + 1] = id end
  end
  if #kept < #done then return kept end
end
for _, out in ipairs(outputs) do
  if owned[out[1]] then
    local key, maxlen, fields = KEYS[out[2]], out[3], out[4]
    if binary then
      for i = 1, #fields do
        if type(fields[i]) == 'number' then fields[i] = ARGV[6 + fields[i]] end
      end
    end
    if out[5] == 1 then
      redis.call('ZADD', key, maxlen, fields[1])
    elseif maxlen > 0 then
      redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    elseif maxlen < 0 then
      redis.call('XADD', key, 'MAXLEN', -maxlen, '*', unpack(fields))
    else
      redis.call('XADD', key, '*', unpack(fields))
    end
  end
end
local acks = {}
for _, id in ipairs(done) do
  if owned[id] then acks[#acks + 1] = id end
end
local acked = 0
for c = 1, #acks, 1000 do
  acked = acked + redis.call('XACK', stream, group, unpack(acks, c, math.min(c + 999, #acks)))
end
return acked
"""

# The same commit with the batch as flat arguments (fakeredis has no cmsgpack).
# ARGV: group, consumer, lowest id, highest id, XPENDING count, whole (0/1), number of done ids,
# the done ids, then per output: entry id, kind (0 XADD, 1 ZADD), key index, maxlen (or the due
# time), number of field values, the fields.
MEMORY_COMMIT_SCRIPT = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local owned = {}
for _, e in ipairs(redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], tonumber(ARGV[5]), consumer)) do
  owned[e[1]] = true
end
local n = tonumber(ARGV[7])
if ARGV[6] == '1' then
  local kept = {}
  for j = 8, 7 + n do
    if owned[ARGV[j]] then kept[#kept + 1] = ARGV[j] end
  end
  if #kept < n then return kept end
end
local i = 8 + n
while i <= #ARGV do
  local id, kind, key = ARGV[i], ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])]
  local maxlen, width = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  if owned[id] then
    local fields = {}
    for j = 1, width do fields[j] = ARGV[i + 4 + j] end
    if kind == '1' then
      redis.call('ZADD', key, maxlen, fields[1])
    elseif maxlen > 0 then
      redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    elseif maxlen < 0 then
      redis.call('XADD', key, 'MAXLEN', -maxlen, '*', unpack(fields))
    else
      redis.call('XADD', key, '*', unpack(fields))
    end
  end
  i = i + 5 + width
end
local acked = 0
for j = 8, 7 + n do
  if owned[ARGV[j]] then acked = acked + redis.call('XACK', stream, group, ARGV[j]) end
end
return acked
"""

# Keepalive: reset the idle time of the entries this consumer still owns (in flight, prefetched,
# waiting for a retry) once they have been idle `min idle` ms, so nobody claims them while the
# consumer is alive. JUSTID does not count a delivery. Entries another consumer claimed meanwhile
# are not in this consumer's PEL and are left alone.
# KEYS: [stream]; ARGV: group, consumer, min idle ms, max entries.
TOUCH_SCRIPT = """
local ids = {}
for _, e in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', tonumber(ARGV[3]), '-', '+', tonumber(ARGV[4]), ARGV[2])) do
  ids[#ids + 1] = e[1]
end
for c = 1, #ids, 500 do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids, c, math.min(c + 499, #ids)))
end
return #ids
"""

# A retry: take back (as a new delivery) those of these entries this consumer still owns, and
# return {their entries with fields, {id, deliveries before this one, ...}}; an entry claimed
# away by another consumer is that one's now. KEYS: [stream]; ARGV: group, consumer, ids...
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
if #mine == 0 then return {{}, {}} end
return {redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine)), counts}
"""

# Delete a consumer only if it owns nothing, in the same step (XGROUP DELCONSUMER drops the
# entries a consumer owns from the PEL: deleting one that just read or claimed loses them).
# KEYS: [stream]; ARGV: group, consumer. Returns -1 when it owned something and was kept.
DELCONSUMER_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


def sha1(script: str) -> str:
    """The SHA1 by which EVALSHA names `script`."""
    return hashlib.sha1(script.encode()).hexdigest()


@dataclass(slots=True)
class Batch:
    """The handler output of one batch, in the order it was sent: per output (entry id, key,
    maxlen or due time, flat fields, kind) with kind `XADD`, or `ZADD` for a delayed send."""

    current: str = ""
    outputs: list[tuple[str, str, int, list[Any], int]] = field(default_factory=list)
    closed: bool = False
    maxlen: int | None = None
    #: Some field is bytes: Redis' cmsgpack has no bin type, so the commit packs it as str.
    binary: bool = False
    #: The output belongs to the whole batch (a batch handler's): written only if every entry
    #: is still owned.
    whole: bool = False
    #: The storage namespace whose sorted set keeps delayed sends.
    namespace: str = "default"

    def add(self, topic: str, maxlen: int | None, fields: dict[Any, Any]) -> None:
        """Buffer an output; `maxlen` > 0 trims approximately, < 0 exactly to -maxlen."""
        flat = [x for kv in fields.items() for x in kv]
        if not self.binary and bytes in set(map(type, flat)):
            self.binary = True
        self.outputs.append((self.current, topic, maxlen or self.maxlen or 0, flat, XADD))

    def add_delayed(
        self, topic: str, fields: list[Any], due_ms: int, *, maxlen: int | None = None
    ) -> None:
        """Buffer a delayed send (`send(..., delay_s=)` in a handler): committed with the acks."""
        from ..schedule.delayed import schedule_commands

        ((_, key, score, member),) = schedule_commands(
            self.namespace, topic, fields, due_ms, maxlen or self.maxlen
        )
        self.binary = True  # the member is bytes
        self.outputs.append((self.current, key, int(score), [member], ZADD))

    def keys(self) -> set[str]:
        """The keys the outputs write to."""
        return {key for _, key, _, _, _ in self.outputs}


#: The batch whose handler is running in this task, so `App.send` can buffer into it.
current_batch: ContextVar[Batch | None] = ContextVar("streammachine_batch", default=None)


def commit_commands(
    stream: str,
    group: str,
    consumer: str,
    done: list[str],
    out: Batch,
    *,
    memory: bool,
    margin: int,
) -> list[list[Any]] | None:
    """The commands that commit a batch: its acks, and its outputs only where still owned.

    Without outputs it is a plain XACK (an ack of an entry the consumer no longer owns is
    harmless: the new owner's commit finds it acked and drops its outputs). `margin` is how many
    other entries this consumer may own besides `done` (failed ones, retries waiting).
    The script's reply is the number acked, or (for a `whole` batch that is no longer all owned)
    the list of ids still owned, to be handled again.
    """
    if not done:
        return None
    if not out.outputs:
        return [["XACK", stream, group, *done]]
    keys: dict[str, int] = {stream: 1}
    index = keys.setdefault
    done_set = set(done)
    outputs: list[list[Any]] = [
        [entry_id, index(key, len(keys) + 1), maxlen, flat, kind]
        for entry_id, key, maxlen, flat, kind in out.outputs
        if entry_id in done_set
    ]
    # The whole PEL of this consumer, lowest ids first: at commit time it holds this batch, its
    # entries waiting for a retry and little else (`margin`), so `count` covers every done id.
    lo, hi = "-", "+"
    if memory:
        whole = int(out.whole)
        args: list[Any] = [group, consumer, lo, hi, len(done) + margin, whole, len(done), *done]
        for entry_id, idx, maxlen, flat, kind in outputs:
            args += [entry_id, kind, idx, maxlen, len(flat), *flat]
        return [["EVALSHA", sha1(MEMORY_COMMIT_SCRIPT), len(keys), *keys, *args]]
    payload, extra = pack_batch([done, outputs, int(out.whole)], out.binary)
    script = ["EVALSHA", sha1(COMMIT_SCRIPT), len(keys), *keys]
    return [[*script, group, consumer, lo, hi, payload, margin, *extra]]


async def write_outputs(client: Any, done: list[str], out: Batch) -> None:
    """The at-least-once fallback when outputs live in another cluster slot than the input:
    write the outputs of the `done` entries now (the commit then only acks)."""
    async with client.pipeline(transaction=False) as pipe:
        done_set = set(done)
        for entry_id, key, maxlen, flat, kind in out.outputs:
            if entry_id not in done_set:
                continue
            if kind == ZADD:
                pipe.execute_command("ZADD", key, maxlen, *flat)
                continue
            trim = ["MAXLEN", "~", maxlen] if maxlen > 0 else []
            trim = ["MAXLEN", -maxlen] if maxlen < 0 else trim
            pipe.execute_command("XADD", key, *trim, "*", *flat)
        await pipe.execute()
    out.outputs.clear()


async def acked_floor(client: Any, stream: str) -> bytes | None:
    """The lowest id any group still needs (oldest pending, or next undelivered): entries
    below it were delivered to and acked by every group. None when there are no groups."""
    floor: tuple[int, int] | None = None
    for g in await client.xinfo_groups(stream):
        summary = await client.xpending(stream, g["name"])
        if summary["pending"]:
            cand = parse_entry_id(summary["min"])
        else:
            ms, seq = parse_entry_id(g["last-delivered-id"])
            cand = (ms, seq + 1)
        floor = cand if floor is None or cand < floor else floor
    return None if floor is None else f"{floor[0]}-{floor[1]}".encode()


pack_msgpack = msgspec.msgpack.Encoder().encode


def pack_batch(entries: list[Any], binary: bool = False) -> tuple[bytes, list[bytes]]:
    """The commit's payload as msgpack for Redis' cmsgpack, and the bytes values lifted out of it.

    `entries` is [done ids, [[entry id, key index, maxlen, fields, kind], ...], whole]. cmsgpack
    has no bin type ("Bad data format"), and msgspec writes bytes as bin; so each bytes field is
    replaced by its 1-based index into the returned list, passed as extra ARGV.
    """
    if not binary:
        return pack_msgpack(entries), []
    done, outputs, whole = entries
    extra: list[bytes] = []
    lifted = []
    for entry_id, idx, maxlen, flat, kind in outputs:
        fields: list[Any] = []
        for item in flat:
            if type(item) is bytes:
                extra.append(item)
                item = len(extra)
            fields.append(item)
        lifted.append([entry_id, idx, maxlen, fields, kind])
    return pack_msgpack([done, lifted, whole]), extra


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
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
            add(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)
