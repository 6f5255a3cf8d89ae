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


_msgspec_encode = msgspec.msgpack.Encoder().encode


def pack_batch(entries: list[Any], binary: bool = False) -> bytes:
    """The commit's payload as msgpack that Redis' cmsgpack reads. msgspec writes bytes as
    msgpack bin, which cmsgpack rejects ("Bad data format"), so a batch with bytes is packed here,
    bytes as msgpack str (Lua strings hold any bytes)."""
    if not binary:
        return _msgspec_encode(entries)
    out: list[bytes] = []
    _pack_raw(entries, out.append)
    return b"".join(out)


def _pack_raw(obj: Any, add: Any) -> None:
    t = type(obj)
    if t is list:
        n = len(obj)
        add(
            bytes((0x90 | n,))
            if n < 16
            else b"\xdc" + n.to_bytes(2)
            if n < 65536
            else b"\xdd" + n.to_bytes(4)
        )
        for item in obj:
            _pack_raw(item, add)
    elif t is int:
        add(_msgspec_encode(obj))
    else:
        raw = obj.encode() if t is str else bytes(obj)
        n = len(raw)
        add(
            bytes((0xA0 | n,))
            if n < 32
            else b"\xd9" + bytes((n,))
            if n < 256
            else b"\xda" + n.to_bytes(2)
            if n < 65536
            else b"\xdb" + n.to_bytes(4)
        )
        add(raw)


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
