"""Who owns the partitions of a stream (or an exclusive agent's stream), as Redis says: member
ids and lease values read back and checked, for the owners themselves (`partitions`), readiness
checks (`/readyz`) and the dashboard.

Every value read back from Redis is untrusted (another tenant, an old version or a hand-written
command may have put anything there): a member that is not a process id, or a lease value that
is not one of ours, counts as no owner and is reported in `Ownership.problems`, never raised.

Example:
    >>> lease_holder("web-1-42-a1b2c3/18c0a1b2c3d4e5f6-0123456789abcdef")
    'web-1-42-a1b2c3'
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from .. import keys
from ..codec import as_text

__all__ = [
    "LEASE_RE",
    "LEASE_TTL_S",
    "MEMBER_RE",
    "Ownership",
    "key_names",
    "lease_holder",
    "member_id",
    "ownership",
    "partition_owners",
    "valid_member",
]

#: A partition's lease lives this long without renewal: a dead owner's partitions move then.
LEASE_TTL_S = 5.0

_MEMBER = r"[!-.0-~]{1,200}-[0-9]{1,10}-[0-9a-f]{6}"
MEMBER_RE = re.compile(_MEMBER)
LEASE_RE = re.compile(rf"({_MEMBER})/[0-9a-f]{{1,20}}-[0-9a-f]{{16}}")


def member_id() -> str:
    """This process among the members: `<host>-<pid>-<random>`, readable, unique even when a
    pid is reused, and always a valid member (odd characters of the host name become `_`).

    Example:
        >>> MEMBER_RE.fullmatch(member_id()) is not None
        True
    """
    host = re.sub(r"[^!-.0-~]", "_", socket.gethostname())[:200] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def valid_member(raw: Any) -> str | None:
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None
    return text if isinstance(text, str) and MEMBER_RE.fullmatch(text) else None


def lease_holder(raw: Any) -> str | None:
    """The member holding a lease, from the lease's value; None if it is no lease of ours."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None
    found = LEASE_RE.fullmatch(text) if isinstance(text, str) else None
    return found.group(1) if found else None


def key_names(stream: str, group: str, partitions: int | None) -> tuple[str, list[str]]:
    """The members key and the lease keys of `stream` in `group` (exclusive: `partitions` None)."""
    if partitions is None:
        return keys.exclusive_members(stream, group), [keys.exclusive_lease(stream, group)]
    leases = [keys.partition_lease(stream, group, i) for i in range(partitions)]
    return keys.partition_members(stream, group), leases


# Read only: the members that have not expired (Redis' clock), each lease's value and each key's
# type (a key of another type is reported, not read).
_READ_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = {}
local members_kind = redis.call('TYPE', KEYS[1])['ok']
if members_kind == 'zset' then
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
end
local values, kinds = {}, {}
for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  kinds[#kinds + 1] = kind
  values[#values + 1] = kind == 'string' and redis.call('GET', KEYS[i])
end
return {members, members_kind, values, kinds}
"""


@dataclass(frozen=True)
class Ownership:
    """Who owns what of `stream` in `group`, as Redis says now.

    `owners` maps each partition (0 for an exclusive agent) to its live owner's id, or None when
    no live process holds it; `problems` lists what was read back and ignored.
    """

    stream: str
    group: str
    owners: dict[int, str | None]
    members: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def unowned(self) -> list[int]:
        """The partitions no live process owns (nobody consumes them)."""
        return [i for i, owner in self.owners.items() if owner is None]


async def ownership(
    client: Any, stream: str, group: str, partitions: int | None = None
) -> Ownership:
    """Read who owns each partition of `stream` in `group` (`partitions` None: the one owner of an
    exclusive agent). An owner counts only while it is a live member; garbage in the keys is
    reported in `problems`, never raised. For readiness checks (`/readyz`) and the dashboard.

    Example:
        >>> (await ownership(conn.client, "ticks", "prices", 4)).unowned  # doctest: +SKIP
        [3]
    """
    members_key, lease_keys = key_names(stream, group, partitions)
    # One script: Redis' clock, and every key in the stream's slot (a cluster routes it there).
    raw_members, members_kind, values, kinds = await client.eval(
        _READ_SCRIPT, 1 + len(lease_keys), members_key, *lease_keys
    )
    problems: list[str] = []
    live: set[str] = set()
    if as_text(members_kind) not in ("zset", "none"):
        problems.append(f"{members_key}: holds a {as_text(members_kind)}, not a sorted set")
    for raw in raw_members:
        member = valid_member(raw)
        if member is None:
            problems.append(f"{members_key}: not a process id: {as_text(raw)[:80]!r}")
        else:
            live.add(member)
    owners: dict[int, str | None] = {}
    for i, (key, raw, kind) in enumerate(zip(lease_keys, values, kinds, strict=True)):
        holder = None if raw is None else lease_holder(raw)
        if as_text(kind) not in ("string", "none"):
            problems.append(f"{key}: holds a {as_text(kind)}, not a lease")
        elif raw is not None and holder is None:
            problems.append(f"{key}: not a lease: {as_text(raw)[:80]!r}")
        owners[i] = holder if holder in live else None
    return Ownership(stream, group, owners, sorted(live), problems)


async def partition_owners(
    client: Any, stream: str, group: str, partitions: int
) -> dict[int, str | None]:
    """Who owns each partition now: index → live owner id (`<host>-<pid>-<random>`), None if
    no live process does.

    Example:
        >>> await partition_owners(conn.client, "ticks", "prices", 4)  # doctest: +SKIP
        {0: 'web-1-42-a1b2c3', 1: 'web-2-7-d4e5f6', 2: 'web-1-42-a1b2c3', 3: None}
    """
    return (await ownership(client, stream, group, partitions)).owners
