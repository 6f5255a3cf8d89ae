"""An agent's counters in this process: handled, failed, retried, dead-lettered, skipped, and a
handler-latency histogram (read by the heartbeat, the dashboard and /metrics)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(slots=True)
class AgentStats:
    """Counters of one agent in this process; `latency_buckets[i]` counts handler calls that
    took at most `LATENCY_BUCKETS_S[i]` (not cumulative; the last slot is +Inf)."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0
    #: batches being handled right now
    running: int = 0
    latency_s_total: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))

    def observe(self, seconds: float) -> None:
        """Count one handler call that took `seconds`."""
        self.latency_s_total += seconds
        self.latency_buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {
            "processed": self.processed,
            "failed": self.failed,
            "retried": self.retried,
            "dead": self.dead,
            "skipped": self.skipped,
            "latency_s_total": round(self.latency_s_total, 6),
            "latency_buckets": list(self.latency_buckets),
        }
