"""The instance heartbeat: every running App announces itself in Redis with a TTL'd record.

Each process writes one JSON object at `streammachine:instances:<host>-<pid>-<random>` with a TTL
(15 s by default, refreshed every 2 s): the app's name, host, pid, start time, version, its agents
with their counters and handler-latency histogram, and its timers — a `Heartbeat`. A clean stop
deletes the key; a killed process stops refreshing it and it ages out. Consumers' housekeeping
(`liveness`) reads the keys to tell live processes from dead ones; the dashboard, `top` and
`/metrics` read the records (`streammachine.admin.instances`), deriving a heartbeat's age from
the key's remaining TTL, so clocks of other hosts never matter.

The App hands this module a typed `Snapshot` of itself; this module knows nothing else of it.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import anyio
import msgspec

from .. import keys
from ..consume.stats import AgentStats
from ..exceptions import REDIS_FAILURES
from .liveness import ALIVE_SCRIPT, PROCESSES_KEY, process_prefix

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = [
    "AgentBeat",
    "AgentStats",
    "Heartbeat",
    "Snapshot",
    "TimerBeat",
    "add_heartbeat",
    "heartbeat",
    "instance_record",
    "new_instance_id",
]

log = logging.getLogger("streammachine.presence.heartbeat")

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


class AgentBeat(msgspec.Struct):
    """One agent of a heartbeat."""

    name: str = ""
    stream: str = ""
    group: str = ""
    concurrency: NonNegInt = 1
    #: Partitions of a partitioned agent (0: not partitioned).
    partitions: NonNegInt = 0
    #: One owner process at a time (`@app.agent(exclusive=True)`).
    exclusive: bool = False
    #: Paused by an operator (`streammachine pause`): it reads nothing until resumed.
    paused: bool = False
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


class Snapshot(msgspec.Struct, frozen=True):
    """What a running App reports of itself in each beat (`App.snapshot()`).

    Example:
        >>> Snapshot("orders", [AgentBeat("bill", "orders", "billing")], []).agents[0].group
        'billing'
    """

    app: str
    agents: list[AgentBeat]
    timers: list[TimerBeat]
    latency_buckets_s: list[float] = []


class Beating(Protocol):
    """What the heartbeat needs of an App: its connection, a snapshot, its background tasks."""

    @property
    def redis(self) -> RedisConnection: ...

    background: list[Callable[[anyio.Event], Coroutine[Any, Any, None]]]

    def snapshot(self) -> Snapshot: ...


def new_instance_id() -> str:
    """`<host>-<pid>-<random>`: readable, and unique even when a pid is reused.

    Example:
        >>> new_instance_id().count("-") >= 2
        True
    """
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def instance_record(
    snapshot: Snapshot, instance_id: str, started_at: float, ttl_s: float, interval_s: float
) -> Heartbeat:
    """The heartbeat of the app `snapshot` describes, as of now.

    Example:
        >>> beat = instance_record(Snapshot("orders", [], []), "h-1-abc", 0.0, 15, 2)
        >>> beat.app, beat.ttl_s
        ('orders', 15)
    """
    from .. import __version__

    return Heartbeat(
        id=instance_id,
        app=snapshot.app,
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=started_at,
        heartbeat_at=time.time(),
        version=__version__,
        ttl_s=ttl_s,
        interval_s=interval_s,
        latency_buckets_s=list(snapshot.latency_buckets_s),
        agents=snapshot.agents,
        timers=snapshot.timers,
    )


async def heartbeat(
    app: Beating,
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
    key = keys.INSTANCES + instance_id
    started_at = time.time()
    ttl_ms = max(1, int(ttl_s * 1000))
    encode = msgspec.json.Encoder().encode
    failing = False
    while not stop.is_set():
        record = instance_record(app.snapshot(), instance_id, started_at, ttl_s, interval_s)
        try:
            # Bounded so a hung connection cannot keep the app from stopping.
            with anyio.fail_after(max(1.0, interval_s)):
                await app.redis.client.set(key, encode(record), px=ttl_ms)
                # The liveness registry consumers read (one key, not a SCAN): alive until
                # three beats are missed.
                await app.redis.script(ALIVE_SCRIPT)(
                    keys=[PROCESSES_KEY], args=[process_prefix(), int(3000 * interval_s + 1000)]
                )
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
            await app.redis.client.zrem(PROCESSES_KEY, process_prefix())
        except REDIS_FAILURES as exc:
            log.debug("could not remove instance %s (%s); it will age out", instance_id, exc)


def add_heartbeat(app: Beating, *, ttl_s: float = 15.0, interval_s: float = 2.0) -> None:
    """Make `app` run its instance heartbeat with these options, replacing one added before
    (so calling it again, e.g. to shorten the TTL in a test, never registers the app twice).

    Example:
        >>> add_heartbeat(app, ttl_s=5, interval_s=1)  # doctest: +SKIP
    """
    app.background[:] = [f for f in app.background if getattr(f, "func", None) is not heartbeat]
    app.background.append(functools.partial(heartbeat, app, ttl_s=ttl_s, interval_s=interval_s))
