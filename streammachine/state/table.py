"""Tables: keyed, typed state for stream processing (`App.table`), kept in Redis.

A table is one Redis hash per shard, `streammachine:table:{<tag>}:<name>`, one field per key,
encoded like `Storage` values (ints as decimal text, everything else msgpack), decoded back to
the table's `schema` (msgspec). Where it lives:

- `stream=` a partitioned stream (K partitions): K shards, key k in the shard of partition
  `crc32(k) % K` — the partition `send(stream, ..., key=k)` routes to — tagged with that
  partition's slot, so on a Redis Cluster a handler's change commits with the partition's acks.
- `stream=` an unpartitioned stream: one hash in the stream's slot.
- no `stream`: one hash in the table's own slot (`{<name>}`).

With `ttl_s`, each key lives in its own string key `<hash>:ttl:<key>` and expires `ttl_s` after
its last change (retention). Inside a handler, changes are staged in the batch's commit
(`state.staged`): exactly-once with the entry's ack, read-your-writes, and `update` checked
optimistically (the entry is handled again when another writer changed the key). A change to a
shard the commit cannot carry (another cluster slot) is written at once: at-least-once.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import random
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from redis.exceptions import ResponseError, WatchError

from .. import keys
from ..connection import LoopClient
from ..consume.outbox import current_outbox
from ..exceptions import ConfigError, SerializationError, WrongTypeError
from .staged import MISSING, Staged
from .storage import _INCR_LUA, _WRITE_LUA  # one script each: a key in its hash or its ttl key
from .values import INT64, add_number, check_key, check_namespace, decode_value, encode_value
from .values import ttl_ms as to_ms

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["Table"]

V = TypeVar("V")


class Table(Generic[V]):
    """Keyed state in Redis, typed, exactly-once when changed inside a handler.

    Usually made with `App.table`; standalone (a script, the CLI) with `url=`.

    Args:
        name: letters, digits, `_`, `.`, `-`.
        default: the value of a missing key, or a callable that makes one (`default=list`).
        schema: the type of the values (a `msgspec.Struct`, `int`, `dict[str, float]`, ...);
            values read back are decoded and validated as it. None: any storable value.
        ttl_s: each key expires this long after its last change (None: kept until deleted).
        stream: keep the table with this stream (partitioned with it when it is partitioned).
        partitions: the stream's partition count (`App.table` finds it from the agents).

    Example:
        >>> counts = app.table("counts", default=0, schema=int)  # doctest: +SKIP
        >>> @app.agent("clicks", partitions=4)  # doctest: +SKIP
        ... async def count(record: Message) -> None:
        ...     await counts.incr(record.fields["user"])
    """

    def __init__(
        self,
        name: str,
        *,
        default: Any = None,
        schema: Any = None,
        ttl_s: float | None = None,
        stream: str | None = None,
        partitions: int | Callable[[], int] = 0,
        url: str | None = None,
        redis: RedisConnection | Callable[[], RedisConnection] | None = None,
    ) -> None:
        try:
            self.name = check_namespace(name)
        except ConfigError:
            raise ConfigError(
                f"table name {name!r} is invalid: use letters, digits, '_', '.' and '-'"
            ) from None
        self.default = default
        self.schema = schema
        self.ttl_ms = None if ttl_s is None else to_ms(ttl_s)
        self.stream = stream
        self._partitions = partitions
        self._conn = redis if callable(redis) else None
        self._loop = (
            LoopClient(url, None if callable(redis) else redis) if self._conn is None else None
        )
        self._decoder = None if schema is None else msgspec.msgpack.Decoder(schema)
        self._shards: tuple[int, list[str]] | None = None
        #: The batch `add` last staged into, and its views by key (a key's shard and view stay
        #: the same for a batch): a repeated `add` costs no shard or URL lookup.
        self._hot: tuple[Any, dict[str, Staged]] | None = None

    def __repr__(self) -> str:
        return f"Table({self.name!r}, stream={self.stream!r}, ttl_ms={self.ttl_ms})"

    # -- where things are -------------------------------------------------------------------

    def _redis(self) -> Any:
        return self._conn() if self._conn is not None else self._loop

    @property
    def partitions(self) -> int:
        k = self._partitions() if callable(self._partitions) else self._partitions
        return max(0, int(k or 0))

    def shards(self) -> list[str]:
        """The hash of every shard, in partition order."""
        k = self.partitions
        if self._shards is None or self._shards[0] != k:
            self._shards = (k, self._layout(k))
        return self._shards[1]

    def _layout(self, k: int) -> list[str]:
        if self.stream is None:
            return [keys.table(self.name, "{" + self.name + "}")]
        if not k:
            return [keys.table(self.name, keys.slot_tag(self.stream))]
        return [
            keys.table(self.name, keys.slot_tag(keys.partition(self.stream, i))) for i in range(k)
        ]

    def shard(self, key: str) -> str:
        """The hash that holds `key`."""
        shards = self.shards()
        return shards[zlib.crc32(key.encode()) % len(shards)] if len(shards) > 1 else shards[0]

    # -- values -----------------------------------------------------------------------------

    def _missing(self) -> Any:
        d = self.default
        return d() if callable(d) else copy.deepcopy(d)

    def _decode(self, key: str, raw: bytes) -> Any:
        try:
            if self._decoder is None:
                return decode_value(key, raw)
            if raw[:1].isdigit() or raw[:1] == b"-":
                return msgspec.convert(decode_value(key, raw), self.schema)
            return self._decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, SerializationError) as exc:
            raise SerializationError(
                f"table {self.name!r} key {key!r} holds a value that is not a {self._type()}"
                f" ({exc}); overwrite it with set() or delete it"
            ) from None

    def _type(self) -> str:
        return getattr(self.schema, "__name__", None) or repr(self.schema)

    def _encode(self, key: str, value: Any) -> bytes:
        wrong = isinstance(self.schema, type) and not isinstance(value, self.schema)
        if wrong and not (self.schema is float and isinstance(value, int)):
            raise WrongTypeError(
                f"table {self.name!r} key {key!r}: a {type(value).__name__} is not a {self._type()}"
            )
        return encode_value(key, value)

    # -- staging inside a handler ------------------------------------------------------------

    def _view(self, shard: str) -> Staged | None:
        out = current_outbox.get()
        if out is None or out.closed or out.url != self._redis().url:
            return None
        view = out.views.get(shard)
        if view is None:
            if not out.same_slot(shard):
                return None  # another cluster slot: written at once (at-least-once)
            view = out.views[shard] = Staged(out, shard, self._decode)
        return view

    async def _raw(self, shard: str, key: str) -> bytes | None:
        # Both places in one round trip (a transaction: a write may move the key meanwhile).
        async with self._redis().client.pipeline(transaction=True) as pipe:
            pipe.hget(shard, key)
            pipe.get(f"{shard}:ttl:{key}")
            in_hash, in_ttl = await pipe.execute()
        return in_hash if in_hash is not None else in_ttl  # type: ignore[no-any-return]

    async def _seen(self, view: Staged, shard: str, key: str) -> Any:
        if not view.known(key):
            view.remember(key, await self._raw(shard, key))
        return view.value(key)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = MISSING) -> V:
        """The value of `key`; the table's default (or `default`) when it is missing."""
        check_key(key)
        shard = self.shard(key)
        if (view := self._view(shard)) is not None:
            value = await self._seen(view, shard, key)
        else:
            raw = await self._raw(shard, key)
            value = MISSING if raw is None else self._decode(key, raw)
        if value is MISSING:
            return self._missing() if default is MISSING else default  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    async def exists(self, key: str) -> bool:
        """True when `key` has a value."""
        check_key(key)
        shard = self.shard(key)
        if (view := self._view(shard)) is not None:
            return await self._seen(view, shard, key) is not MISSING
        return await self._raw(shard, key) is not None

    async def get_many(self, names: Iterable[str]) -> dict[str, V]:
        """The values of `names` that exist (missing keys are left out)."""
        found: dict[str, V] = {}
        for key in names:
            if await self.exists(key):
                found[key] = await self.get(key)
        return found

    async def keys(self, limit: int | None = None) -> list[str]:
        """The keys (sorted), at most `limit` of them."""
        client = self._redis().client
        found: set[bytes] = set()
        for shard in self.shards():
            found.update([f async for f, _ in client.hscan_iter(shard, count=1000)])
            prefix = f"{shard}:ttl:"
            found.update(
                [k[len(prefix) :] async for k in client.scan_iter(match=prefix + "*", count=1000)]
            )
        names = sorted(k.decode(errors="replace") for k in found)
        return names if limit is None else names[:limit]

    async def items(self, limit: int | None = None) -> list[tuple[str, V]]:
        """(key, value) pairs, sorted by key, at most `limit`."""
        out: list[tuple[str, V]] = []
        for key in await self.keys(limit):
            raw = await self._raw(self.shard(key), key)
            if raw is not None:
                out.append((key, self._decode(key, raw)))
        return out

    async def count(self) -> int:
        """How many keys the table holds."""
        client = self._redis().client
        total = 0
        for shard in self.shards():
            total += int(await client.hlen(shard))
            if self.ttl_ms is not None:
                total += len([k async for k in client.scan_iter(match=f"{shard}:ttl:*")])
        return total

    # -- writes -----------------------------------------------------------------------------

    async def set(self, key: str, value: V) -> None:
        """Store `value` under `key` (its TTL, if the table has one, starts again)."""
        check_key(key)
        raw = self._encode(key, value)
        shard = self.shard(key)
        if (view := self._view(shard)) is not None:
            view.set(key, value, raw, self.ttl_ms)
            return
        px = "" if self.ttl_ms is None else self.ttl_ms
        script = self._redis().script(_WRITE_LUA)
        await script(keys=[shard, f"{shard}:ttl:{key}"], args=[key, raw, px])

    async def delete(self, key: str) -> bool:
        """Delete `key`; True when it existed."""
        check_key(key)
        shard = self.shard(key)
        if (view := self._view(shard)) is not None:
            existed = await self._seen(view, shard, key) is not MISSING
            view.delete(key)
            return existed
        async with self._redis().client.pipeline(transaction=True) as pipe:
            pipe.hdel(shard, key)
            pipe.delete(f"{shard}:ttl:{key}")
            removed = await pipe.execute()
        return any(removed)

    async def incr(self, key: str, by: int | float = 1) -> int | float:
        """Add `by` to the number under `key` (missing: the table's default, else 0); returns
        the new value as this batch sees it (see docs/stateful.md)."""
        check_key(key)
        if isinstance(by, bool) or not isinstance(by, int | float):
            raise WrongTypeError(f"incr({key!r}, by={by!r}): by must be an int or a float")
        if self.default not in (None, 0, int) or self.ttl_ms is not None or not isinstance(by, int):
            return await self._add(key, by)  # type: ignore[no-any-return]
        shard = self.shard(key)
        if (view := self._view(shard)) is not None:
            current = await self._seen(view, shard, key)
            if current is MISSING or type(current) is int:
                new = (0 if current is MISSING else current) + by
                if -INT64 <= new < INT64:
                    view.incr(key, by)
                    return new
            return await self._add(key, by)  # type: ignore[no-any-return]
        if -INT64 <= by < INT64:
            try:
                script = self._redis().script(_INCR_LUA)
                return int(await script(keys=[shard, f"{shard}:ttl:{key}"], args=[key, by]))
            except ResponseError:
                pass  # not an int: added by update() below, which says why if it cannot
        return await self._add(key, by)  # type: ignore[no-any-return]

    async def add(self, key: str, by: int | float = 1) -> None:
        """Add `by` to the number under `key`, returning nothing: inside a handler, on a table
        with `schema=int` and no TTL, an integer add is staged without reading the key first (no
        round trip), the fastest way to count. Otherwise the same as `incr`."""
        # Only an int table can take an add unread: anything else stored would fail the commit.
        if type(by) is int and -INT64 <= by < INT64 and (out := current_outbox.get()) is not None:
            hot = self._hot
            if hot is None or hot[0] is not out:
                hot = self._hot = (out, {})
            view = hot[1].get(key)
            if view is None and not out.closed:
                check_key(key)
                fast = self.schema is int and self.default in (None, 0, int)
                if fast and self.ttl_ms is None and (view := self._view(self.shard(key))):
                    hot[1][key] = view
            if view is not None and not out.closed:
                view.incr(key, by)
                return
        check_key(key)
        await self.incr(key, by)

    async def _add(self, key: str, by: int | float) -> Any:
        def plus(current: Any) -> Any:
            base = 0 if current is None else current
            return add_number(key, base, by)

        return await self.update(key, plus)

    async def update(self, key: str, fn: Callable[[V], V]) -> V:
        """Replace the value of `key` with `fn(current)` (current: the default when missing);
        returns the new value. Checked optimistically: `fn` may run again, so keep it pure."""
        check_key(key)
        shard = self.shard(key)
        if (view := self._view(shard)) is not None:
            current = await self._seen(view, shard, key)
            new = fn(self._missing() if current is MISSING else current)
            view.set(key, new, self._encode(key, new), self.ttl_ms)
            return new
        ttl_key = f"{shard}:ttl:{key}"
        async with self._redis().client.pipeline(transaction=True) as pipe:
            for attempt in itertools.count():
                try:
                    await pipe.watch(shard, ttl_key)
                    raw: Any = await pipe.hget(shard, key)
                    if raw is None:
                        raw = await pipe.get(ttl_key)
                    new = fn(self._missing() if raw is None else self._decode(key, raw))
                    data = self._encode(key, new)
                    pipe.multi()
                    if self.ttl_ms is None:
                        pipe.hset(shard, key, data)
                        pipe.delete(ttl_key)
                    else:
                        pipe.set(ttl_key, data, px=self.ttl_ms)
                        pipe.hdel(shard, key)
                    await pipe.execute()
                    return new
                except WatchError:
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 10)))
        raise AssertionError("unreachable")

    async def clear(self) -> None:
        """Delete every key of the table (every shard)."""
        client = self._redis().client
        for shard in self.shards():
            await client.delete(shard)
            batch = [k async for k in client.scan_iter(match=f"{shard}:ttl:*", count=1000)]
            for i in range(0, len(batch), 500):
                await client.delete(*batch[i : i + 500])
