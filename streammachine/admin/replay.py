"""Dead-letter replay: send dead letters back to their source stream (the write beside the
read-only `streammachine.admin.queries`), behind `streammachine dead replay` and the MCP tools.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError

from ..codec import as_text
from ..connection import RedisConnection
from ..consume.deadletter import split_dead
from ..exceptions import StreamMachineError
from .queries import _c, _default_source, dead_letter_stream

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["replay_dead"]

# Reads entries raw: redis-py's XRANGE parser folds fields into a dict (duplicates lost).
_RAW_XRANGE_LUA = "return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])"


async def replay_dead(
    client: aioredis.Redis | RedisConnection,
    stream: str,
    ids: Iterable[str] | None = None,
    *,
    batch_size: int = 500,
) -> int:
    """Send dead letters back to their source stream and delete them; returns how many.

    Each entry's original fields (without the dead-letter fields) are XADDed to its
    `source_stream`, and the entry is XDELed, in one MULTI/EXEC per batch under WATCH, so two
    replays at once cannot send an entry twice. Entries with no fields left or no known source
    stay where they are.

    Args:
        client: the Redis client.
        stream: the source stream or its dead-letter stream (`orders` or `orders:dead`).
        ids: the dead-letter entry ids to replay; None replays every entry present at the start.
        batch_size: entries per transaction.

    Example:
        >>> await replay_dead(conn.client, "orders", ["1700000000000-0"])  # doctest: +SKIP
        1
    """
    c, dead = _c(client), dead_letter_stream(stream)
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        total = 0
        for start in range(0, len(wanted), batch_size):
            total += await _replay_batch(c, dead, wanted[start : start + batch_size])
        return total
    newest = await c.xrevrange(dead, "+", "-", count=1)
    if not newest:
        return 0
    stop, cursor, total = as_text(newest[0][0]), "-", 0
    while True:  # stop at the newest entry seen first, so re-failing messages cannot loop
        batch = await c.xrange(dead, cursor, stop, count=batch_size)
        if not batch:
            return total
        total += await _replay_batch(c, dead, [as_text(i) for i, _ in batch])
        if len(batch) < batch_size:
            return total
        cursor = f"({as_text(batch[-1][0])}"


async def _replay_batch(c: Any, dead: str, ids: list[str]) -> int:
    async with c.pipeline(transaction=True) as pipe:
        for _ in range(20):
            try:
                await pipe.watch(dead)
                # Read after WATCH (on another connection, in one round trip): if anything
                # changes the dead-letter stream from here on, EXEC fails and we read again.
                async with c.pipeline(transaction=False) as reader:
                    for entry_id in ids:
                        reader.eval(_RAW_XRANGE_LUA, 1, dead, entry_id)
                    found = [e for reply in await reader.execute() for e in reply]
                moves = []
                for entry_id, raw in found:
                    original, meta = split_dead(list(raw))
                    source = as_text(meta.get("source_stream") or b"") or _default_source(dead)
                    if original and source and source != dead:
                        moves.append((as_text(entry_id), source, original))
                if not moves:
                    await pipe.reset()
                    return 0
                pipe.multi()
                for _, source, original in moves:
                    pipe.execute_command("XADD", source, "*", *original)
                pipe.xdel(dead, *[entry_id for entry_id, _, _ in moves])
                await pipe.execute()
                return len(moves)
            except WatchError:
                continue
    raise StreamMachineError(
        f"{dead} kept changing while replaying (an agent is dead-lettering fast); try again"
    )
