"""Scheduling that holds across processes and hosts: timers, timer leases, cron, delayed sends,
rate limits.

`timer` (periodic tasks), `lease` (one process runs an app's timers), `cron` (wall-clock tasks,
each fire time once), `delayed` (entries kept in Redis until due, and their mover; `entries` their
format, `backlog` what waits overdue or failed), `rate` (GCRA
limits shared by every consumer), `timing` (durations, rates, due times). Key names are in
`streammachine.keys`.

Every name below loads on first use, so importing one of these modules (the delivery core reads
`rate`) does not load the others.

Example:
    >>> from streammachine.schedule import schedule_commands
    >>> schedule_commands("default", "orders", ["id", "7"], 1700000000000)[0][:3]
    ['ZADD', 'streammachine:sched:{default}', 1700000000000]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backlog import BACKLOG_S, backlog_problems
    from .cron import CRON_CATCH_UP_S, Cron
    from .delayed import (
        INFLIGHT_MS,
        MAX_DELAYED_FIELDS,
        MOVE_LIMIT,
        MOVER_POLL_S,
        ScheduledEntry,
        Scheduler,
        decode_entry,
        encode_entry,
        schedule_commands,
        scheduled_summary,
    )
    from .lease import Lease, run_leased_timers
    from .rate import RateLimiter
    from .timer import Timer
    from .timing import (
        MAX_DELAY_S,
        due_ms,
        parse_duration,
        parse_rate,
        takeover_bound_s,
    )

_LAZY = {
    "BACKLOG_S": ".backlog",
    "backlog_problems": ".backlog",
    "MAX_DELAYED_FIELDS": ".entries",
    "CRON_CATCH_UP_S": ".cron",
    "Cron": ".cron",
    "INFLIGHT_MS": ".delayed",
    "MOVE_LIMIT": ".delayed",
    "MOVER_POLL_S": ".delayed",
    "ScheduledEntry": ".delayed",
    "Scheduler": ".delayed",
    "decode_entry": ".delayed",
    "encode_entry": ".delayed",
    "schedule_commands": ".delayed",
    "scheduled_summary": ".delayed",
    "Lease": ".lease",
    "run_leased_timers": ".lease",
    "RateLimiter": ".rate",
    "Timer": ".timer",
    "MAX_DELAY_S": ".timing",
    "due_ms": ".timing",
    "parse_duration": ".timing",
    "parse_rate": ".timing",
    "takeover_bound_s": ".timing",
}

__all__ = [
    "BACKLOG_S",
    "CRON_CATCH_UP_S",
    "INFLIGHT_MS",
    "MAX_DELAYED_FIELDS",
    "MAX_DELAY_S",
    "MOVER_POLL_S",
    "MOVE_LIMIT",
    "Cron",
    "Lease",
    "RateLimiter",
    "ScheduledEntry",
    "Scheduler",
    "Timer",
    "backlog_problems",
    "decode_entry",
    "due_ms",
    "encode_entry",
    "parse_duration",
    "parse_rate",
    "run_leased_timers",
    "schedule_commands",
    "scheduled_summary",
    "takeover_bound_s",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streammachine.schedule' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
