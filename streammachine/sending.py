"""Sending: how an App writes to streams — routing to partitions, encoding, buffering inside a
handler (committed with the batch's acks), delayed entries, and `once`.

`Sending` is a part of `App` (a mixin); it reads the App's attributes declared below.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from . import keys
from .codec import StructCodec, encode_fields
from .consume.outbox import XADD, current_outbox
from .exceptions import ConfigError
from .schedule.delayed import schedule_commands
from .schedule.timing import due_ms
from .settings import check_partitions

if TYPE_CHECKING:
    from .connection import RedisConnection
    from .produce import Producer
    from .schedule.delayed import Scheduler
    from .settings import AppConfig
    from .tracing import Tracing

__all__ = ["Record", "Sending"]

#: What `send` takes: a field map, or a msgspec Struct.
Record = Mapping[str, Any] | msgspec.Struct

_chain = itertools.chain.from_iterable


class Sending:
    """`App.send`, `App.send_batch`, partition routing and `App.once`."""

    config: AppConfig
    tracing: Tracing | None
    _packed: dict[str, StructCodec]
    _partitions: dict[str, tuple[int, itertools.count[int]]]

    if TYPE_CHECKING:

        @property
        def redis(self) -> RedisConnection: ...

        @property
        def scheduler(self) -> Scheduler: ...

        @property
        def producer(self) -> Producer: ...

    def partitioned(self, stream: str, partitions: int) -> None:
        """Declare that `stream` has `partitions` partition streams, so `send` routes to them
        (agents with `partitions=` declare it themselves; producers without agents call this).

        `partitions`: an int from 1 to `MAX_PARTITIONS` (256).

        Example:
            >>> app.partitioned("ticks", 4)
            >>> await app.send("ticks", {"symbol": "AAPL"}, key="AAPL")  # doctest: +SKIP
        """
        self._partitions[stream] = (check_partitions(partitions), itertools.count())

    def route(self, topic: str, key: str | bytes | int | None = None) -> str:
        """The stream a record for `topic` goes to: a partition chosen by a stable hash of `key`
        (per-key order kept; an int routes as its decimal text, 7 as "7"), round-robin without a
        key, or `topic` itself if unpartitioned."""
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        elif key is not None and not isinstance(key, str | bytes):
            raise ConfigError(
                f"a partition key must be a str, bytes or int, not {type(key).__name__}"
            )
        spec = self._partitions.get(topic)
        if spec is None:
            return topic
        k, counter = spec
        if key is None:
            return keys.partition(topic, next(counter) % k)
        raw = key.encode() if isinstance(key, str) else key
        return keys.partition(topic, zlib.crc32(raw) % k)

    async def send(
        self,
        topic: str,
        record: Record,
        *,
        now: bool = False,
        maxlen: int | None = None,
        key: str | bytes | int | None = None,
        delay_s: float | None = None,
        at: datetime | float | None = None,
        idempotency_key: str | None = None,
    ) -> str | None:
        """Append `record` to stream `topic`, now or later.

        Inside a handler the write is buffered and committed atomically with the ack of the
        message being handled, and None is returned; `now=True` writes at once. Elsewhere it
        writes at once and returns the new entry id — once, even when the connection drops
        after Redis applied it: the library retries with the same idempotency id (XADD IDMP
        on Redis ≥ 8.6, a marker script elsewhere; see `streammachine.produce`).
        `idempotency_key`: your own id for retries across processes: the same key on the same
        stream is written once within 24 h (its first entry id is returned again).

        With `delay_s` (seconds from now) or `at` (a datetime, or epoch seconds) the entry is
        kept in Redis until it is due, then appended by whichever app of this storage namespace
        runs (see docs/scheduling.md for how soon); it survives restarts and is appended once,
        fields exact. The schedule id is returned (None while buffered).

        Raises:
            SerializationError: (a ValueError) the record is empty, has a field name that is
                not a str, or a value that cannot be encoded.
            ConfigError: both `delay_s` and `at`, or a due time that is NaN, infinite, before
                1970 or more than 10 years ahead (`schedule.MAX_DELAY_S`).
            SerializationError: a delayed record with more than `MAX_DELAYED_FIELDS` fields.

        Example:
            >>> await app.send("output_stream", {"processed": True})  # doctest: +SKIP
            '1700000000000-0'
            >>> await app.send("reminders", {"user": 7}, delay_s=3600)  # doctest: +SKIP
            '1852d1b5a3c4e0f0a1b2c3d4'
        """
        if (
            delay_s is None
            and at is None
            and not now
            and key is None
            and self.tracing is None
            and (out := current_outbox.get()) is not None
            and not out.closed
            and topic not in self._packed
            and topic not in self._partitions
        ):
            # The common case, inside a handler: buffered in the batch's commit, nothing else.
            flat: list[Any] = [maxlen or self.config.stream_maxlen or out.maxlen or 0]
            flat += _chain(encode_fields(record).items())
            out.ops.append((out.current, XADD, topic, flat))
            return None
        fields = self._encode(topic, record)
        topic = self.route(topic, key) if self._partitions else topic
        if self.tracing is not None:
            self.tracing.inject(topic, fields)
        maxlen = maxlen or self.config.stream_maxlen
        out = current_outbox.get()
        due = due_ms(delay_s, at) if delay_s is not None or at is not None else None
        if due is not None:
            return (await self._send_later(topic, [fields], due, maxlen, now))[0]
        flat = [*_chain(fields.items())]
        if out is not None and not out.closed and not now:
            out.xadd(topic, maxlen, flat)
            return None
        user = None if idempotency_key is None else [_check_key(idempotency_key)]
        return (await self.producer.write(topic, [flat], maxlen, user))[0]

    async def send_batch(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        now: bool = False,
        maxlen: int | None = None,
        key: str | bytes | int | None = None,
        delay_s: float | None = None,
        at: datetime | float | None = None,
        idempotency_keys: Sequence[str] | None = None,
    ) -> list[str | None]:
        """Append many records in one round trip; returns their ids (None while buffered).

        `delay_s`/`at` keep them in Redis until due, as with `send` (their schedule ids are
        returned). Outside handlers each is written once even when a reply is lost, as with
        `send`; `idempotency_keys` (one per record) are your own ids for them.

        Example:
            >>> await app.send_batch("events", [{"n": 1}, {"n": 2}])  # doctest: +SKIP
            ['1700000000000-0', '1700000000000-1']
        """
        if idempotency_keys is not None and len(idempotency_keys) != len(records):
            raise ConfigError(
                f"idempotency_keys has {len(idempotency_keys)} keys for {len(records)} records: "
                "give one key per record"
            )
        if topic in self._partitions:
            # Per record, so records without a key spread over the partitions.
            return [
                await self.send(
                    topic, r, now=now, maxlen=maxlen, key=key, delay_s=delay_s, at=at,
                    idempotency_key=None if idempotency_keys is None else idempotency_keys[i],
                )
                for i, r in enumerate(records)
            ]  # fmt: skip
        encoded = [self._encode(topic, r) for r in records]
        if self.tracing is not None:
            for fields in encoded:
                self.tracing.inject(topic, fields)
        maxlen = maxlen or self.config.stream_maxlen
        if delay_s is not None or at is not None:
            due = due_ms(delay_s, at)
            assert due is not None
            return await self._send_later(topic, encoded, due, maxlen, now)
        out = current_outbox.get()
        if out is not None and not out.closed and not now:
            for fields in encoded:
                out.xadd(topic, maxlen, [*_chain(fields.items())])
            return [None] * len(encoded)
        flat = [[*_chain(fields.items())] for fields in encoded]
        user = None if idempotency_keys is None else [_check_key(k) for k in idempotency_keys]
        return list(await self.producer.write(topic, flat, maxlen, user))

    async def _send_later(
        self,
        topic: str,
        encoded: list[dict[str | bytes, str | bytes]],
        due: int,
        maxlen: int | None,
        now: bool,
    ) -> list[str | None]:
        out = current_outbox.get()
        if out is not None and not out.closed and not now:
            # Committed with the batch's acks, like any handler output.
            for fields in encoded:
                flat = [*_chain(fields.items())]
                ((_, key, score, member),) = schedule_commands(
                    out.namespace, topic, flat, due, maxlen or out.maxlen
                )
                out.zadd(key, int(score), member)
            return [None] * len(encoded)
        ids = await self.scheduler.schedule_many(topic, encoded, due, maxlen)
        return list(ids)

    def _encode(self, topic: str, record: Record) -> dict[str | bytes, str | bytes]:
        # A Struct sent to a stream this app consumes packed is packed the same way.
        codec = self._packed.get(topic)
        if codec is not None and isinstance(record, codec.schema):
            return codec.encode(record)
        return encode_fields(record)

    async def once(self, key: str, ttl_s: float) -> bool:
        """True the first time `key` is seen within `ttl_s` (SET NX EX), for side effects
        outside Redis that must not repeat when a message is redelivered.

        Example:
            >>> if await app.once(f"mail:{record.key}", ttl_s=86400):  # doctest: +SKIP
            ...     send_mail()
        """
        ms = max(1, int(ttl_s * 1000))
        return bool(await self.redis.client.set(keys.once(key), b"1", nx=True, px=ms))


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > 1000:
        raise ConfigError(
            f"idempotency_key {key!r:.60}: give a non-empty str of at most 1000 characters"
        )
    return key
