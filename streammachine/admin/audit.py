"""The audit trail of operator actions: every action of the command layer, from the CLI, the
dashboard or MCP, is appended to the `streammachine:audit` stream (who or which interface, what,
on what, how many entries, when), and read back for the dashboard and `streammachine audit`.

The stream is capped (about `AUDIT_MAXLEN` entries, the oldest dropped first).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import keys
from ..codec import as_text
from .queries import client_of

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..connection import RedisConnection

__all__ = ["AUDIT_MAXLEN", "Actor", "read_audit", "record_action"]

#: About this many actions are kept (XADD MAXLEN ~).
AUDIT_MAXLEN = 10_000
#: An action's detail is cut to this many characters of JSON.
MAX_DETAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, through which interface: `cli`, `dashboard`, `mcp` or `api` (Python code).

    Example:
        >>> Actor("dashboard", "127.0.0.1").interface
        'dashboard'
    """

    interface: str
    who: str

    @classmethod
    def cli(cls) -> Actor:
        """The user running the CLI here: `user@host`."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a container)
            user = f"uid {os.getuid()}"
        return cls("cli", f"{user}@{socket.gethostname()}")


async def record_action(
    client: aioredis.Redis | RedisConnection,
    actor: Actor,
    action: str,
    target: str,
    count: int,
    detail: dict[str, Any] | None = None,
) -> str:
    """Append one action to the audit stream; returns its entry id (its time).

    Example:
        >>> await record_action(conn, Actor.cli(), "pause", "orders/bill", 1)  # doctest: +SKIP
        '1700000000000-0'
    """
    c: Any = client_of(client)
    text = json.dumps(detail or {}, ensure_ascii=False, default=str, sort_keys=True)
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    fields = {
        "interface": actor.interface,
        "who": actor.who[:200],
        "action": action,
        "target": target[:1100],
        "count": str(count),
        "detail": text,
    }
    return as_text(await c.xadd(keys.AUDIT, fields, maxlen=AUDIT_MAXLEN, approximate=True))


async def read_audit(
    client: aioredis.Redis | RedisConnection, count: int = 100
) -> list[dict[str, Any]]:
    """The newest `count` actions, newest first: `{"id", "at_ms", "interface", "who", "action",
    "target", "count", "detail"}` (`detail` parsed back from JSON when it parses).

    Example:
        >>> [a["action"] for a in await read_audit(conn, 2)]  # doctest: +SKIP
        ['resume', 'pause']
    """
    c: Any = client_of(client)
    if as_text(await c.type(keys.AUDIT)) != "stream":
        return []
    out = []
    for entry_id, raw in await c.xrevrange(keys.AUDIT, count=count):
        f = {as_text(k): as_text(v) for k, v in raw.items()}
        try:
            detail: Any = json.loads(f.get("detail") or "{}")
        except ValueError:
            detail = f.get("detail")
        n = f.get("count", "")
        out.append(
            {
                "id": as_text(entry_id),
                "at_ms": int(as_text(entry_id).split("-")[0]),
                "interface": f.get("interface"),
                "who": f.get("who"),
                "action": f.get("action"),
                "target": f.get("target"),
                "count": int(n) if n.isdecimal() else None,
                "detail": detail,
            }
        )
    return out
