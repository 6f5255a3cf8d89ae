"""What the server can do, detected once per connection from `INFO server` (DESIGN.md "Redis
versions"): each newer command is used where present and has a fallback elsewhere.

| feature | since | used for |
| --- | --- | --- |
| `XADD IDMP` | Redis 8.6 | idempotent production: a send retried after a lost reply is written once |
| `XREADGROUP CLAIM` | Redis 8.4 | detected and benchmarked; not used to claim (see docs/versions.md) |
| `XACKDEL`, `ACKED` trims | Redis 8.2 | detected |
| `XNACK` | Redis 8.8 | detected |
| `MAXCOUNT`/`MAXSIZE` | Redis 8.10 | detected |

Valkey reports its own version (`valkey_version`) and has none of these; `memory://` (fakeredis)
has none either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Features", "parse_info"]


@dataclass(frozen=True, slots=True)
class Features:
    """A server's kind (`redis`, `valkey`, `memory`) and version, and what that gives.

    Example:
        >>> Features("redis", (8, 6, 0)).idmp, Features("valkey", (8, 1, 0)).idmp
        (True, False)
    """

    server: str = "redis"
    version: tuple[int, int, int] = (0, 0, 0)

    def _redis(self, *at_least: int) -> bool:
        return self.server == "redis" and self.version >= at_least

    @property
    def idmp(self) -> bool:
        """XADD IDMP/IDMPAUTO and XCFGSET (idempotent production)."""
        return self._redis(8, 6)

    @property
    def claim(self) -> bool:
        """XREADGROUP ... CLAIM min-idle-time."""
        return self._redis(8, 4)

    @property
    def xackdel(self) -> bool:
        """XACKDEL, XDELEX and ACKED trims."""
        return self._redis(8, 2)

    @property
    def xnack(self) -> bool:
        """XNACK."""
        return self._redis(8, 8)

    @property
    def maxcount(self) -> bool:
        """XREADGROUP MAXCOUNT/MAXSIZE."""
        return self._redis(8, 10)

    def describe(self) -> str:
        """`redis 8.10.2`, `valkey 8.1.8`, `memory`."""
        if self.server == "memory":
            return "memory"
        return f"{self.server} {'.'.join(map(str, self.version))}"


def _version(text: Any) -> tuple[int, int, int]:
    parts = [int(p) for p in str(text).split(".")[:3] if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def parse_info(info: dict[str, Any]) -> Features:
    """The Features of a server from its `INFO server` reply (a dict, as redis-py parses it).

    Example:
        >>> parse_info({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.1"})
        Features(server='valkey', version=(8, 1, 1))
    """
    if "valkey_version" in info or str(info.get("server_name", "")).lower() == "valkey":
        return Features("valkey", _version(info.get("valkey_version", info.get("redis_version"))))
    return Features("redis", _version(info.get("redis_version", "0")))
