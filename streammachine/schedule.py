"""Timer leases, cron, delayed sends and rate limits: scheduling that holds across processes and hosts.

This module gathers the names of `timing` (key names, durations, rates), `delayed` (delayed
entries), `lease` (timer leases), `cron` and `rate` (rate limits), where each is defined.

Keys (each under one hash tag, so the keys of one scope share a Redis Cluster slot):

* `streammachine:lease:{<app>}:timers` — the token of the process that runs the app's
  `scope="app"` timers (SET NX PX, renewed by compare-and-pexpire, released by compare-and-delete);
* `streammachine:cron:{<app>}:<cron>` — the newest fire time (epoch ms) claimed of that cron;
  a fire time is run by the process whose compare-and-set moves it forward, so once;
* `streammachine:sched:{<namespace>}` — the delayed entries of a namespace: a sorted set scored
  by due time (epoch ms) whose members carry the whole entry (see `encode_entry`), so scheduling
  is one ZADD and moving is one script that reads nothing but that key; `…:inflight` (cluster
  fallback) and `…:failed` (entries Redis refused to append) beside it;
* `streammachine:rate:{<name>}` — a GCRA limiter's theoretical arrival time (epoch µs).

Example:
    >>> schedule_commands("default", "orders", ["id", "7"], 1700000000000)[0][:3]
    ['ZADD', 'streammachine:sched:{default}', 1700000000000]
"""

from __future__ import annotations

from .cron import CRON_CATCH_UP_S, Cron
from .delayed import (
    INFLIGHT_MS,
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
from .timing import (
    PREFIX,
    cron_key,
    due_ms,
    parse_duration,
    parse_rate,
    rate_key,
    scheduled_key,
    takeover_bound_s,
    timer_lease_key,
)

__all__ = [
    "CRON_CATCH_UP_S",
    "INFLIGHT_MS",
    "MOVER_POLL_S",
    "MOVE_LIMIT",
    "PREFIX",
    "Cron",
    "Lease",
    "RateLimiter",
    "ScheduledEntry",
    "Scheduler",
    "cron_key",
    "decode_entry",
    "due_ms",
    "encode_entry",
    "parse_duration",
    "parse_rate",
    "rate_key",
    "run_leased_timers",
    "schedule_commands",
    "scheduled_key",
    "scheduled_summary",
    "takeover_bound_s",
    "timer_lease_key",
]
