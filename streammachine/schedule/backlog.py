"""What the delayed entries of a namespace look like from outside (for the dashboard, `/metrics`
and `/readyz`): how many wait, the soonest due time, how many are due but not moved (no app of
the namespace runs, or its mover is stuck) and how many the mover set aside as undeliverable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import keys
from ..codec import as_text

__all__ = ["BACKLOG_S", "backlog_problems", "read_scheduled", "scheduled_summary"]

#: An entry still waiting this long after its due time counts as backlogged (a running app moves
#: it within about a second).
BACKLOG_S = 30.0


async def scheduled_summary(client: Any, key: str) -> dict[str, Any]:
    """Count, soonest due time, backlog and failures of one scheduled key.

    Returns:
        `{"namespace", "count", "oldest_due_ms", "backlog", "failed"}`: `backlog` counts the
        entries due more than `BACKLOG_S` ago (Redis' clock) and still waiting, `failed` the
        entries in `<key>:failed` (set aside: they could not be appended).
    """
    async with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zcard(key)
        pipe.zrange(key, 0, 0, withscores=True)
        pipe.zcard(f"{key}:failed")
        now, count, first, failed = await pipe.execute(raise_on_error=False)
    namespace = key[key.index("{") + 1 : key.rindex("}")] if "{" in key else key
    backlog = 0
    if first and not isinstance(now, Exception):
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        if float(first[0][1]) < now_ms - BACKLOG_S * 1000:
            backlog = int(await client.zcount(key, "-inf", now_ms - int(BACKLOG_S * 1000)))
    return {
        "namespace": namespace,
        "count": int(count),
        "oldest_due_ms": int(first[0][1]) if first else None,
        "backlog": backlog,
        "failed": 0 if isinstance(failed, Exception) else int(failed),
    }


async def read_scheduled(client: Any) -> dict[str, Any]:
    """Every namespace's delayed entries (`scheduled_summary` each, at most 1000 namespaces).

    Returns:
        `{"count", "oldest_due_ms", "namespaces": [summary, ...]}`.
    """
    names = sorted(
        {
            as_text(k)
            async for k in client.scan_iter(match=keys.SCHEDULED_MATCH, _type="zset")
            if as_text(k).endswith("}") and len(k) <= 1100
        }
    )[:1000]
    namespaces = [await scheduled_summary(client, k) for k in names]
    dues = [n["oldest_due_ms"] for n in namespaces if n["oldest_due_ms"] is not None]
    return {
        "count": sum(n["count"] for n in namespaces),
        "oldest_due_ms": min(dues) if dues else None,
        "namespaces": namespaces,
    }


def backlog_problems(
    scheduled: dict[str, Any] | None, problems: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """From a dashboard status' `scheduled` part: the backlogged namespaces, a reason each (not
    ready), and `problems` plus the namespaces with entries set aside as undeliverable (worth a
    look, not unready)."""
    scheduled = scheduled or {}
    stuck, failed = [], list(problems)
    for ns in scheduled.get("namespaces") or []:
        if ns.get("backlog"):
            stuck.append(
                f"{ns['namespace']!r}: {ns['backlog']} delayed entries overdue by more than "
                f"{BACKLOG_S:g} s (is an app of that storage namespace running?)"
            )
        if ns.get("failed"):
            failed.append(
                f"{ns['namespace']!r}: {ns['failed']} delayed entries could not be appended "
                f"(kept in {keys.scheduled(str(ns['namespace']))}:failed)"
            )
    return stuck, failed
