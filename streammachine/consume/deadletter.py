"""Retries with backoff and dead letters for the entries whose handler failed.

Dead letters keep the raw bytes of every field in the order they arrived, followed by the
dead-letter fields (`DEAD_LETTER_FIELDS`), so `dead replay` restores the entry byte for byte.
An entry is dead-lettered only while this consumer still owns it (one script checks and moves it);
one another consumer took is that one's to finish.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from typing import TYPE_CHECKING, Any

from .. import keys
from ..codec import as_text
from ..exceptions import Retry, SerializationError
from .wire import LOST

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from ..message import Message
    from ..settings import ConsumerConfig
    from .stats import AgentStats

__all__ = [
    "DEAD_LETTER_FIELDS",
    "DEAD_LETTER_SCRIPT",
    "Failed",
    "Failures",
    "flat_fields",
    "split_dead",
]

log = logging.getLogger("streammachine.agent")

Failed = list[tuple["Message", BaseException]]

#: The fields appended, in this order, to a message when it is dead-lettered.
DEAD_LETTER_FIELDS = (
    "error",
    "error_type",
    "traceback",
    "deliveries",
    "source_stream",
    "source_id",
    "group",
    "failed_at",
)

# Dead-letter an entry only while this consumer still owns it: one that was claimed away is the
# new owner's to finish. KEYS: [stream, dead-letter stream]; ARGV: group, consumer, id, fields...
DEAD_LETTER_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
"""


def flat_fields(raw: Any) -> list[Any]:
    """An entry's fields as read (a flat list or a dict) as a flat [k1, v1, ...] list."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [x for kv in raw.items() for x in kv]
    return list(raw)


def split_dead(flat: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """A dead letter's raw fields split into the original message's (as it arrived, in order)
    and the dead-letter fields. Entries written before the fields were appended in a fixed
    order are split by name.

    Example:
        >>> split_dead([b"n", b"\\xff", *[x for f in DEAD_LETTER_FIELDS for x in (f, "v")]])[0]
        [b'n', b'\\xff']
    """
    n = 2 * len(DEAD_LETTER_FIELDS)
    names = [as_text(k) for k in flat[-n::2]] if len(flat) >= n else []
    if names == list(DEAD_LETTER_FIELDS):
        tail = flat[-n:]
        return flat[:-n], dict(zip(names, tail[1::2], strict=True))
    original: list[Any] = []
    meta: dict[str, Any] = {}
    for k, v in zip(flat[::2], flat[1::2], strict=False):
        if as_text(k) in DEAD_LETTER_FIELDS:
            meta[as_text(k)] = v
        else:
            original += [k, v]
    return original, meta


class Failures:
    """Retries with backoff and dead letters for the entries whose handler failed.

    It talks to Redis through the shared pool: it runs while the consumer's next read is in
    flight on the consumer's own connection.
    """

    def __init__(
        self,
        redis: RedisConnection,
        stream: str,
        consumer: str,
        cfg: ConsumerConfig,
        stats: AgentStats,
        agent_name: str,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.consumer = consumer
        self.cfg = cfg
        self.stats = stats
        self.agent_name = agent_name
        self.dead_letter = cfg.dead_letter or keys.dead_letters(stream)
        #: entry id → when it is due again (loop clock)
        self.retry_at: dict[str, float] = {}

    def due(self) -> list[str]:
        """Take the entries whose retry is due."""
        now = time.monotonic()
        due = [i for i, t in self.retry_at.items() if t <= now]
        for i in due:
            del self.retry_at[i]
        return due

    def later(self, entry_id: str, delay_s: float = 0.0) -> None:
        """Handle `entry_id` (owned by this consumer) again after `delay_s`."""
        self.retry_at[entry_id] = time.monotonic() + delay_s

    async def handle(self, failed: Failed) -> None:
        """Log each failure; schedule a retry after backoff, or dead-letter it."""
        stats, cfg = self.stats, self.cfg
        for msg, exc in failed:
            key, deliveries = msg.key or "", msg.deliveries
            if isinstance(exc, Retry):
                stats.retried += 1
                self.later(key, exc.delay_s)
                continue
            stats.failed += 1
            if isinstance(exc, SerializationError) or (
                cfg.max_deliveries and deliveries >= cfg.max_deliveries
            ):
                await self._dead_letter(msg, exc)
                continue
            log.error(
                "%s: handler %s failed on %s %s (delivery %d); it stays pending",
                self.consumer, self.agent_name, self.stream, key, deliveries,
                exc_info=(type(exc), exc, exc.__traceback__),
            )  # fmt: skip
            backoff_s = min(60.0, cfg.retry_backoff_ms / 1000.0 * 2 ** max(0, deliveries - 1))
            self.later(key, backoff_s * (0.5 + random.random() / 2))
            stats.retried += 1

    async def _dead_letter(self, msg: Message, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        meta = (
            str(exc)[:2000] or type(exc).__name__,
            type(exc).__name__,
            tb,
            str(msg.deliveries),
            self.stream,
            msg.key or "",
            self.cfg.group,
            f"{time.time():.3f}",
        )
        fields = flat_fields(msg._fields)
        for name, value in zip(DEAD_LETTER_FIELDS, meta, strict=True):
            fields += [name, value]
        key, group, dead = msg.key or "", self.cfg.group, self.dead_letter
        client = self.redis.client
        try:
            if self.redis.same_slot([self.stream, dead]):
                script = self.redis.script(DEAD_LETTER_SCRIPT)
                moved = await script(
                    keys=[self.stream, dead], args=[group, self.consumer, key, *fields]
                )
            else:  # another cluster slot: not atomic, an entry may be dead-lettered twice
                async with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command("XADD", dead, "*", *fields)
                    pipe.xack(self.stream, group, key)
                    moved = (await pipe.execute())[-1]
        except Exception as err:
            # Retry it later as a new delivery; it fails again and is dead-lettered then.
            kind = "lost Redis" if isinstance(err, LOST) else "failed"
            log.error("%s: dead-lettering %s %s (%s); retrying", self.consumer, key, kind, err)
            self.later(key, 1.0)
            return
        if not moved:
            log.info("%s: %s was claimed by another consumer; it finishes it", self.consumer, key)
            return
        self.stats.dead += 1
        log.error(
            "%s: %s %s moved to %s after %d deliveries: %s: %s",
            self.consumer, self.stream, key, dead, msg.deliveries, type(exc).__name__, exc,
        )  # fmt: skip
