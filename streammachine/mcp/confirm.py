"""Confirmation of the MCP tools that delete or take away data: a client that supports
elicitation asks the user (who must accept `confirm: true`); any other client must pass
`confirm: true`; without it nothing changes. A dry run needs no confirmation. The SDK resolves
the confirmation from the tool's own arguments before the tool's body runs, so the question is
fixed by the arguments (a retried round of the 2026-07-28 protocol asks the same one).

`confirmed_tools` gives each destructive tool's signature (its arguments and `confirm`) wrapped
around the operation in `storage`, `ohlc` or `ops`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, Resolve
from mcp.types.version import is_version_at_least
from pydantic import BaseModel, Field

from .ohlc import AggName, ClearResult, Drop, OhlcTools
from .ops import Detail, DryRun, Ids, Name, OpsTools, StreamName, When, Where
from .results import Confirm, ConfirmedBy, ToolFailure
from .storage import DeleteResult, Key, Namespace, ObjNamespace, ObjPattern, StorageTools

__all__ = ["ConfirmForm", "Confirmation", "confirmed_by", "confirmed_tools"]

ToolFn = Callable[..., Awaitable[Any]]
Id = Annotated[str, Field(max_length=64)]
OptIds = Annotated[list[Id] | None, Field(max_length=1000)]
ScheduleIds = Annotated[list[Id], Field(min_length=1, max_length=1000)]
Fields = Annotated[
    dict[Name, Annotated[str, Field(max_length=100_000)]] | None, Field(max_length=100)
]
Names = Annotated[list[Name] | None, Field(max_length=100)]


# -- confirmation of destructive tools ------------------------------------------------------------


class ConfirmForm(BaseModel):
    """What the user is asked to accept."""

    confirm: bool = Field(description="true to go ahead")


class Confirmation(BaseModel):
    """The decision without elicitation: the `confirm` argument."""

    ok: bool


async def _ask(ctx: Context, confirm: bool, question: str) -> Elicit[ConfirmForm] | Confirmation:
    caps = ctx.client_capabilities
    form = caps.elicitation if caps is not None else None
    if form is not None and (form.form is not None or form.url is None):
        version = ctx.protocol_version or ""
        # Before 2026-07-28 the question is a request back to the client, which needs a channel.
        modern = version and is_version_at_least(version, "2026-07-28")
        if modern or ctx.session.can_send_request:
            return Elicit(question + " This cannot be undone.", ConfirmForm)
    return Confirmation(ok=confirm)


# Resolvers (run before the tool body, from the tool's own arguments): the question shown is
# fixed by the arguments, so a retried round of the 2026-07-28 protocol asks the same one.
async def _ask_storage_delete(
    ctx: Context, confirm: bool, key: str, namespace: str | None
) -> Elicit[ConfirmForm] | Confirmation:
    where = f"namespace {namespace!r}" if namespace else "the default namespace"
    return await _ask(ctx, confirm, f"Delete the storage key {key!r} of {where}?")


async def _ask_storage_clear(
    ctx: Context, confirm: bool, namespace: str | None
) -> Elicit[ConfirmForm] | Confirmation:
    where = f"namespace {namespace!r}" if namespace else "the default namespace"
    return await _ask(ctx, confirm, f"Delete EVERY storage key of {where}?")


async def _ask_obj_delete(
    ctx: Context, confirm: bool, pattern: str, namespace: str
) -> Elicit[ConfirmForm] | Confirmation:
    return await _ask(
        ctx, confirm, f"Delete the stored objects of namespace {namespace!r} matching {pattern!r}?"
    )


async def _ask_ohlc_clear(
    ctx: Context, confirm: bool, name: str, drop: bool
) -> Elicit[ConfirmForm] | Confirmation:
    what = "and remove" if drop else "of"
    return await _ask(ctx, confirm, f"Delete every candle {what} OHLC aggregator {name!r}?")


Confirmed = ElicitationResult[ConfirmForm]


def confirmed_by(outcome: Any, tool: str) -> ConfirmedBy:
    """How a destructive call was confirmed; a `ToolFailure` (nothing changed) when it was not."""
    if isinstance(outcome, AcceptedElicitation):
        data = outcome.data
        if isinstance(data, Confirmation):
            if data.ok:
                return "argument"
            raise ToolFailure(
                f"{tool} deletes data and was not confirmed, so nothing was changed. Ask the user; "
                "if they agree, call it again with confirm: true."
            )
        if isinstance(data, ConfirmForm) and data.confirm:
            return "elicitation"
        raise ToolFailure(f"the user did not confirm {tool}, so nothing was changed")
    action = getattr(outcome, "action", "declined")
    raise ToolFailure(f"the user answered {action!r} to {tool}, so nothing was changed")


def confirmed_tools(store: StorageTools, ohlc: OhlcTools, ops: OpsTools) -> dict[str, ToolFn]:
    """The destructive tools: their arguments (`confirm` is read by the resolvers, not the bodies)
    and the confirmation the SDK resolves before the body runs."""

    async def storage_delete(
        key: Key,
        namespace: Namespace = None,
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_storage_delete)],
    ) -> DeleteResult:
        how = confirmed_by(confirmation, "storage_delete")
        return await store.storage_delete(key, namespace, how)

    async def storage_clear(
        namespace: Namespace = None,
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_storage_clear)],
    ) -> DeleteResult:
        return await store.storage_clear(namespace, confirmed_by(confirmation, "storage_clear"))

    async def obj_delete(
        pattern: ObjPattern,
        namespace: ObjNamespace = "objects",
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_obj_delete)],
    ) -> DeleteResult:
        how = confirmed_by(confirmation, "obj_delete")
        return await store.obj_delete(pattern, namespace, how)

    async def ohlc_clear(
        name: AggName,
        drop: Drop = False,
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_ohlc_clear)],
    ) -> ClearResult:
        ohlc.agg(name)  # an unknown aggregator is reported before the confirmation
        return await ohlc.ohlc_clear(name, drop, confirmed_by(confirmation, "ohlc_clear"))

    found = {f.__name__: f for f in (storage_delete, storage_clear, obj_delete, ohlc_clear)}
    return found | _ops_tools(ops)


# -- errors ---------------------------------------------------------------------------------------


# -- the operator tools ---------------------------------------------------------------------------


async def _ask_dead_edit_retry(
    ctx: Context, confirm: bool, stream: str, id: str, dry_run: bool
) -> Elicit[ConfirmForm] | Confirmation:
    if dry_run:
        return Confirmation(ok=True)
    return await _ask(
        ctx,
        confirm,
        f"Replace dead letter {id} of {stream!r} by the edited message and send it back?",
    )


async def _ask_dead_purge(
    ctx: Context, confirm: bool, stream: str, ids: list[str] | None, dry_run: bool
) -> Elicit[ConfirmForm] | Confirmation:
    if dry_run:
        return Confirmation(ok=True)
    what = f"{len(ids)} dead letters" if ids is not None else "every dead letter that matches"
    return await _ask(ctx, confirm, f"Delete {what} of {stream!r} for good?")


async def _ask_pending_dead_letter(
    ctx: Context, confirm: bool, stream: str, group: str, ids: list[str]
) -> Elicit[ConfirmForm] | Confirmation:
    return await _ask(
        ctx,
        confirm,
        f"Move {len(ids)} pending entries of {stream!r} (group {group!r}) to the dead letters?",
    )


async def _ask_pending_hand_back(
    ctx: Context, confirm: bool, stream: str, group: str, ids: list[str]
) -> Elicit[ConfirmForm] | Confirmation:
    return await _ask(
        ctx,
        confirm,
        f"Take {len(ids)} pending entries of {stream!r} (group {group!r}) from their consumer?",
    )


async def _ask_group_rewind(
    ctx: Context, confirm: bool, stream: str, group: str, to: str, dry_run: bool
) -> Elicit[ConfirmForm] | Confirmation:
    if dry_run:
        return Confirmation(ok=True)
    return await _ask(ctx, confirm, f"Move group {group!r} of {stream!r} to {to!r}?")


async def _ask_scheduled_cancel(
    ctx: Context, confirm: bool, ids: list[str], namespace: str
) -> Elicit[ConfirmForm] | Confirmation:
    return await _ask(
        ctx, confirm, f"Cancel {len(ids)} delayed entries of namespace {namespace!r}?"
    )


def _ops_tools(ops: OpsTools) -> dict[str, ToolFn]:
    """The destructive operator tools, each confirmed before it runs."""

    async def dead_edit_retry(
        stream: StreamName, id: Id, set: Fields = None, unset: Names = None,
        dry_run: DryRun = False, confirm: Confirm = False, *,
        confirmation: Annotated[Confirmed, Resolve(_ask_dead_edit_retry)],
    ) -> Detail:  # fmt: skip
        confirmed_by(confirmation, "dead_edit_retry")
        return await ops.dead_edit_retry(stream, id, set, unset, dry_run)

    async def dead_purge(
        stream: StreamName, ids: OptIds = None, where: Where = None,
        error: Annotated[str | None, Field(max_length=2000)] = None, since: When = None,
        until: When = None, dry_run: DryRun = False, confirm: Confirm = False, *,
        confirmation: Annotated[Confirmed, Resolve(_ask_dead_purge)],
    ) -> Detail:  # fmt: skip
        confirmed_by(confirmation, "dead_purge")
        return await ops.dead_purge(stream, ids, where, error, since, until, dry_run)

    async def pending_dead_letter(
        stream: StreamName, group: Name, ids: Ids, consumer: Name | None = None,
        confirm: Confirm = False, *,
        confirmation: Annotated[Confirmed, Resolve(_ask_pending_dead_letter)],
    ) -> Detail:  # fmt: skip
        confirmed_by(confirmation, "pending_dead_letter")
        return await ops.pending_dead_letter(stream, group, ids, consumer)

    async def pending_hand_back(
        stream: StreamName, group: Name, ids: Ids, consumer: Name | None = None,
        confirm: Confirm = False, *,
        confirmation: Annotated[Confirmed, Resolve(_ask_pending_hand_back)],
    ) -> Detail:  # fmt: skip
        confirmed_by(confirmation, "pending_hand_back")
        return await ops.pending_hand_back(stream, group, ids, consumer)

    async def group_rewind(
        stream: StreamName, group: Name,
        to: Annotated[str, Field(max_length=200, description="An id, ISO 8601 time, duration ago (10m), 0 or $.")],
        dry_run: DryRun = False, confirm: Confirm = False, *,
        confirmation: Annotated[Confirmed, Resolve(_ask_group_rewind)],
    ) -> Detail:  # fmt: skip
        confirmed_by(confirmation, "group_rewind")
        return await ops.group_rewind(stream, group, to, dry_run)

    async def scheduled_cancel(
        ids: ScheduleIds, namespace: Name = "default", confirm: Confirm = False, *,
        confirmation: Annotated[Confirmed, Resolve(_ask_scheduled_cancel)],
    ) -> Detail:  # fmt: skip
        confirmed_by(confirmation, "scheduled_cancel")
        return await ops.scheduled_cancel(ids, namespace)

    tools = (dead_edit_retry, dead_purge, pending_dead_letter, pending_hand_back, group_rewind,
             scheduled_cancel)  # fmt: skip
    return {f.__name__: f for f in tools}
