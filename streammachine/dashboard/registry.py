"""Instance registry: every running App announces itself in Redis with a TTL heartbeat.

Each process writes one JSON string at `streammachine:instances:<host>-<pid>-<random>` with a
TTL (15 s by default, refreshed every 2 s): the app's name, host, pid, start time, version, its
agents with their counters and handler-latency histogram, and its timers. A clean stop deletes
the key; a killed process stops refreshing it and it ages out. Readers (the dashboard, `top`,
`/metrics`) derive a heartbeat's age from the key's remaining TTL, so clocks of other hosts
never matter.

This module imports neither Starlette nor uvicorn: `App` uses it on every run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import msgspec
from redis.exceptions import RedisError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..app import App

__all__ = [
    "INSTANCE_PREFIX",
    "Heartbeat",
    "add_heartbeat",
    "check_heartbeat",
    "heartbeat",
    "instance_record",
    "list_instances",
    "new_instance_id",
    "read_instances",
]

log = logging.getLogger("streammachine.dashboard")

from ..liveness import INSTANCE_PREFIX  # noqa: E402 - one prefix, kept in the core


def new_instance_id() -> str:
    """`<host>-<pid>-<random>`: readable, and unique even when a pid is reused.

    Example:
        >>> new_instance_id().count("-") >= 2
        True
    """
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def instance_record(
    app: App, instance_id: str, started_at: float, ttl_s: float, interval_s: float
) -> dict[str, Any]:
    """The JSON-ready heartbeat of `app` as it is now.

    Example:
        >>> rec = instance_record(app, "h-1-abc", time.time(), 15, 5)  # doctest: +SKIP
        >>> rec["agents"][0]["stats"]["processed"]  # doctest: +SKIP
        42
    """
    from .. import __version__
    from ..agent import LATENCY_BUCKETS_S

    # A supervised worker runs a subset: App.run records it as `active_agents`/`active_timers`.
    agents = getattr(app, "active_agents", None)
    timers = getattr(app, "active_timers", None)
    agents = app.agents if agents is None else agents
    timers = app.timers if timers is None else timers

    return {
        "id": instance_id,
        "app": app.name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started_at,
        "heartbeat_at": time.time(),
        "version": __version__,
        "ttl_s": ttl_s,
        "interval_s": interval_s,
        "latency_buckets_s": list(LATENCY_BUCKETS_S),
        "agents": [
            {
                "name": a.name,
                "stream": a.config.stream,
                "group": a.config.group,
                "concurrency": a.config.concurrency,
                "stats": a.stats.as_dict(),
            }
            for a in agents
        ],
        "timers": [
            {
                "name": t.name,
                "interval_s": float(t.config.interval),
                "runs": t.runs,
                "failures": t.failures,
            }
            for t in timers
        ],
    }


async def heartbeat(
    app: App,
    stop: anyio.Event,
    *,
    ttl_s: float = 15.0,
    interval_s: float = 2.0,
    instance_id: str | None = None,
) -> None:
    """Register `app` in Redis until `stop` is set, then remove it (an `App.background` task).

    Redis errors are logged once per outage and never stop the app; the key simply ages out
    while Redis is unreachable and comes back with the next successful beat.

    Args:
        app: the running App.
        stop: set when the app stops.
        ttl_s: the key's time to live; a killed process disappears after this long.
        interval_s: how often the record is rewritten (keep it well below `ttl_s`).
        instance_id: the id to register under (default: `new_instance_id()`).

    Example:
        >>> app.background.append(functools.partial(heartbeat, app))  # doctest: +SKIP
    """
    instance_id = instance_id or new_instance_id()
    key = INSTANCE_PREFIX + instance_id
    started_at = time.time()
    ttl_ms = max(1, int(ttl_s * 1000))
    failing = False
    while not stop.is_set():
        record = instance_record(app, instance_id, started_at, ttl_s, interval_s)
        try:
            # Bounded so a hung connection cannot keep the app from stopping.
            with anyio.fail_after(max(1.0, interval_s)):
                await app.redis.client.set(key, json.dumps(record), px=ttl_ms)
            if failing:
                log.info("instance heartbeat to Redis restored")
            failing = False
        except Exception as exc:  # the heartbeat must never take the app down
            if not failing:
                log.warning(
                    "instance heartbeat failed (%s: %s); retrying every %g s",
                    type(exc).__name__, exc, interval_s,
                )  # fmt: skip
            failing = True
        with anyio.move_on_after(interval_s):
            await stop.wait()
    with anyio.move_on_after(2.0, shield=True):
        try:
            await app.redis.client.delete(key)
        except (RedisError, OSError) as exc:
            log.debug("could not remove instance %s (%s); it will age out", instance_id, exc)


def add_heartbeat(app: App, *, ttl_s: float = 15.0, interval_s: float = 2.0) -> None:
    """Make `app` run its instance heartbeat with these options, replacing one added before
    (so calling it again, e.g. to shorten the TTL in a test, never registers the app twice).

    Example:
        >>> add_heartbeat(app, ttl_s=5, interval_s=1)  # doctest: +SKIP
    """
    app.background[:] = [f for f in app.background if getattr(f, "func", None) is not heartbeat]
    app.background.append(functools.partial(heartbeat, app, ttl_s=ttl_s, interval_s=interval_s))


# -- reading heartbeats back ------------------------------------------------------------------
#
# Anything may sit under the prefix (another version, a hand-written key, a bug), and one bad record
# must not break every /metrics scrape or `top`: each record is checked against this schema when
# read, and one that does not fit is skipped, counted and logged once.

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


class AgentStats(msgspec.Struct):
    """An agent's counters in a heartbeat (`Stats.as_dict`)."""

    processed: NonNegInt = 0
    failed: NonNegInt = 0
    retried: NonNegInt = 0
    dead: NonNegInt = 0
    skipped: NonNegInt = 0
    latency_s_total: NonNegFloat = 0.0
    latency_buckets: list[NonNegInt] = []


