"""Rewinding (or fast-forwarding) a consumer group: `XGROUP SETID` to an id or a point in time,
after counting how many entries the group will handle again (or skip).

The group's pending entries are not touched: they stay with their consumers. `to` is an entry id
(the group goes on after it), a time (`2030-01-01T09:00:00Z`) or a duration ago (`10m`): the group
handles again every entry from then on; `0` (or `start`) means the whole stream, `$` (or `end`)
the end of it.

Example:
    >>> plan = await rewind_group(conn, "orders", "billing", "1h", dry_run=True)  # doctest: +SKIP
    >>> plan["again"]  # doctest: +SKIP
    1204
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codec import as_text, parse_entry_id
from ..exceptions import ConfigError
from .audit import Actor, record_action
from .ids import id_before, is_entry_id, parse_time_ms
from .queries import check_stream

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = ["COUNT_LIMIT", "resolve_target", "rewind_group"]

#: Entries counted at most; beyond, the plan says "more than".
COUNT_LIMIT = 100_000
# Counts the entries in (ARGV[1], ARGV[2]], capped, without sending them back.
_COUNT_LUA = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', ARGV[3])"


def resolve_target(to: str, last_id: str) -> str:
    """The id a group is set to for `to` (see the module docstring); `last_id` is the stream's.

    Example:
        >>> resolve_target("start", "9-0"), resolve_target("5-0", "9-0"), resolve_target("$", "9-0")
        ('0-0', '5-0', '9-0')
    """
    text = to.strip()
    if text in ("0", "start", "beginning"):
        return "0-0"
    if text in ("$", "end"):
        return last_id
    if is_entry_id(text):
        return text if "-" in text else f"{text}-0"
    try:
        return id_before(parse_time_ms(text))
    except ConfigError:
        raise ConfigError(
            f"--to {text[:60]!r} is not an entry id, a time or a duration: use e.g. "
            "1700000000000-0, 2030-01-01T09:00:00Z, 10m, 0 (the whole stream) or $ (the end)"
        ) from None


async def rewind_group(
    conn: RedisConnection,
    stream: str,
    group: str,
    to: str,
    *,
    dry_run: bool = False,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Set `group`'s last-delivered id on `stream` to `to`; with `dry_run` only say what it would do.

    Returns:
        `{"stream", "group", "from" (its last-delivered id), "to" (the new one), "again"
        (entries it will handle again), "skipped" (entries it will never get), "capped" (the
        count stopped at `COUNT_LIMIT`), "done"}`.

    Raises:
        ConfigError: no such stream or group, or a bad `to`.
    """
    c = conn.client
    if not await check_stream(conn, stream):
        raise ConfigError(f"stream {stream!r} does not exist")
    groups = {as_text(g["name"]): g for g in await c.xinfo_groups(stream)}
    if group not in groups:
        raise ConfigError(f"stream {stream!r} has no group {group!r}: see `streammachine streams`")
    info = await c.xinfo_stream(stream)
    last_id = as_text(info.get("last-generated-id") or "0-0")
    current = as_text(groups[group].get("last-delivered-id") or "0-0")
    target = resolve_target(to, last_id)
    count = conn.script(_COUNT_LUA)
    again = skipped = 0
    if parse_entry_id(target) < parse_entry_id(current):
        again = int(await count(keys=[stream], args=[target, current, COUNT_LIMIT]))
    elif parse_entry_id(target) > parse_entry_id(current):
        skipped = int(await count(keys=[stream], args=[current, target, COUNT_LIMIT]))
    plan: dict[str, Any] = {"stream": stream, "group": group, "from": current, "to": target}
    plan |= {"again": again, "skipped": skipped, "capped": max(again, skipped) >= COUNT_LIMIT}
    plan["done"] = False
    if dry_run:
        return plan
    await c.xgroup_setid(stream, group, target)
    plan["done"] = True
    detail = {"from": current, "to": target, "again": again, "skipped": skipped}
    await record_action(
        conn, actor or Actor("api", "python"), "rewind", f"{stream}/{group}", again, detail
    )
    return plan
