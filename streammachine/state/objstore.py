"""RedisObjectStorage: Python objects in Redis, pickled and signed, or msgpack for plain data.

Unpickling runs code chosen by whoever wrote the bytes, and anyone who can write to Redis can write
them. So each pickle is signed with HMAC-SHA256 under `STREAMMACHINE_SECRET_KEY` (or `secret_key=`)
and stored as `b"SM2" + mac(32 bytes) + pickle`, the MAC taken over the namespace and key too, so
signed bytes copied to another key (or namespace) do not verify; `retrieve_with_pickle` checks the
signature before it unpickles and refuses an unsigned or wrongly signed value with
`UnsafePickleError`, unless the storage was created with `allow_unsigned=True`. Values of the older
`SM1` form (a MAC of the pickle alone) are read only with `allow_unbound=True` (or
`STREAMMACHINE_ALLOW_UNBOUND_PICKLES=1`), to migrate them. Keys: `streammachine:obj:<namespace>:<key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
from typing import Any

import msgspec

from .. import keys
from ..connection import LoopClient, RedisConnection
from ..exceptions import SerializationError, UnsafePickleError, WrongTypeError
from ..settings import Settings
from ..urls import mask_url
from .values import check_namespace, ttl_ms

__all__ = ["RedisObjectStorage"]

log = logging.getLogger("streammachine.state.objstore")

MAGIC = b"SM2"
#: The first signed form: a MAC of the pickle alone, not bound to its key.
UNBOUND_MAGIC = b"SM1"
_MAC_LEN = 32
_warned_unsigned = False


class RedisObjectStorage:
    """Python objects in Redis: pickled and HMAC-signed, or msgpack for plain data.

    Args:
        url: the Redis URL (default from the environment); ignored when `redis` is given.
        namespace: keeps these keys apart from other object storages (letters, digits, `_.-`).
        secret_key: the signing key (default `STREAMMACHINE_SECRET_KEY`).
        allow_unsigned: unpickle unsigned and wrongly signed values too. Only for a Redis that
            nobody else can write to, or to read values stored before a key was set or rotated.
        allow_unbound: also accept values signed in the older `SM1` form, whose signature does
            not name its key (default `STREAMMACHINE_ALLOW_UNBOUND_PICKLES`); to migrate them.
        redis: an existing `RedisConnection` whose pool to share.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     store = RedisObjectStorage(secret_key="s3cret")
        ...     await store.store_with_pickle("model", {"weights": [1, 2]})
        ...     model = await store.retrieve_with_pickle("model")
    """

    def __init__(
        self,
        url: str | None = None,
        namespace: str = "objects",
        *,
        secret_key: str | bytes | None = None,
        allow_unsigned: bool = False,
        allow_unbound: bool | None = None,
        redis: RedisConnection | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self._redis = LoopClient(url, redis)
        self.url = self._redis.url
        key = secret_key if secret_key is not None else Settings.current().secret_key
        self._secret = key.encode() if isinstance(key, str) else key
        self.allow_unsigned = allow_unsigned
        self.allow_unbound = (
            Settings.current().allow_unbound_pickles if allow_unbound is None else allow_unbound
        )
        self._prefix = keys.objects(self.namespace)

    def __repr__(self) -> str:
        signed = "signed" if self._secret else "unsigned"
        return f"RedisObjectStorage({mask_url(self.url)!r}, namespace={self.namespace!r}, {signed})"

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def close(self) -> None:
        """Close this storage's own connection pool (a shared `RedisConnection` is left open)."""
        await self._redis.close()

    async def store_with_pickle(self, key: str, obj: Any, ttl_s: float | None = None) -> None:
        """Pickle `obj`, sign it, and store it under `key` (for `ttl_s` seconds, if given).

        Raises:
            TypeError: `obj` cannot be pickled; nothing is written.

        Example:
            >>> await store.store_with_pickle("frame", df, ttl_s=3600)  # doctest: +SKIP
        """
        try:
            payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise WrongTypeError(
                f"object key {key!r}: cannot pickle a {type(obj).__name__}: {exc}"
            ) from exc
        await self._set(key, self._sign(key, payload), ttl_s)

    async def retrieve_with_pickle(self, key: str, default: Any = None) -> Any:
        """The object stored under `key` by `store_with_pickle`, or `default` when missing.

        Raises:
            UnsafePickleError: the value is unsigned or its signature does not match this key.

        Example:
            >>> model = await store.retrieve_with_pickle("model")  # doctest: +SKIP
        """
        raw: bytes | None = await self._redis.client.get(self._key(key))  # type: ignore[assignment]
        if raw is None:
            return default
        payload = self._verify(key, raw)
        try:
            return pickle.loads(payload)  # signature verified above, or allow_unsigned
        except Exception as exc:
            raise SerializationError(
                f"object key {key!r} cannot be unpickled ({exc}); was it stored with store()? "
                "Then read it with retrieve()"
            ) from exc

    async def store(self, key: str, obj: Any, ttl_s: float | None = None) -> None:
        """Store plain data (dicts, lists, str, numbers, bytes, None) as msgpack: safe to read.

        Raises:
            TypeError: msgpack cannot encode `obj`; nothing is written.

        Example:
            >>> await store.store("settings", {"rate": 5})  # doctest: +SKIP
        """
        try:
            data = msgspec.msgpack.encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise WrongTypeError(
                f"object key {key!r}: cannot store a value of type {type(obj).__name__} as "
                f"msgpack ({exc}); use store_with_pickle for arbitrary Python objects"
            ) from None
        await self._set(key, data, ttl_s)

    async def retrieve(self, key: str, default: Any = None) -> Any:
        """The data stored under `key` by `store`, or `default` when missing.

        Example:
            >>> await store.retrieve("settings", default={})  # doctest: +SKIP
            {'rate': 5}
        """
        raw: bytes | None = await self._redis.client.get(self._key(key))  # type: ignore[assignment]
        if raw is None:
            return default
        try:
            return msgspec.msgpack.decode(raw)
        except msgspec.DecodeError as exc:
            raise SerializationError(
                f"object key {key!r} is not msgpack ({exc}); if it was stored with "
                "store_with_pickle, read it with retrieve_with_pickle"
            ) from exc

    async def list_keys(self, pattern: str = "*") -> list[str]:
        """The keys of this namespace matching a glob `pattern` (SCAN, sorted, prefix removed).

        Example:
            >>> await store.list_keys("model:*")  # doctest: +SKIP
            ['model:a', 'model:b']
        """
        start = len(self._prefix)
        found = [
            k async for k in self._redis.client.scan_iter(match=self._key(pattern), count=1000)
        ]
        return sorted(k[start:].decode(errors="replace") for k in found)

    async def delete_keys(self, pattern: str) -> int:
        """Delete this namespace's keys matching `pattern`; returns how many were deleted.

        `"*"` deletes this namespace's keys only, never anything else in the database.

        Example:
            >>> await store.delete_keys("model:*")  # doctest: +SKIP
            2
        """
        client = self._redis.client
        deleted = 0
        batch: list[bytes] = []
        async for k in client.scan_iter(match=self._key(pattern), count=1000):
            batch.append(k)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
        return deleted

    async def _set(self, key: str, data: bytes, ttl_s: float | None) -> None:
        px = None if ttl_s is None else ttl_ms(ttl_s)
        await self._redis.client.set(self._key(key), data, px=px)

    def _mac(self, key: str, payload: bytes, magic: bytes) -> bytes:
        """The MAC of `payload` stored under `key`: the SM2 form covers the namespace and the key
        (each length-prefixed, so no two pairs give one message); SM1 covered the pickle only."""
        assert self._secret
        if magic == UNBOUND_MAGIC:
            return hmac.new(self._secret, payload, hashlib.sha256).digest()
        mac = hmac.new(self._secret, MAGIC, hashlib.sha256)
        for part in (self.namespace, key):
            raw = part.encode("utf-8", "surrogatepass")
            mac.update(b"%d:" % len(raw) + raw)
        mac.update(payload)
        return mac.digest()

    def _sign(self, key: str, payload: bytes) -> bytes:
        global _warned_unsigned
        if self._secret:
            return MAGIC + self._mac(key, payload, MAGIC) + payload
        if not _warned_unsigned:
            _warned_unsigned = True
            log.warning(
                "STREAMMACHINE_SECRET_KEY is not set: pickles are stored unsigned, and "
                "retrieve_with_pickle refuses them unless allow_unsigned=True. Set "
                "STREAMMACHINE_SECRET_KEY (e.g. to the output of `openssl rand -hex 32`) in every "
                "process that shares this Redis."
            )
        return payload

    def _verify(self, key: str, raw: bytes) -> bytes:
        magic = raw[: len(MAGIC)]
        signed = magic in (MAGIC, UNBOUND_MAGIC) and len(raw) >= len(MAGIC) + _MAC_LEN
        payload = raw[len(MAGIC) + _MAC_LEN :] if signed else raw
        if self.allow_unsigned:
            return payload
        if not signed:
            problem = "is unsigned"
        elif not self._secret:
            problem = "is signed, but STREAMMACHINE_SECRET_KEY is not set here"
        elif magic == UNBOUND_MAGIC and not self.allow_unbound:
            raise UnsafePickleError(
                f"object key {key!r} is signed in the old SM1 form, whose signature does not "
                "name its key (signed bytes copied from another key would pass), so it was not "
                "unpickled: store it again, or read such values while you migrate with "
                "allow_unbound=True (STREAMMACHINE_ALLOW_UNBOUND_PICKLES=1)"
            )
        else:
            mac = self._mac(key, payload, magic)
            if hmac.compare_digest(mac, raw[len(MAGIC) : len(MAGIC) + _MAC_LEN]):
                return payload
            problem = (
                "has a signature that does not match this secret key and key name (tampered, "
                "copied from another key or namespace, or signed with another secret key)"
            )
        raise UnsafePickleError(
            f"object key {key!r} {problem}, so it was not unpickled: unpickling runs code chosen "
            "by whoever wrote it. Set STREAMMACHINE_SECRET_KEY (or secret_key=) to the key it was "
            "stored with in every process and store it again; or, only if nobody else can write "
            "to this Redis, create RedisObjectStorage(allow_unsigned=True)"
        )
