"""Reading the instance registry: the heartbeats every running App writes (`streammachine.presence.heartbeat`),
checked against their schema, with their age and freshness, for the dashboard, `top` and `/metrics`.

Readers derive a heartbeat's age from the key's remaining TTL, so clocks of other hosts never
matter. This module imports neither Starlette nor uvicorn, and writes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .. import keys
from ..consume.stats import AgentStats
from ..presence.heartbeat import AgentBeat, Heartbeat, TimerBeat

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "AgentBeat",
    "AgentStats",
    "Heartbeat",
    "TimerBeat",
    "check_heartbeat",
    "list_instances",
    "read_instances",
]

# Anything may sit under the prefix (another version, a hand-written key, a bug), and one bad record
# must not break every /metrics scrape or `top`: each record is checked against the schema when
# read, and one that does not fit is skipped, counted and logged once.

log = logging.getLogger("streammachine.dashboard")

_warned: set[str] = set()  # keys whose bad record was logged (once per key, bounded)


def check_heartbeat(found: dict[str, Any]) -> dict[str, Any] | str:
    """An instance found by `streammachine.admin.queries.list_instances` as a checked record (its fields
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
    from ..admin.queries import list_instances as read_raw

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
            record["id"] = found["key"][len(keys.INSTANCES) :]
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
    `streammachine.admin.queries.list_instances`); an instance is `fresh` when it beat within three
    intervals (a late one has a blocked loop or a hung Redis connection; a dead one ages out).

    Example:
        >>> [i["app"] for i in await list_instances(client)]  # doctest: +SKIP
        ['orders']
    """
    return (await read_instances(client))[0]
