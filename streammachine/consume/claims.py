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
from typing import TYPE_CHECKING, Any

from ..codec import as_text, parse_entry_id

if TYPE_CHECKING:
    from ..connection import Script
    from .wire import Wire

__all__ = [
    "CLAIM_SCRIPT",
    "FENCE_LUA",
    "FENCE_TTL_MS",
    "RECLAIM_SCRIPT",
    "TAKEOVER_SCRIPT",
    "Taken",
]

log = logging.getLogger("streammachine.agent")

#: A fence hash lives this long after the last time something was taken: a consumer frozen for
#: longer than that, whose entries were taken, would trust a batch it no longer owns.
FENCE_TTL_MS = 7 * 24 * 3600 * 1000

# Lua: fence(consumer) marks `consumer` of KEYS[2] as robbed; used by every taking script (and by
# the admin actions that take pending entries).
FENCE_LUA = f"""
local function fence(victim)
  redis.call('HINCRBY', KEYS[2], victim, 1)
  redis.call('PEXPIRE', KEYS[2], {FENCE_TTL_MS})
end
"""

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
