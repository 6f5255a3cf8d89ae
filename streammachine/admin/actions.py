"""The operator actions, named once: each one's arguments (a strict msgspec Struct), whether it
needs a confirmation, and the command-layer function that does it. The dashboard's POST endpoint
dispatches here by name; the CLI and the MCP tools call the same functions
(`agents`, `replay`, `pending`, `rewind`, `scheduled`), so the three interfaces do one thing each,
the same way, audited the same way.

Example:
    >>> result = await perform(conn, "pause", b'{"app": "shop", "agent": "bill"}', actor)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ..exceptions import ConfigError
from .agents import pause_agent, resume_agent
from .deadletters import DeadFilter
from .pending import dead_letter_pending, hand_back_pending
from .replay import edit_and_retry, purge_dead, retry_dead
from .rewind import rewind_group
from .scheduled import cancel_scheduled, promote_scheduled

if TYPE_CHECKING:
    from ..connection import RedisConnection
    from .audit import Actor

__all__ = ["ACTIONS", "Action", "perform"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Text = Annotated[str, msgspec.Meta(max_length=10_000)]
Ids = Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=1000)]
Where = Annotated[list[Text], msgspec.Meta(max_length=20)]


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    """Arguments are strict: an unknown name is refused, not ignored."""


class AgentArgs(_Args):
    app: Name
    agent: Name


class DeadSelect(_Args):
    stream: Name
    ids: Ids | None = None
    where: Where = []
    error: Text | None = None
    since: Text | None = None
    until: Text | None = None
    dry_run: bool = False
    confirm: bool = False

    def filter(self) -> DeadFilter:
        return DeadFilter.parse(self.where, self.error, self.since, self.until)


class DeadEdit(_Args):
    stream: Name
    id: Annotated[str, msgspec.Meta(max_length=64)]
    set: dict[Name, Text] = {}
    unset: list[Name] = []
    dry_run: bool = False
    confirm: bool = False


class PendingArgs(_Args):
    stream: Name
    group: Name
    ids: Ids
    consumer: Name | None = None
    confirm: bool = False


class RewindArgs(_Args):
    stream: Name
    group: Name
    to: Text
    dry_run: bool = False
    confirm: bool = False


class ScheduledArgs(_Args):
    ids: Ids
    namespace: Name = "default"
    confirm: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    """One operator action: its arguments, whether it needs `confirm: true` (unless it is a dry
    run), and what it does."""

    args: type[_Args]
    confirm: bool
    run: Callable[[RedisConnection, Any, Actor], Awaitable[Any]]
    title: str


async def _pause(conn: RedisConnection, a: AgentArgs, actor: Actor) -> Any:
    return await pause_agent(conn, a.app, a.agent, actor=actor)


async def _resume(conn: RedisConnection, a: AgentArgs, actor: Actor) -> Any:
    return await resume_agent(conn, a.app, a.agent, actor=actor)


def _selection(a: DeadSelect) -> tuple[list[str] | None, DeadFilter]:
    where = a.filter()
    if a.ids is not None and not where.empty:
        raise ConfigError("give ids or a filter, not both")
    return a.ids, where


async def _retry(conn: RedisConnection, a: DeadSelect, actor: Actor) -> Any:
    ids, where = _selection(a)
    report = await retry_dead(conn, a.stream, ids, where=where, dry_run=a.dry_run, actor=actor)
    return report.as_dict()


async def _edit(conn: RedisConnection, a: DeadEdit, actor: Actor) -> Any:
    report = await edit_and_retry(
        conn, a.stream, a.id, a.set, a.unset, dry_run=a.dry_run, actor=actor
    )
    return report.as_dict()


async def _purge(conn: RedisConnection, a: DeadSelect, actor: Actor) -> Any:
    ids, where = _selection(a)
    report = await purge_dead(conn, a.stream, ids, where=where, dry_run=a.dry_run, actor=actor)
    return report.as_dict()


async def _pending_dead(conn: RedisConnection, a: PendingArgs, actor: Actor) -> Any:
    return await dead_letter_pending(
        conn, a.stream, a.group, a.ids, consumer=a.consumer, actor=actor
    )


async def _hand_back(conn: RedisConnection, a: PendingArgs, actor: Actor) -> Any:
    return await hand_back_pending(conn, a.stream, a.group, a.ids, consumer=a.consumer, actor=actor)


async def _rewind(conn: RedisConnection, a: RewindArgs, actor: Actor) -> Any:
    return await rewind_group(conn, a.stream, a.group, a.to, dry_run=a.dry_run, actor=actor)


async def _promote(conn: RedisConnection, a: ScheduledArgs, actor: Actor) -> Any:
    return await promote_scheduled(conn, a.namespace, a.ids, actor=actor)


async def _cancel(conn: RedisConnection, a: ScheduledArgs, actor: Actor) -> Any:
    return await cancel_scheduled(conn, a.namespace, a.ids, actor=actor)


ACTIONS: dict[str, Action] = {
    "pause": Action(AgentArgs, False, _pause, "Pause an agent everywhere"),
    "resume": Action(AgentArgs, False, _resume, "Resume an agent everywhere"),
    "dead.retry": Action(DeadSelect, False, _retry, "Send dead letters back"),
    "dead.edit_retry": Action(DeadEdit, True, _edit, "Edit a dead letter and send it back"),
    "dead.purge": Action(DeadSelect, True, _purge, "Delete dead letters"),
    "pending.dead_letter": Action(PendingArgs, True, _pending_dead, "Dead-letter pending entries"),
    "pending.hand_back": Action(PendingArgs, True, _hand_back, "Hand pending entries back"),
    "rewind": Action(RewindArgs, True, _rewind, "Rewind a consumer group"),
    "scheduled.promote": Action(ScheduledArgs, False, _promote, "Deliver delayed entries now"),
    "scheduled.cancel": Action(ScheduledArgs, True, _cancel, "Cancel delayed entries"),
}


async def perform(
    conn: RedisConnection, name: str, body: bytes | dict[str, Any], actor: Actor
) -> Any:
    """Run action `name` with `body` (JSON bytes or a dict) as `actor`.

    Raises:
        ConfigError: no such action, arguments that do not fit (the message names the field),
            or a destructive action without `confirm: true` (a dry run needs none).
    """
    action = ACTIONS.get(name)
    if action is None:
        raise ConfigError(f"no action {name!r}; the actions are {', '.join(ACTIONS)}")
    try:
        if isinstance(body, bytes | bytearray):
            args = msgspec.json.decode(body or b"{}", type=action.args)
        else:
            args = msgspec.convert(body, action.args)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if (
        action.confirm
        and not getattr(args, "confirm", False)
        and not getattr(args, "dry_run", False)
    ):
        raise ConfigError(f"{name} changes data for good: confirm it (confirm: true)")
    return await action.run(conn, args, actor)
