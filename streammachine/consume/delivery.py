"""Delivery of a batch to its handler: decode → handler → Retry/Skip, within the agent's timeout.

`MessageDelivery` calls a per-message handler for each entry in order, `BatchDelivery` calls a
batch handler once; both return which entries are done and which failed, and agree on the rules:
`Skip` acks without output, `Retry(delay_s)` retries later, any other error — and a handler call
cancelled at the agent's `timeout_s` — retries with backoff until `max_deliveries`, a message that
fails its schema goes straight to the dead letters (`deadletter.Failures` carries those decisions
out). Tracing wraps the handler and the stats are counted here around it, so the consumer loop
knows neither.

Timeouts cost nothing per message: the batch runs in one cancel scope, and the process's upkeep
tick (`Delivery.overdue`) cancels it when the call in progress has run past its deadline; the call
is marked failed with a `HandlerTimeout` and the rest of the batch goes on.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..codec import StructCodec
from ..exceptions import SerializationError, Skip
from .stats import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from ..message import Message
    from ..tracing import Tracing
    from .deadletter import Failed
    from .outbox import Outbox
    from .stats import AgentStats

__all__ = ["BatchDelivery", "Delivery", "HandlerTimeout", "MessageDelivery"]


class HandlerTimeout(TimeoutError):
    """A handler call ran past the agent's `timeout_s` and was cancelled."""


class Delivery:
    """Calls an agent's handler over a batch and reports what is done and what failed.

    Args:
        fn: the handler.
        codec: decodes `record.value` when the agent has a schema.
        stats: the agent's counters.
        tracing: wraps each call in a span, when configured.
        stream, group: for the spans.
        timeout_s: how long one handler call may run (None: no limit).
    """

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        codec: StructCodec | None,
        stats: AgentStats,
        *,
        tracing: Tracing | None = None,
        stream: str = "",
        group: str = "",
        timeout_s: float | None = None,
    ) -> None:
        self.fn = fn
        self.codec = codec
        self.stats = stats
        self.tracing = tracing
        self.stream = stream
        self.group = group
        self.timeout_s = timeout_s
        #: When the handler call in progress started (loop clock), or None between calls.
        self.started: float | None = None
        self._scope: anyio.CancelScope | None = None
        self._timed_out = False

    async def run(self, batch: list[Message], out: Outbox) -> tuple[list[str], Failed]:
        """Handle `batch`, buffering handler output in `out`; return (done ids, failures)."""
        raise NotImplementedError

    def overdue(self, now: float) -> bool:
        """Called by the upkeep tick: cancel the call in progress if it ran past its deadline.
        True while a call is past it (one that blocks the event loop cannot be cancelled: it
        shows as overdue until it returns)."""
        started, limit = self.started, self.timeout_s
        if started is None or limit is None or now - started < limit:
            return False
        if self._scope is not None and not self._timed_out:
            self._timed_out = True
            self._scope.cancel()
        return True

    def _timeout(self) -> HandlerTimeout:
        self.stats.timed_out += 1
        return HandlerTimeout(
            f"the handler ran longer than timeout_s={self.timeout_s:g} s and was cancelled"
        )


class MessageDelivery(Delivery):
    """A per-message handler: called for each entry in order; one failure fails one entry."""

    async def run(self, batch: list[Message], out: Outbox) -> tuple[list[str], Failed]:
        fn, codec, stats = self.fn, self.codec, self.stats
        if self.tracing is not None:
            fn = self.tracing.wrap(fn, self.stream, self.group)
        # The stats middleware, inlined: this loop runs once per message.
        buckets, bounds, clock = stats.latency_buckets, LATENCY_BUCKETS_S, time.perf_counter
        now = time.monotonic
        total_s = 0.0
        done: list[str] = []
        failed: Failed = []
        skipped = 0
        ops = out.ops
        i, count = 0, len(batch)
        while i < count:
            # One cancel scope for the rest of the batch; a timeout ends it at call i, which
            # fails, and the batch goes on after it in a new one.
            with anyio.CancelScope() as scope:
                self._scope = scope
                while i < count:
                    msg = batch[i]
                    key = out.current = msg.key or ""
                    mark = len(ops)  # this message's operations are appended after it
                    self.started = now()
                    t0 = clock()
                    i += 1
                    try:
                        if codec is not None:
                            msg.value = codec.decode(msg._fields)
                        await fn(msg)
                    except Skip:
                        skipped += 1
                        out.discard(mark)
                        done.append(key)
                        continue
                    except Exception as exc:
                        out.discard(mark)
                        failed.append((msg, exc))
                        continue
                    took = clock() - t0
                    total_s += took
                    buckets[bisect_left(bounds, took)] += 1
                    done.append(key)
            self.started = self._scope = None
            if scope.cancelled_caught:
                self._timed_out = False
                out.discard(mark)
                failed.append((batch[i - 1], self._timeout()))
        stats.latency_s_total += total_s
        stats.skipped += skipped
        stats.processed += len(done) - skipped
        return done, failed


class BatchDelivery(Delivery):
    """A batch handler: called once with every entry that decodes; it succeeds or fails whole."""

    async def run(self, batch: list[Message], out: Outbox) -> tuple[list[str], Failed]:
        failed: Failed = []
        if self.codec is not None:
            valid = []
            for msg in batch:
                try:
                    msg.value = self.codec.decode(msg._fields)
                except SerializationError as exc:
                    failed.append((msg, exc))
                    continue
                valid.append(msg)
            batch = valid
        if not batch:
            return [], failed
        out.current = ""
        out.whole = True
        ids = [m.key or "" for m in batch]
        t0 = time.perf_counter()
        error: BaseException | None = None
        with anyio.CancelScope() as scope:
            self._scope = scope
            self.started = time.monotonic()
            try:
                await self.fn(batch)
            except Skip:
                out.discard(0)
                self.stats.skipped += len(batch)
                return ids, failed
            except Exception as exc:
                error = exc
            finally:
                self.started = self._scope = None
        if scope.cancelled_caught:
            self._timed_out = False
            error = self._timeout()
        if error is not None:
            out.discard(0)
            return [], failed + [(m, error) for m in batch]
        self.stats.observe(time.perf_counter() - t0)
        self.stats.processed += len(batch)
        return ids, failed
