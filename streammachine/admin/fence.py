"""Fencing, the admin side: every action that takes an entry away from a consumer (dead-lettering
or handing back another consumer's pending entry) marks that consumer fenced in the same script.

The delivery core's exactly-once commit relies on it (DESIGN.md "commit ownership"): a consumer
whose entries were taken away sees its counter in `keys.fence(stream, group)` change and falls
back to checking each entry it still owns. The counter lives a week past the last change.

`FENCE_LUA` defines a Lua function `fence(key, consumer)`; a script that takes entries starts
with it (`FENCE_LUA + body`), so the rule is written once for every admin action.
"""

from __future__ import annotations

__all__ = ["FENCE_LUA", "FENCE_TTL_MS", "fenced_script"]

#: How long a fence counter is kept after its last change.
FENCE_TTL_MS = 7 * 24 * 3600 * 1000

FENCE_LUA = f"""
local function fence(key, consumer)
  redis.call('HINCRBY', key, consumer, 1)
  redis.call('PEXPIRE', key, {FENCE_TTL_MS})
end
"""


def fenced_script(body: str) -> str:
    """A Lua script that may call `fence(key, consumer)`.

    Example:
        >>> "HINCRBY" in fenced_script("fence(KEYS[1], ARGV[1])")
        True
    """
    return FENCE_LUA + body