class AgentBeat(msgspec.Struct):
    """One agent of a heartbeat."""

    name: str = ""
    stream: str = ""
    group: str = ""
    concurrency: NonNegInt = 1
    stats: AgentStats = msgspec.field(default_factory=AgentStats)


class TimerBeat(msgspec.Struct):
    """One timer of a heartbeat."""

    name: str = ""
    interval_s: NonNegFloat = 0.0
    runs: NonNegInt = 0
    failures: NonNegInt = 0


class Heartbeat(msgspec.Struct):
    """The schema of an instance record as `instance_record` writes it; every field has a default,
    so records of older versions (and tests' hand-written ones) still read.

    Example:
        >>> msgspec.convert({"app": "orders", "pid": 7}, Heartbeat).pid
        7
    """

    id: str | None = None
    app: str | None = None
    host: str | None = None
    pid: NonNegInt | None = None
    started_at: NonNegFloat | None = None
    heartbeat_at: NonNegFloat | None = None
    version: str | None = None
    ttl_s: NonNegFloat | None = None
    interval_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    latency_buckets_s: list[NonNegFloat] = []
    agents: list[AgentBeat] = []
    timers: list[TimerBeat] = []


_warned: set[str] = set()  # keys whose bad record was logged (once per key, bounded)


def check_heartbeat(found: dict[str, Any]) -> dict[str, Any] | str:
    """An instance found by `streammachine.queries.list_instances` as a checked record (its fields
    with the schema's defaults filled in), or why it is not a valid heartbeat.

    Example:
        >>> check_heartbeat({"format": "json", "data": {"agents": [1]}})  # doctest: +ELLIPSIS
        'Expected `object`, got `int` - at `$.agents[0]`'
    """
    if found.get("format") != "json":
        return "not a JSON object"
    try:
        beat = msgspec.convert(found["data"], Heartbeat)
    except msgspec.ValidationError as exc:
        return str(exc)
    # Unknown top-level fields (a newer version's) are kept, the known ones as checked; a field
    # the record does not have stays absent, so readers' `.get(name, default)` still applies.
    checked = {k: v for k, v in msgspec.to_builtins(beat).items() if v is not None}
    record: dict[str, Any] = {**found["data"], **checked}
    return record


async def read_instances(client: aioredis.Redis) -> tuple[list[dict[str, Any]], list[str]]:
    """The valid instance records (as `list_instances` returns them) and the keys of the records
    that are not valid heartbeats (not JSON, not an object, or not of the `Heartbeat` schema).

    Example:
        >>> good, bad = await read_instances(client)  # doctest: +SKIP
        >>> bad  # doctest: +SKIP
        ['streammachine:instances:junk']
    """
    from ..queries import list_instances as read_raw

    out: list[dict[str, Any]] = []
    bad: list[str] = []
    for found in await read_raw(client):
        checked = check_heartbeat(found)
        if isinstance(checked, str):
            bad.append(found["key"])
            if found["key"] not in _warned:
                if len(_warned) > 10_000:
                    _warned.clear()
                _warned.add(found["key"])
                log.warning("skipping the instance record %s: %s", found["key"], checked)
            continue
        record = checked
        if record.get("id") is None:
            record["id"] = found["key"][len(INSTANCE_PREFIX) :]
        age = found["age_s"]
        interval = record.get("interval_s") or 2.0
        record["heartbeat_age_s"] = age
        record["fresh"] = age is None or age <= 3 * interval + 1.0
        out.append(record)
    out.sort(key=lambda r: (str(r.get("app") or ""), str(r.get("id") or "")))
    return out, bad


async def list_instances(client: aioredis.Redis) -> list[dict[str, Any]]:
    """Every registered instance's record, sorted by app and id, with `heartbeat_age_s` and
    `fresh` added; records that are not valid heartbeats are left out (see `read_instances`).

    `heartbeat_age_s` comes from the key's remaining TTL (no other host's clock involved; see
    `streammachine.queries.list_instances`); an instance is `fresh` when it beat within three
    intervals (a late one has a blocked loop or a hung Redis connection; a dead one ages out).

    Example:
        >>> [i["app"] for i in await list_instances(client)]  # doctest: +SKIP
        ['orders']
    """
    return (await read_instances(client))[0]
