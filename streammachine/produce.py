"""Idempotent production: an entry written outside a handler (`App.send` from a timer, a hook or
user code; `streammachine send`) is in its stream once, even when the connection drops after Redis
applied the XADD and before its reply arrived (DESIGN.md "handler output").

Every write carries a producer id (this process) and an idempotency id, and a write whose reply
was lost is sent again with the same ids — by redis-py's own retries or by `Producer`'s — so the
second one finds the first and returns its entry id:

- Redis ≥ 8.6 deduplicates itself (`XADD key IDMP <producer> <id>`; it remembers the last 100
  ids of each producer for 100 s, far longer than a retry takes; batches go in chunks of 100);
- older servers and Valkey run `MARK_SCRIPT`: the XADD and a marker key holding its entry id, in
  one script; a marker lives `AUTO_WINDOW_MS` (a retry comes within seconds).

A caller's own `idempotency_key` (retries across processes, or after a crash) always uses a marker,
on every server, kept `KEY_WINDOW_MS`: the same key on the same stream is written once in that time.
`send --file` keeps one progress marker per file instead (`LINE_SCRIPT`): a re-run of an
interrupted send skips the lines already written.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from . import keys
from .codec import as_text
from .exceptions import UNREACHABLE, RedisUnavailableError
from .presence.heartbeat import new_instance_id

if TYPE_CHECKING:
    from .connection import RedisConnection

__all__ = [
    "AUTO_WINDOW_MS",
    "CHUNK",
    "KEY_WINDOW_MS",
    "LINE_SCRIPT",
    "MARK_SCRIPT",
    "Producer",
]

log = logging.getLogger("streammachine.app")

#: How long a marker of an automatic idempotency id lives (the fallback of IDMP).
AUTO_WINDOW_MS = 120_000
#: How long an `idempotency_key` is remembered per stream.
KEY_WINDOW_MS = 24 * 3600 * 1000
#: Entries per pipeline: within IDMP's default window of 100 ids per producer.
CHUNK = 100
#: Attempts of a write whose connection broke (with backoff, about 10 s in all).
ATTEMPTS = 8

# XADD once per marker: KEYS: stream, marker; ARGV: marker ms, maxlen (> 0 approximate, < 0
# exact, 0 none), fields... Returns the entry id (the first one's, when the marker exists).
MARK_SCRIPT = """
local prev = redis.call('GET', KEYS[2])
if prev then return prev end
local maxlen, id = tonumber(ARGV[2]), nil
if maxlen > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 3))
elseif maxlen < 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', -maxlen, '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return id
"""

# Line n of a file, once: KEYS: stream, progress key; ARGV: n, keep ms, fields... Appends the
# entry only when n is past the progress (the lines of one file are sent in order), then moves
# the progress to n. Returns the entry id, or '' for a line already written.
LINE_SCRIPT = """
local done = tonumber(redis.call('GET', KEYS[2]) or '0')
local n = tonumber(ARGV[1])
if n <= done then return '' end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], n, 'PX', ARGV[2])
return id
"""


def _trim(maxlen: int | None) -> list[Any]:
    if not maxlen:
        return []
    return ["MAXLEN", "~", maxlen] if maxlen > 0 else ["MAXLEN", -maxlen]


class Producer:
    """Writes entries outside handlers so that a retry never writes one twice.

    Args:
        redis: the connection.
        name: the app's name (producer ids are `<name>:<host>-<pid>-<random>`).

    Example:
        >>> producer = Producer(app.redis, "orders")  # doctest: +SKIP
        >>> await producer.write("orders", [["item", "tea"]], maxlen=None)  # doctest: +SKIP
        ['1700000000000-0']
    """

    def __init__(self, redis: RedisConnection, name: str) -> None:
        self.redis = redis
        self.name = name
        self.pid = f"{name}:{new_instance_id()}"
        self._seq = itertools.count(1)

    async def write(
        self,
        stream: str,
        entries: Sequence[list[Any]],
        maxlen: int | None,
        idempotency_keys: Sequence[str] | None = None,
    ) -> list[str]:
        """Append `entries` (each flat [k1, v1, ...]) to `stream`; their ids, in order.

        `idempotency_keys` (one per entry): the caller's own ids; an entry whose key was written
        to this stream within `KEY_WINDOW_MS` is not written again (its first id is returned).

        Raises:
            RedisUnavailableError: Redis could not be reached after retrying; the entries may or
                may not have been written (sending again with idempotency keys writes each once).
        """
        out: list[str] = []
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start : start + CHUNK]
            ids = None if idempotency_keys is None else idempotency_keys[start : start + CHUNK]
            out += await self._chunk(stream, chunk, maxlen, ids)
        return out

    async def _chunk(
        self,
        stream: str,
        entries: Sequence[list[Any]],
        maxlen: int | None,
        user_ids: Sequence[str] | None,
    ) -> list[str]:
        features = await self.redis.features()
        trim = _trim(maxlen)
        mark = self.redis.script(MARK_SCRIPT)
        cmds: list[list[Any]] = []
        for i, fields in enumerate(entries):
            if user_ids is not None:
                marker = keys.idempotency(stream, self.name, user_ids[i])
                cmds.append(mark.command([stream, marker], [KEY_WINDOW_MS, maxlen or 0, *fields]))
            elif features.idmp:
                cmds.append(
                    ["XADD", stream, "IDMP", self.pid, next(self._seq), *trim, "*", *fields]
                )
            else:
                marker = keys.idempotency(stream, self.pid, str(next(self._seq)))
                cmds.append(mark.command([stream, marker], [AUTO_WINDOW_MS, maxlen or 0, *fields]))
        return await self._send(cmds, mark.source)

    async def _send(self, cmds: list[list[Any]], script: str) -> list[str]:
        """Send `cmds` in one pipeline, again after a broken connection (they are idempotent)."""
        delay = 0.05
        for attempt in range(ATTEMPTS):
            try:
                async with self.redis.client.pipeline(transaction=False) as pipe:
                    for cmd in cmds:
                        pipe.execute_command(*cmd)
                    replies = await pipe.execute(raise_on_error=False)
                if any(
                    "NOSCRIPT" in str(r) or "No matching script" in str(r)
                    for r in replies
                    if isinstance(r, Exception)
                ):
                    await self.redis.client.script_load(script)
                    continue
                for r in replies:
                    if isinstance(r, Exception):
                        raise r
                return [as_text(r) for r in replies]
            except UNREACHABLE as exc:
                if attempt == ATTEMPTS - 1:
                    raise RedisUnavailableError(
                        f"cannot reach Redis at {self.redis} to send ({exc}); the entries may "
                        "or may not have been written: send them again with the same "
                        "idempotency_key to write each once"
                    ) from exc
                if attempt == 0:
                    log.warning(
                        "send: lost Redis (%s); retrying with the same idempotency ids", exc
                    )
                await anyio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(2.0, delay * 2)
        raise AssertionError("unreachable")


async def send_lines(
    redis: RedisConnection,
    stream: str,
    lines: Sequence[tuple[int, list[Any]]],
    source: str,
    keep_ms: int = KEY_WINDOW_MS,
) -> list[str]:
    """Append numbered lines of a file (n ≥ 1, in order) to `stream`, each once: a line at or
    before the file's progress marker (`source` names the file, e.g. a hash of its content) was
    written by an earlier run and is skipped (its id is ''). For `streammachine send --file`."""
    marker = keys.progress(stream, source)
    script = redis.script(LINE_SCRIPT)
    cmds = [script.command([stream, marker], [n, keep_ms, *fields]) for n, fields in lines]
    return await Producer(redis, "cli")._send(cmds, script.source)
