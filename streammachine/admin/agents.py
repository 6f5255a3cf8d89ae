"""Pausing and resuming an agent across every process and host of its app, and the agents of each
app with their state.

The state lives in Redis: the set `keys.paused(app)` holds the names of the app's paused agents.
Every worker of the app reads it at least once a second and stops reading a paused agent's stream
(handlers in flight finish and commit; the keepalive keeps their entries; nothing is claimed from
a paused process), and starts again when the name leaves the set; a worker started while its agent
is paused stays paused. Each worker reports what it does in its heartbeat (an agent's `paused`).

Example:
    >>> await pause_agent(conn, "shop", "bill")  # doctest: +SKIP
    >>> [(a["agent"], a["paused"]) for a in await list_agents(conn)]  # doctest: +SKIP
    [('bill', True)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import keys
from ..codec import as_text
from ..exceptions import ConfigError
from .audit import Actor, record_action
from .instances import list_instances
from .queries import MAX_NAME_CHARS, client_of

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..connection import RedisConnection

__all__ = [
    "MAX_PAUSED",
    "agent_rows",
    "list_agents",
    "pause_agent",
    "paused_agents",
    "resume_agent",
]

#: At most this many paused names are read per app (a set someone filled is not read whole).
MAX_PAUSED = 1000
#: At most this many apps' paused sets are read.
MAX_APPS = 1000


def _check(what: str, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"the {what} name is empty: give a name")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(
            f"the {what} name is {len(name)} characters; the limit is {MAX_NAME_CHARS}"
        )
    return name


async def paused_agents(
    client: aioredis.Redis | RedisConnection, apps: list[str] | None = None
) -> dict[str, set[str]]:
    """The paused agents of each app (of `apps`, or of every app that has a paused set).

    Example:
        >>> await paused_agents(conn, ["shop"])  # doctest: +SKIP
        {'shop': {'bill'}}
    """
    c = client_of(client)
    if apps is None:
        found: list[str] = []
        async for key in c.scan_iter(match=keys.PAUSED_MATCH, count=1000, _type="set"):
            app = keys.scope_of(as_text(key))
            if app is not None and as_text(key) == keys.paused(app):
                found.append(app)
            if len(found) >= MAX_APPS:
                break
        apps = sorted(set(found))
    if not apps:
        return {}
    async with c.pipeline(transaction=False) as pipe:
        for app in apps:
            pipe.sscan(keys.paused(app), 0, count=MAX_PAUSED)
        replies = await pipe.execute(raise_on_error=False)
    out: dict[str, set[str]] = {}
    for app, reply in zip(apps, replies, strict=True):
        if isinstance(reply, Exception):  # WRONGTYPE: someone else's key; nothing is paused
            continue
        names = {as_text(m) for m in reply[1]} if reply else set()
        names = {n for n in names if 0 < len(n) <= MAX_NAME_CHARS}
        if names:
            out[app] = names
    return out


def agent_rows(
    instances: list[dict[str, Any]], paused: dict[str, set[str]]
) -> list[dict[str, Any]]:
    """`list_agents`' rows from instance records (`list_instances`) and `paused_agents`."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(app: str, name: str, stream: Any = None, group: Any = None) -> dict[str, Any]:
        return rows.setdefault(
            (app, name),
            {"app": app, "agent": name, "stream": stream, "group": group}
            | {"instances": 0, "reading": 0, "paused_instances": 0},
        )

    for inst in instances:
        app = str(inst.get("app") or "")
        for a in inst.get("agents") or []:
            r = row(app, str(a.get("name") or ""), a.get("stream"), a.get("group"))
            r["instances"] += 1
            state = a.get("paused")
            if state is True:
                r["paused_instances"] += 1
            elif state is False:
                r["reading"] += 1
    for app, names in paused.items():
        for name in names:
            row(app, name)
    for (app, name), r in rows.items():
        r["paused"] = name in paused.get(app, set())
    return [rows[k] for k in sorted(rows)]


async def list_agents(client: aioredis.Redis | RedisConnection) -> list[dict[str, Any]]:
    """Each app's agents, from the running instances' heartbeats and the paused sets.

    Returns:
        `[{"app", "agent", "stream", "group", "paused" (asked for: its name is in the set),
        "instances" (running it), "reading" (instances that say they read), "paused_instances"
        (instances that say they stopped)}]`, sorted by app and agent. An agent paused while no
        instance runs it is listed with `instances` 0.

    Example:
        >>> [(a["agent"], a["paused"]) for a in await list_agents(conn)]  # doctest: +SKIP
        [('bill', True)]
    """
    return agent_rows(await list_instances(client), await paused_agents(client))


async def _known(client: Any, app: str, agent: str) -> bool:
    """False when the app runs (it has instances) and none of them has this agent."""
    agents = [
        str(a.get("name"))
        for i in await list_instances(client)
        if i.get("app") == app
        for a in i.get("agents") or []
    ]
    if agents and agent not in agents:
        raise ConfigError(
            f"app {app!r} has no agent {agent!r}; its agents: {', '.join(sorted(set(agents)))}"
        )
    return bool(agents)


async def _check_set(conn: RedisConnection, app: str) -> None:
    kind = as_text(await conn.client.type(keys.paused(app)))
    if kind not in ("set", "none"):
        raise ConfigError(
            f"{keys.paused(app)} holds a {kind}, not a set of agent names (someone else's key?)"
        )


async def pause_agent(
    conn: RedisConnection, app: str, agent: str, *, actor: Actor | None = None
) -> dict[str, Any]:
    """Pause `agent` of `app` in every process and host (now and for workers started later).

    Returns:
        `{"app", "agent", "paused": True, "changed" (False when it was paused already),
        "running" (whether any instance of the app runs the agent now)}`.

    Raises:
        ConfigError: an empty or too long name, or the app runs and has no such agent.
    """
    _check("app", app)
    _check("agent", agent)
    running = await _known(conn, app, agent)
    await _check_set(conn, app)
    changed = bool(await conn.client.sadd(keys.paused(app), agent))
    await record_action(
        conn, actor or Actor("api", "python"), "pause", f"{app}/{agent}", int(changed)
    )
    return {"app": app, "agent": agent, "paused": True, "changed": changed, "running": running}


async def resume_agent(
    conn: RedisConnection, app: str, agent: str, *, actor: Actor | None = None
) -> dict[str, Any]:
    """Let `agent` of `app` read again everywhere (see `pause_agent`).

    Returns:
        `{"app", "agent", "paused": False, "changed" (False when it was not paused), "running"}`.
    """
    _check("app", app)
    _check("agent", agent)
    await _check_set(conn, app)
    changed = bool(await conn.client.srem(keys.paused(app), agent))
    running = any(
        a.get("name") == agent
        for i in await list_instances(conn)
        if i.get("app") == app
        for a in i.get("agents") or []
    )
    await record_action(
        conn, actor or Actor("api", "python"), "resume", f"{app}/{agent}", int(changed)
    )
    return {"app": app, "agent": agent, "paused": False, "changed": changed, "running": running}
