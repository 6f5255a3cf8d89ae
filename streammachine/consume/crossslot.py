"""Outputs in another Redis Cluster slot than their input: a script cannot write them with the
acks, so they are written at once, before the acks (at-least-once; DESIGN.md "handler output")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .outbox import HDEL, HSET, STORE_DELETE, STORE_INCR, STORE_KEEP, STORE_SET, XADD, ZADD

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from .outbox import Outbox

__all__ = ["write_now"]


async def write_now(redis: RedisConnection, done: list[str], out: Outbox) -> None:
    """The at-least-once fallback when operations live in another cluster slot than the
    input: write those of the `done` entries now, before the ack (the commit then only
    acks). Checks (optimistic concurrency) cannot span slots and are skipped."""
    owners = set(done)
    async with redis.client.pipeline(transaction=False) as pipe:
        for entry_id, code, key, rest in out.ops:
            if not (out.whole or entry_id in owners):
                continue
            if code == XADD:
                maxlen, fields = rest[0], rest[1:]
                trim = ["MAXLEN", "~", maxlen] if maxlen > 0 else []
                trim = ["MAXLEN", -maxlen] if maxlen < 0 else trim
                pipe.execute_command("XADD", key, *trim, "*", *fields)
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
