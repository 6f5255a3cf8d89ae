"""Storage: shared state in Redis, one hash per namespace, seen by every process and host.

Layout: the hash `streammachine:storage:{<namespace>}` holds one field per key. Ints are stored as
decimal text, so `incr` is Redis' own HINCRBY and `redis-cli` shows counters as numbers; every other
value is msgspec msgpack. A key written with `ttl_s` lives in its own string key
`streammachine:storage:{<namespace>}:ttl:<key>` with an expiry instead (per-field TTL needs Redis 7.4),
and every method looks in both places. A key is in at most one of them: each write moves it
atomically (a Lua script or MULTI/EXEC). The scripts run on `memory://` too (fakeredis with lupa).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from redis.exceptions import ResponseError, WatchError

from .. import keys
from ..connection import LoopClient, RedisConnection
from ..consume.outbox import current_outbox
from ..exceptions import ConfigError, WrongTypeError
from ..settings import Settings
from ..urls import mask_url
from .staged import MISSING, Staged
from .values import (
    INT64,
    add_number,
    check_key,
    check_namespace,
    decode_value,
    encode_value,
    ttl_ms,
)

__all__ = ["Storage"]

# Scripts, so each write or incr is one atomic command that also keeps the invariant: a key's hash
# field and its ttl key never both exist (see the module docstring). INCRBY keeps the key's TTL.
_WRITE_LUA = """
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('HDEL', KEYS[1], ARGV[1])
end
"""
_INCR_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.call('INCRBY', KEYS[2], ARGV[2]) end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""


class Storage:
    """Shared state in Redis: every process and host of an app (and the CLI) sees the same keys.

    Args:
        namespace: the hash to use (default `STREAMMACHINE_STORAGE_NAMESPACE`, else "default").
        url: the Redis URL (default from the environment); ignored when `redis` is given.
        redis: an existing `RedisConnection` whose pool to share.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     storage = Storage(url="memory://")
        ...     await storage.write("config", {"rate": 5})
        ...     await storage.incr("counter")
    """

    _instances: ClassVar[dict[tuple[str, str], Storage]] = {}

    def __init__(
        self,
        namespace: str | None = None,
        url: str | None = None,
        *,
        redis: RedisConnection | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace or Settings.current().storage_namespace)
        self._redis = LoopClient(url, redis)
        self.url = self._redis.url
        # The namespace is a hash tag: the hash and its ttl keys share one Redis Cluster slot, so
        # the scripts and transactions that touch both work on a cluster too.
        self.hash_key = keys.storage(self.namespace)
        self._ttl_prefix = f"{self.hash_key}:ttl:"

    def __repr__(self) -> str:
        return f"Storage(namespace={self.namespace!r}, url={mask_url(self.url)!r})"

    @classmethod
    def instance(
        cls,
        namespace: str | None = None,
        url: str | None = None,
        redis: RedisConnection | None = None,
    ) -> Storage:
        """The process-wide Storage of this namespace and Redis URL, created on first use.

        Example:
            >>> Storage.instance("orders", "memory://") is Storage.instance("orders", "memory://")
            True
        """
        ns = check_namespace(namespace or Settings.current().storage_namespace)
        resolved = redis.url if redis is not None else url or Settings.current().resolve_url()
        found = cls._instances.get((ns, resolved))
        if found is None:
            found = cls._instances[(ns, resolved)] = cls(ns, resolved, redis=redis)
        return found

    @classmethod
    def reset_instance(cls) -> None:
        """Forget every singleton (for tests); the next `instance()` creates a new one."""
        cls._instances.clear()

    def _ttl_key(self, key: str) -> str:
        return self._ttl_prefix + key

    def _staged(self) -> Staged | None:
        """Inside a handler whose commit can carry this namespace's changes (same Redis, same
        cluster slot as the stream), the batch's view of it; else None (write at once)."""
        out = current_outbox.get()
        if out is None or out.closed or out.url != self.url:
            return None
        view = out.views.get(self.hash_key)
        if view is None:
            if not out.same_slot(self.hash_key):
                return None
            view = out.views[self.hash_key] = Staged(out, self.hash_key, decode_value)
        return view

    async def _seen(self, view: Staged, key: str) -> Any:
        """`key` as the batch sees it, read from Redis the first time (MISSING when absent)."""
        if not view.known(key):
            view.remember(key, await self._raw(key))
        return view.value(key)

    async def _raw(self, key: str) -> bytes | None:
        client = self._redis.client
        raw: Any = await client.hget(self.hash_key, key)
        if raw is None:  # maybe a TTL key; read both at once in case a write moves it meanwhile
            async with client.pipeline(transaction=True) as pipe:
                pipe.hget(self.hash_key, key)
                pipe.get(self._ttl_key(key))
                in_hash, in_ttl = await pipe.execute()
            raw = in_hash if in_hash is not None else in_ttl
        return raw  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close this storage's own connection pool (a shared `RedisConnection` is left open)."""
        await self._redis.close()

    async def write(self, key: str, value: Any, *, ttl_s: float | None = None) -> None:
        """Store `value` under `key`, replacing any value (and TTL) it had.

        Args:
            key: the key.
            value: int, float, str, bytes, bool, None, or lists/dicts of them, nested.
            ttl_s: delete the key after this many seconds (> 0); None keeps it until deleted.

        Raises:
            TypeError: `value` cannot be encoded; nothing is written.

        Example:
            >>> await storage.write("session", {"user": 1}, ttl_s=60)  # doctest: +SKIP
        """
        check_key(key)
        data = encode_value(key, value)
        px = "" if ttl_s is None else ttl_ms(ttl_s)
        if (view := self._staged()) is not None:
            view.set(key, value, data, None if ttl_s is None else ttl_ms(ttl_s))
            return
        script = self._redis.script(_WRITE_LUA)
        await script(keys=[self.hash_key, self._ttl_key(key)], args=[key, data, px])

    async def read(self, key: str, default: Any = None, lock_reading: bool = False) -> Any:
        """The value of `key`, or `default` when it is missing.

        `lock_reading` is accepted for compatibility and has no effect: Redis reads are atomic.

        Example:
            >>> count = await storage.read("counter", default=0)  # doctest: +SKIP
        """
        check_key(key)
        if (view := self._staged()) is not None:
            value = await self._seen(view, key)
            return default if value is MISSING else value
        raw = await self._raw(key)
        return default if raw is None else decode_value(key, raw)

    async def exists(self, key: str) -> bool:
        """True when `key` has a value (None counts as a value)."""
        check_key(key)
        if (view := self._staged()) is not None:
            return await self._seen(view, key) is not MISSING
        client = self._redis.client
        if await client.hexists(self.hash_key, key):
            return True
        async with client.pipeline(transaction=True) as pipe:
            pipe.hexists(self.hash_key, key)
            pipe.exists(self._ttl_key(key))
            in_hash, in_ttl = await pipe.execute()
        return bool(in_hash or in_ttl)

    async def delete(self, key: str) -> bool:
        """Delete `key`; True when it existed."""
        check_key(key)
        if (view := self._staged()) is not None:
            existed = await self._seen(view, key) is not MISSING
            view.delete(key)
            return existed
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.hash_key, key)
            pipe.delete(self._ttl_key(key))
            removed = await pipe.execute()
        return any(removed)

    async def keys(self, pattern: str | None = None) -> list[str]:
        """The keys (sorted), all or those matching a glob `pattern` such as `"user:*"`."""
        if pattern is not None and not isinstance(pattern, str):
            raise ConfigError(f"pattern must be a str glob, not {type(pattern).__name__}")
        client = self._redis.client
        found = {f async for f, _ in client.hscan_iter(self.hash_key, match=pattern, count=1000)}
        ttl_match = self._ttl_prefix + (pattern or "*")
        start = len(self._ttl_prefix)
        found.update([k[start:] async for k in client.scan_iter(match=ttl_match, count=1000)])
        return sorted(k.decode(errors="replace") for k in found)

    async def clear(self) -> None:
        """Delete every key of this namespace (and nothing outside it)."""
        client = self._redis.client
        await client.delete(self.hash_key)
        batch: list[bytes] = []
        async for k in client.scan_iter(match=self._ttl_prefix + "*", count=1000):
            batch.append(k)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)

    async def incr(self, key: str, by: int | float = 1) -> int | float:
        """Add `by` to the number under `key` (missing = 0) atomically; returns the new value.

        Ints use HINCRBY (INCRBY for a key with a TTL, which keeps its TTL); floats, and ints
        beyond 64 bits, use the retry loop of `update`. Safe from any number of processes.

        Raises:
            TypeError: `by` or the stored value is not a number.

        Example:
            >>> await storage.incr("page_views")  # doctest: +SKIP
            1
        """
        check_key(key)
        if isinstance(by, bool) or not isinstance(by, int | float):
            raise WrongTypeError(f"incr({key!r}, by={by!r}): by must be an int or a float")
        if (view := self._staged()) is not None:
            current = await self._seen(view, key)
            if isinstance(by, int) and (current is MISSING or type(current) is int):
                new_int = (0 if current is MISSING else current) + by
                if -INT64 <= new_int < INT64:
                    view.incr(key, by)
                    return new_int
            return await self.update(key, lambda cur: add_number(key, cur, by), default=0)  # type: ignore[no-any-return]
        if isinstance(by, int) and -INT64 <= by < INT64:
            keys = [self.hash_key, self._ttl_key(key)]
            try:
                return int(await self._redis.script(_INCR_LUA)(keys=keys, args=[key, by]))
            except ResponseError:
                pass  # not an int (a float, another type, beyond 64 bits): decided below
        new: int | float = await self.update(key, lambda cur: add_number(key, cur, by), default=0)
        return new

    async def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Replace the value of `key` with `fn(current)` atomically; returns the new value.

        Optimistic concurrency: WATCH the key, read it, compute, write in MULTI/EXEC, and start
        again if another client changed the namespace's hash meanwhile; `fn` may run more than
        once, so keep it free of side effects. A key with a TTL keeps it.

        Args:
            key: the key.
            fn: gets the current value (`default` when missing), returns the new one.
            default: what `fn` gets for a missing key.

        Example:
            >>> await storage.update("seen", lambda s: sorted({*s, "bob"}), default=[])  # doctest: +SKIP
            ['bob']
        """
        check_key(key)
        if (view := self._staged()) is not None:
            current = await self._seen(view, key)
            new = fn(default if current is MISSING else current)
            view.keep(key, new, encode_value(key, new))
            return new
        ttl_key = self._ttl_key(key)
        async with self._redis.client.pipeline(transaction=True) as pipe:
            for attempt in itertools.count():
                try:
                    await pipe.watch(self.hash_key, ttl_key)
                    raw: Any = await pipe.hget(self.hash_key, key)
                    has_ttl = False
                    if raw is None:
                        raw = await pipe.get(ttl_key)
                        has_ttl = raw is not None
                    new = fn(default if raw is None else decode_value(key, raw))
                    data = encode_value(key, new)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if has_ttl:
                        pipe.set(ttl_key, data, keepttl=True)
                    else:
                        pipe.hset(self.hash_key, key, data)
                    await pipe.execute()
                    return new
                except WatchError:
                    # Back off with jitter, or contending writers keep aborting one another.
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 10)))
        raise AssertionError("unreachable")

    async def read_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of `keys` as one consistent snapshot; missing keys are left out.

        Example:
            >>> await storage.read_many(["a", "b"])  # doctest: +SKIP
            {'a': 1}
        """
        names = [check_key(k) for k in keys]
        if not names:
            return {}
        if (view := self._staged()) is not None:
            seen = {k: await self._seen(view, k) for k in names}
            return {k: v for k, v in seen.items() if v is not MISSING}
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hmget(self.hash_key, names)
            pipe.mget([self._ttl_key(k) for k in names])
            in_hash, in_ttl = await pipe.execute()
        out: dict[str, Any] = {}
        for name, h, t in zip(names, in_hash, in_ttl, strict=True):
            raw = h if h is not None else t
            if raw is not None:
                out[name] = decode_value(name, raw)
        return out

    async def write_many(self, mapping: Mapping[str, Any]) -> None:
        """Write several keys at once (atomically); nothing is written if one cannot be encoded.

        Example:
            >>> await storage.write_many({"a": 1, "b": [2, 3]})  # doctest: +SKIP
        """
        encoded = {check_key(k): encode_value(k, v) for k, v in mapping.items()}
        if not encoded:
            return
        if (view := self._staged()) is not None:
            for k, raw in encoded.items():
                view.set(k, mapping[k], raw, None)
            return
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.hash_key, mapping=encoded)  # type: ignore[arg-type]
            pipe.delete(*[self._ttl_key(k) for k in encoded])
            await pipe.execute()
