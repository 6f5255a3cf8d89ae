"""The operator tools of the MCP server, without the `mcp` SDK: agents (list, pause, resume), dead
letters (show, retry, edit and retry, purge), pending entries (dead-letter, hand back), rewinding a
group, delayed entries (list, promote, cancel), the message inspector and the audit trail — each a
thin call into the command layer (`streammachine.admin`), audited as `mcp`.

The destructive ones (`CONFIRMED`) get their confirmation from `confirm` before their body runs;
here they take how it was confirmed.

Example:
    >>> ops = OpsTools(tools)  # doctest: +SKIP
    >>> (await ops.agent_pause("shop", "bill")).paused  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextvars
import json
from typing import Annotated, Any

from pydantic import BaseModel, Field

from ..admin import agents as admin_agents
from ..admin import pending as admin_pending
from ..admin.audit import Actor, read_audit
from ..admin.deadletters import DeadFilter, show_dead
from ..admin.inspector import inspect_stream
from ..admin.replay import edit_and_retry, purge_dead, retry_dead
from ..admin.rewind import rewind_group
from ..admin.scheduled import cancel_scheduled, list_scheduled, promote_scheduled
from .results import MAX_RESULT_BYTES, Bounded, ToolFailure
from .tools import Tools

__all__ = ["CONFIRMED", "OpsTools", "mcp_client"]

#: The operator tools that need a confirmation (unless they are a dry run).
CONFIRMED = (
    "dead_edit_retry",
    "dead_purge",
    "pending_dead_letter",
    "pending_hand_back",
    "group_rewind",
    "scheduled_cancel",
)
#: The client calling a tool, as its `initialize` named itself (set by the server per request).
mcp_client: contextvars.ContextVar[str] = contextvars.ContextVar("mcp_client", default="")

Name = Annotated[str, Field(min_length=1, max_length=1024)]
StreamName = Annotated[str, Field(min_length=1, max_length=1024, description="Stream name.")]
Ids = Annotated[
    list[Annotated[str, Field(max_length=64)]],
    Field(min_length=1, max_length=1000, description="Entry ids, e.g. 1700000000000-0."),
]
Where = Annotated[
    list[Annotated[str, Field(max_length=2000)]] | None,
    Field(max_length=20, description="FIELD=VALUE (equal) or FIELD~TEXT (contains)."),
]
When = Annotated[str | None, Field(max_length=200, description="ISO 8601, 10m, 2h or an id.")]
DryRun = Annotated[bool, Field(description="Only say what would be done.")]


class Agent(BaseModel):
    app: str
    agent: str
    stream: str | None
    group: str | None
    paused: bool = Field(description="Paused for the whole app (its name is in the paused set).")
    instances: int = Field(description="Running instances that have this agent.")
    reading: int = Field(description="Instances that report they read its stream.")
    paused_instances: int = Field(description="Instances that report they stopped reading.")


class AgentsResult(Bounded):
    agents: list[Agent]


class AgentChange(BaseModel):
    app: str
    agent: str
    paused: bool
    changed: bool = Field(description="False when it was in that state already.")
    running: bool = Field(description="Whether an instance of the app runs the agent now.")


class Detail(Bounded):
    """A result whose shape follows the command layer's (see the tool's description)."""

    result: dict[str, Any]


def _bounded(result: dict[str, Any], lists: tuple[str, ...]) -> Detail:
    """`result` with its long lists cut until its JSON fits the result budget."""
    cut = False
    for name in lists:
        items = result.get(name)
        while (
            isinstance(items, list)
            and items
            and len(json.dumps(result, default=str)) > MAX_RESULT_BYTES
        ):
            items.pop()
            cut = True
    note = "cut to fit: ask for fewer (count, a narrower range)" if cut else None
    return Detail(result=result, truncated=cut, note=note)


class OpsTools:
    """The operator tools over the server's `Tools` (its connection and settings)."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    def actor(self) -> Actor:
        """Who acts: this MCP server on behalf of the client that called."""
        return Actor("mcp", mcp_client.get() or "an MCP client")

    # -- agents

    async def agents_list(self) -> AgentsResult:
        """Each app's agents with their state: paused (for the whole app) or running, and how
        many instances run and read them."""
        found = await admin_agents.list_agents(self.tools.conn)
        agents = [Agent(**a) for a in found[:1000]]
        return AgentsResult(agents=agents, truncated=len(found) > 1000)

    async def agent_pause(self, app: Name, agent: Name) -> AgentChange:
        """Pause an agent in every process and host of its app: each stops reading within about
        a second (handlers in flight finish); workers started later start paused."""
        r = await admin_agents.pause_agent(self.tools.conn, app, agent, actor=self.actor())
        return AgentChange(**r)

    async def agent_resume(self, app: Name, agent: Name) -> AgentChange:
        """Let a paused agent read again in every process and host of its app."""
        r = await admin_agents.resume_agent(self.tools.conn, app, agent, actor=self.actor())
        return AgentChange(**r)

    # -- dead letters

    async def dead_show(
        self, stream: StreamName, id: Annotated[str, Field(max_length=64)]
    ) -> Detail:
        """One dead letter: why it failed, the original message decoded (text, JSON, msgpack)
        under `message`, and every field as stored (escaped) under `raw`."""
        found = await show_dead(self.tools.conn, stream, id)
        if found is None:
            raise ToolFailure(f"no dead letter {id} of {stream!r}; see stream_dead_letters")
        return _bounded(found, ("raw",))

    async def dead_retry(
        self,
        stream: StreamName,
        ids: Annotated[
            list[Annotated[str, Field(max_length=64)]] | None, Field(max_length=1000)
        ] = None,
        where: Where = None,
        error: Annotated[str | None, Field(max_length=2000)] = None,
        since: When = None,
        until: When = None,
        dry_run: DryRun = False,
    ) -> Detail:
        """Send dead letters back to their source streams: the given ids, else all that match
        the filter (all of them without one). Each goes back by itself; one Redis refuses stays,
        and `stayed` says why. `dry_run` lists what would go back."""
        filt = DeadFilter.parse(where or [], error, since, until)
        if ids is not None and not filt.empty:
            raise ToolFailure("give ids or a filter, not both")
        report = await retry_dead(
            self.tools.conn, stream, ids, where=filt, dry_run=dry_run, actor=self.actor()
        )
        return _bounded(report.as_dict(), ("replayed", "stayed"))

    async def dead_edit_retry(
        self,
        stream: StreamName,
        id: Annotated[str, Field(max_length=64)],
        set: Annotated[
            dict[Name, Annotated[str, Field(max_length=100_000)]] | None, Field(max_length=100)
        ] = None,
        unset: Annotated[list[Name] | None, Field(max_length=100)] = None,
        dry_run: DryRun = False,
    ) -> Detail:
        """Change one dead letter's fields (`set` sets or adds, `unset` removes) and send it
        back; the dead letter is deleted with it. Needs a confirmation unless `dry_run`."""
        report = await edit_and_retry(
            self.tools.conn,
            stream,
            id,
            set or {},
            unset or [],
            dry_run=dry_run,
            actor=self.actor(),
        )
        return _bounded(report.as_dict(), ("replayed", "stayed"))

    async def dead_purge(
        self,
        stream: StreamName,
        ids: Annotated[
            list[Annotated[str, Field(max_length=64)]] | None, Field(max_length=1000)
        ] = None,
        where: Where = None,
        error: Annotated[str | None, Field(max_length=2000)] = None,
        since: When = None,
        until: When = None,
        dry_run: DryRun = False,
    ) -> Detail:
        """Delete dead letters for good: the given ids, else all that match the filter (all of
        them without one). Needs a confirmation unless `dry_run`."""
        filt = DeadFilter.parse(where or [], error, since, until)
        if ids is not None and not filt.empty:
            raise ToolFailure("give ids or a filter, not both")
        report = await purge_dead(
            self.tools.conn, stream, ids, where=filt, dry_run=dry_run, actor=self.actor()
        )
        return _bounded(report.as_dict(), ("deleted", "missing"))

    # -- pending entries

    async def pending_dead_letter(
        self, stream: StreamName, group: Name, ids: Ids, consumer: Name | None = None,
    ) -> Detail:  # fmt: skip
        """Move pending entries to the stream's dead letters and acknowledge them (with
        `consumer`: only while it holds them). Their consumer is fenced. Needs a confirmation."""
        r = await admin_pending.dead_letter_pending(
            self.tools.conn, stream, group, ids, consumer=consumer, actor=self.actor()
        )
        return _bounded(r, ("done", "stayed"))

    async def pending_hand_back(
        self, stream: StreamName, group: Name, ids: Ids, consumer: Name | None = None,
    ) -> Detail:  # fmt: skip
        """Take pending entries from their consumer so the group delivers them again (the next
        live consumer's claim takes them). Their consumer is fenced. Needs a confirmation."""
        r = await admin_pending.hand_back_pending(
            self.tools.conn, stream, group, ids, consumer=consumer, actor=self.actor()
        )
        return _bounded(r, ("done", "stayed"))

    # -- groups

    async def group_rewind(
        self,
        stream: StreamName,
        group: Name,
        to: Annotated[
            str,
            Field(max_length=200, description="An id, ISO 8601 time, duration ago (10m), 0 or $."),
        ],
        dry_run: DryRun = False,
    ) -> Detail:
        """Move a consumer group (XGROUP SETID) to an id or a time; says how many entries it
        will handle again (`again`) or skip (`skipped`). Needs a confirmation unless `dry_run`."""
        r = await rewind_group(
            self.tools.conn, stream, group, to, dry_run=dry_run, actor=self.actor()
        )
        return _bounded(r, ())

    # -- delayed entries

    async def scheduled_list(
        self,
        namespace: Name = "default",
        stream: Name | None = None,
        count: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> Detail:
        """Delayed entries waiting in Redis, soonest first (`bad` explains a member that does
        not decode)."""
        r = await list_scheduled(self.tools.conn, namespace, stream=stream, count=count)
        return _bounded(r, ("entries",))

    async def scheduled_promote(
        self,
        ids: Annotated[
            list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=1000)
        ],
        namespace: Name = "default",
    ) -> Detail:
        """Deliver delayed entries now (appended to their stream, removed from the schedule)."""
        r = await promote_scheduled(self.tools.conn, namespace, ids, actor=self.actor())
        return _bounded(r, ("promoted", "stayed"))

    async def scheduled_cancel(
        self,
        ids: Annotated[
            list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=1000)
        ],
        namespace: Name = "default",
    ) -> Detail:
        """Remove delayed entries before they are due. Needs a confirmation."""
        r = await cancel_scheduled(self.tools.conn, namespace, ids, actor=self.actor())
        return _bounded(r, ("cancelled", "missing"))

    # -- reading

    async def stream_inspect(
        self,
        stream: StreamName,
        start: When = None,
        end: When = None,
        where: Where = None,
        count: Annotated[int, Field(ge=1, le=200)] = 20,
        newest_first: bool = False,
    ) -> Detail:
        """Browse a stream without consuming it: entries between two ids or times, decoded (text,
        JSON, msgpack) and raw, filtered by field. `next` says where to go on (as start, or as
        end when newest_first)."""
        r = await inspect_stream(
            self.tools.conn, stream, start=start, end=end, where=where or [], count=count,
            newest_first=newest_first,
        )  # fmt: skip
        return _bounded(r, ("entries",))

    async def audit_log(self, count: Annotated[int, Field(ge=1, le=500)] = 50) -> Detail:
        """What operators did, newest first: who or which interface (cli, dashboard, mcp), the
        action, its target, how many entries, when."""
        return _bounded({"actions": await read_audit(self.tools.conn, count)}, ("actions",))
