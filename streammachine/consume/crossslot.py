"""Outputs in another Redis Cluster slot than their input: a script cannot write them with the
acks, so they are written at once, before the acks (DESIGN.md "handler output").

On Redis ≥ 8.6 each output carries an idempotency id derived from its input (XADD IDMP: producer
`<group>@<input stream>#<bucket>`, id `<entry id>:<n>`, n counting that entry's outputs), so an
input redelivered after a crash writes its outputs again with the same ids and Redis keeps the
first ones: exactly-once while the redelivery comes within the IDMP window, which this module sets
to its widest (`XCFGSET … IDMP-DURATION 86400 IDMP-MAXSIZE 10000` on each output stream) — the
last 10,000 x `BUCKETS` outputs of that group and input stream, and one day. Elsewhere, and for
the other operations, at-least-once (an output may be written twice after a crash).
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .outbox import HDEL, HSET, STORE_DELETE, STORE_INCR, STORE_KEEP, STORE_SET, XADD, ZADD

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from .outbox import Outbox

__all__ = ["BUCKETS", "write_now"]

log = logging.getLogger("streammachine.agent")

#: Producer ids per group and input stream: each keeps the last 10,000 idempotency ids.
BUCKETS = 16
_configured: set[tuple[int, str]] = set()


async def write_now(
    redis: RedisConnection, done: list[str], out: Outbox, *, group: str, stream: str
) -> None:
    """Write the operations of the `done` entries now, before the ack (the commit then only
    acks). Checks (optimistic concurrency) cannot span slots and are skipped."""
    owners = set(done)
    idmp = (await redis.features()).idmp
    if idmp:
        await _configure(redis, {key for _, code, key, _ in out.ops if code == XADD})
    seen: dict[str, int] = {}
    async with redis.client.pipeline(transaction=False) as pipe:
        for entry_id, code, key, rest in out.ops:
            if not (out.whole or entry_id in owners):
                continue
            if code == XADD:
                maxlen, fields = rest[0], rest[1:]
                trim = ["MAXLEN", "~", maxlen] if maxlen > 0 else []
                trim = ["MAXLEN", -maxlen] if maxlen < 0 else trim
                ids: list[Any] = []
                if idmp:
                    owner = entry_id or ",".join(done)  # a batch handler's: the whole batch
                    n = seen[owner] = seen.get(owner, 0) + 1
                    bucket = zlib.crc32(owner.encode()) % BUCKETS
                    ids = ["IDMP", f"{group}@{stream}#{bucket}", f"{owner}:{n}"]
                pipe.execute_command("XADD", key, *ids, *trim, "*", *fields)
            elif code in (ZADD, HSET):
                pipe.execute_command("ZADD" if code == ZADD else "HSET", key, *rest)
            elif code == HDEL:
                pipe.execute_command("HDEL", key, *rest)
            elif code == STORE_SET:
                name, value, ttl = rest
                if ttl == "":
                    pipe.execute_command("HSET", key, name, value)
                    pipe.execute_command("DEL", f"{key}:ttl:{name}")
                else:
                    pipe.execute_command("SET", f"{key}:ttl:{name}", value, "PX", ttl)
                    pipe.execute_command("HDEL", key, name)
            elif code == STORE_KEEP:
                pipe.execute_command("HSET", key, *rest)
            elif code == STORE_INCR:
                pipe.execute_command("HINCRBY", key, *rest)
            elif code == STORE_DELETE:
                pipe.execute_command("HDEL", key, rest[0])
                pipe.execute_command("DEL", f"{key}:ttl:{rest[0]}")
        await pipe.execute()
    out.ops.clear()


async def _configure(redis: RedisConnection, streams: set[str]) -> None:
    """The widest IDMP window on each output stream, before the first write with IDMP, once per
    process. XCFGSET clears a stream's idempotency ids when it changes the window, so every
    process sets the same one, and a stream that does not exist yet is created empty first
    (an XADD trimmed to nothing at once: no consumer ever sees it)."""
    client: Any = redis.client
    for key in streams - {s for c, s in _configured if c == id(redis)}:
        config = ["XCFGSET", key, "IDMP-DURATION", 86400, "IDMP-MAXSIZE", 10000]
        try:
            try:
                await client.execute_command(*config)
            except ResponseError as exc:
                if "no such key" not in str(exc):
                    raise
                await client.execute_command("XADD", key, "MAXLEN", "=", 0, "*", "-", "-")
                await client.execute_command(*config)
        except ResponseError as exc:  # e.g. a key of another type: its XADD fails with a reason
            log.debug("cannot configure IDMP on %s: %s", key, exc)
            continue
        _configured.add((id(redis), key))
