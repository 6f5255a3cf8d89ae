"""An agent's counters in this process — handled, failed, retried, dead-lettered, skipped, timed
out, operations dropped because another consumer took their entries — and a handler-latency
histogram. One type: the consumers count into it, the heartbeat writes it to Redis and the
dashboard and /metrics read it back (validated: counts are never negative)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Annotated, Any

import msgspec

__all__ = ["LATENCY_BUCKETS_S", "AgentStats"]

#: Upper bounds (seconds) of the handler-latency histogram buckets; the last is +Inf.
LATENCY_BUCKETS_S = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


def _buckets() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS_S) + 1)


class AgentStats(msgspec.Struct, gc=False):
    """Counters of one agent in one process; `latency_buckets[i]` counts handler calls that took
    at most `LATENCY_BUCKETS_S[i]` (not cumulative; the last slot is +Inf).

    Example:
        >>> s = AgentStats()
        >>> s.observe(0.002)
        >>> s.latency_buckets[3]
        1
    """

    processed: NonNegInt = 0
    failed: NonNegInt = 0
    retried: NonNegInt = 0
    dead: NonNegInt = 0
    skipped: NonNegInt = 0
    #: handler calls cancelled at the agent's `timeout_s` (each also counts as failed)
    timed_out: NonNegInt = 0
    #: outputs and state changes not written because another consumer took their entries
    dropped: NonNegInt = 0
    #: batches being handled right now
    running: NonNegInt = 0
    #: handler calls running longer than `timeout_s` right now (a handler blocking the loop)
    overdue: NonNegInt = 0
    latency_s_total: NonNegFloat = 0.0
    latency_buckets: list[NonNegInt] = msgspec.field(default_factory=_buckets)

    def observe(self, seconds: float) -> None:
        """Count one handler call that took `seconds`."""
        self.latency_s_total += seconds
        self.latency_buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def copy(self) -> AgentStats:
        """A snapshot of the counters (for a heartbeat)."""
        return msgspec.structs.replace(
            self,
            latency_s_total=round(self.latency_s_total, 6),
            latency_buckets=list(self.latency_buckets),
        )

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return msgspec.to_builtins(self.copy())  # type: ignore[no-any-return]
