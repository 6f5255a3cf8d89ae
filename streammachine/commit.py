"""The commit of a batch: its acks and its handler output, written in one step.

Sends made inside a handler are buffered in the batch (`current_batch`) and written by one Lua
script together with the batch's acks, only for the entries the consumer still owns in the group's
PEL: on one Redis node a stream-to-stream stage is then exactly-once, even when a consumer stalls
long enough for another to claim its entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = ["COMMIT_SCRIPT", "Batch", "acked_floor", "current_batch", "id_order", "pack"]

# Writes outputs and acks only for entries this consumer still owns in the group's PEL, so a
# consumer that stalled while another claimed its entries drops them instead of committing twice.
# KEYS: [source stream, output streams...]; ARGV: group, consumer, lowest id, highest id, the
# batch packed with msgpack: [[done ids], [[id, [[key index, maxlen (0 = none), [k1, v1, ...]],
# ...]], ...] (the entries with outputs)],
# how many other entries of this consumer may be pending in that range, then the bytes values
# lifted out of the batch (a field that is a number n stands for ARGV[6 + n]).
COMMIT_SCRIPT = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local batch = cmsgpack.unpack(ARGV[5])
local done, entries = batch[1], batch[2]
local binary = #ARGV > 6
local owned = {}
local count = #done + tonumber(ARGV[6])
for _, e in ipairs(redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], count, consumer)) do
  owned[e[1]] = true
end
for _, entry in ipairs(entries) do
  if owned[entry[1]] then
    for _, out in ipairs(entry[2]) do
      local maxlen, fields = out[2], out[3]
      if binary then
        for i = 1, #fields do
          if type(fields[i]) == 'number' then fields[i] = ARGV[6 + fields[i]] end
        end
      end
      if maxlen > 0 then
        redis.call('XADD', KEYS[out[1]], 'MAXLEN', '~', maxlen, '*', unpack(fields))
      elseif maxlen < 0 then
        redis.call('XADD', KEYS[out[1]], 'MAXLEN', -maxlen, '*', unpack(fields))
      else
        redis.call('XADD', KEYS[out[1]], '*', unpack(fields))
      end
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


@dataclass(slots=True)
class Batch:
    """The handler output of one batch, keyed by the entry that produced it."""

    current: str = ""
    outputs: dict[str, list[tuple[str, int, list[Any]]]] = field(default_factory=dict)
    closed: bool = False
    maxlen: int | None = None
    #: Some field is bytes: Redis' cmsgpack has no bin type, so the commit packs it as str.
    binary: bool = False

    def add(self, topic: str, maxlen: int | None, fields: dict[Any, Any]) -> None:
        """Buffer an output; `maxlen` > 0 trims approximately, < 0 exactly to -maxlen."""
        maxlen = maxlen or self.maxlen
        flat: list[Any] = []
        for k, v in fields.items():
            flat.append(k)
            flat.append(v)
            if type(v) is bytes or type(k) is bytes:
                self.binary = True
        self.outputs.setdefault(self.current, []).append((topic, maxlen or 0, flat))


#: The batch whose handler is running in this task, so `App.send` can buffer into it.
current_batch: ContextVar[Batch | None] = ContextVar("streammachine_batch", default=None)


async def acked_floor(client: Any, stream: str) -> bytes | None:
    """The lowest id any group still needs (oldest pending, or next undelivered): entries
    below it were delivered to and acked by every group. None when there are no groups."""
    floor: tuple[int, int] | None = None
    for g in await client.xinfo_groups(stream):
        summary = await client.xpending(stream, g["name"])
        if summary["pending"]:
            cand = id_order(_text(summary["min"]))
        else:
            ms, seq = id_order(_text(g["last-delivered-id"]))
            cand = (ms, seq + 1)
        floor = cand if floor is None or cand < floor else floor
    return None if floor is None else f"{floor[0]}-{floor[1]}".encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


pack_msgpack = msgspec.msgpack.Encoder().encode


def pack_batch(entries: list[Any], binary: bool = False) -> tuple[bytes, list[bytes]]:
    # entries: [done ids, [[id, outputs], ...]]
    """The commit's payload as msgpack for Redis' cmsgpack, and the bytes values lifted out of it.

    cmsgpack has no bin type ("Bad data format"), and msgspec writes bytes as bin; so each bytes
    field is replaced by its 1-based index into the returned list, passed as extra ARGV.
    """
    if not binary:
        return pack_msgpack(entries), []
    done, with_outputs = entries
    extra: list[bytes] = []
    lifted = []
    for entry_id, outs in with_outputs:
        new_outs = []
        for idx, maxlen, flat in outs:
            fields: list[Any] = []
            for item in flat:
                if type(item) is bytes:
                    extra.append(item)
                    item = len(extra)
                fields.append(item)
            new_outs.append([idx, maxlen, fields])
        lifted.append([entry_id, new_outs])
    return pack_msgpack([done, lifted]), extra


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
            add(b"$%d\r\n" % len(b))
            add(b)
            add(b"\r\n")
    return b"".join(out)


def id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))
