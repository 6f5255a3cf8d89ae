"""Which processes are alive: the instance heartbeat keys, read by consumers' housekeeping.

Every running App writes `streammachine:instances:<host>-<pid>-<random>` with a TTL (see
`streammachine.heartbeat`). Consumer names start with `<host>-<pid>-`, so a
consumer belongs to a live process exactly when some live instance id shares that prefix. This is
the only liveness rule (DESIGN.md "consumer names and liveness"): XINFO's idle time is not one, as
a blocked read on Redis ≤ 7.0 does not refresh it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .codec import as_text

__all__ = ["INSTANCE_PREFIX", "is_live", "live_prefixes", "process_prefix"]

INSTANCE_PREFIX = "streammachine:instances:"


def process_prefix() -> str:
    """`<host>-<pid>-`: how this process's consumer names and instance ids begin.

    Example:
        >>> process_prefix().endswith(f"-{os.getpid()}-")
        True
    """
    return f"{socket.gethostname()}-{os.getpid()}-"


async def live_prefixes(client: Any) -> set[str]:
    """The `<host>-<pid>-` prefixes of every process whose heartbeat has not expired."""
    out = {process_prefix()}
    async for key in client.scan_iter(match=INSTANCE_PREFIX + "*", count=1000):
        instance = as_text(key)[len(INSTANCE_PREFIX) :]
        head, sep, _random = instance.rpartition("-")
        if sep:
            out.add(head + "-")
    return out


def is_live(consumer: str, prefixes: set[str]) -> bool:
    """Whether `consumer` (a consumer name) belongs to one of the live processes.

    Example:
        >>> is_live("web-1-42-bill-0", {"web-1-42-"}), is_live("web-1-7-bill-0", {"web-1-42-"})
        (True, False)
    """
    return any(consumer.startswith(p) for p in prefixes)
