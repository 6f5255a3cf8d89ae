"""State changes made inside a handler, staged in the batch's commit (DESIGN.md "state and
windows").

While a handler runs, `Storage` writes (`write`, `write_many`, `incr`, `update`, `delete`) are not
sent to Redis: they become operations of the batch's `Outbox` and are applied by the batch's
commit, in the same script as the acks, under the same ownership check — exactly when the entry's
ack is applied, never for an entry the consumer lost. Reads inside the handler see the batch's
own pending changes (read-your-writes), on top of the value first read from Redis.

Optimistic concurrency: when the batch writes a key whose value it read from Redis (`update`,
or `read` then `write`), the commit first checks that the key still holds what was read; if
another consumer changed it meanwhile, that entry and the ones after it are handled again with
fresh state, so no update is lost. Blind writes and integer `incr` need no check (`incr` is added
in Redis, whatever the value is by then).

`incr` inside a handler returns the value as this batch sees it: what Redis held when the batch
first touched the key plus the batch's own increments. Another consumer's increments committed
meanwhile are not in it, but the stored total is exact (HINCRBY in the commit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..consume.outbox import CHECK, STORE_DELETE, STORE_INCR, STORE_KEEP, STORE_SET

if TYPE_CHECKING:
    from ..consume.outbox import Outbox

__all__ = ["MISSING", "Staged"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: A key with no value (deleted, or never written).
MISSING: Any = _Missing()

# A key's changes, flat (no object per change: a counting stage makes two per entry, and fewer
# objects alive means fewer garbage collections): owner entry id, kind, payload, owner, kind, …
# — kind "set" (value, raw, ttl), "keep" (value, raw), "incr" (by), "delete" (None).
Changes = list[Any]


class Staged:
    """One storage namespace as one batch sees it, and its pending changes.

    Args:
        out: the batch's outbox, where the changes go as commit operations.
        hash_key: the namespace's hash (its TTL keys are `<hash_key>:ttl:<key>`).
        decode: turns a raw stored value back into a Python value.
    """

    def __init__(self, out: Outbox, hash_key: str, decode: Callable[[str, bytes], Any]) -> None:
        self.out = out
        self.hash_key = hash_key
        self.decode = decode
        #: What Redis held when the batch first read each key (raw bytes, or None: missing).
        self.base: dict[str, bytes | None] = {}
        self.changes: dict[str, Changes] = {}
        #: key → the entry whose commit checks the base value (its first write after a read)
        self.checked: dict[str, str] = {}

    def known(self, key: str) -> bool:
        """Whether the batch can answer for `key` without asking Redis."""
        return key in self.base or any(
            kind in ("set", "delete") for kind in self.changes.get(key, [])[1::3]
        )

    def remember(self, key: str, raw: bytes | None) -> None:
        """Record what Redis held for `key` (the first read of the batch)."""
        self.base.setdefault(key, raw)

    def value(self, key: str) -> Any:
        """The value of `key` as this batch sees it (MISSING when it has none); `known(key)` first."""
        raw = self.base.get(key)
        current: Any = MISSING if raw is None else self.decode(key, raw)
        changes = self.changes.get(key, [])
        for kind, payload in zip(changes[1::3], changes[2::3], strict=True):
            if kind in ("set", "keep"):
                current = payload[0]
            elif kind == "delete":
                current = MISSING
            else:
                current = (0 if current is MISSING else current) + payload
        return current

    def set(self, key: str, value: Any, raw: bytes, ttl_ms: int | None) -> None:
        """Stage `write(key, value, ttl_s=...)`."""
        self._check(key)
        self._log(key, "set", (value, raw, ttl_ms))
        self.out.op(STORE_SET, self.hash_key, key, raw, "" if ttl_ms is None else ttl_ms)

    def keep(self, key: str, value: Any, raw: bytes) -> None:
        """Stage a write that keeps the key's TTL, if it has one (`update`)."""
        self._check(key)
        self._log(key, "keep", (value, raw))
        self.out.op(STORE_KEEP, self.hash_key, key, raw)

    def incr(self, key: str, by: int) -> None:
        """Stage an integer increment (no check: addition commutes)."""
        out = self.out  # `_log` and `out.op`, inlined: a counting stage calls this per entry
        owner = out.current
        changes = self.changes.get(key)
        if changes is None:
            changes = self.changes[key] = []
        changes += (owner, "incr", by)
        out.state = True
        out.ops.append((owner, STORE_INCR, self.hash_key, (key, by)))

    def delete(self, key: str) -> None:
        """Stage `delete(key)`."""
        self._check(key)
        self._log(key, "delete", None)
        self.out.op(STORE_DELETE, self.hash_key, key)

    def discard(self, owner: str) -> None:
        """Forget the changes of entry `owner` (its handler failed; its operations are gone)."""
        for changes in self.changes.values():
            kept: Changes = []
            for i in range(0, len(changes), 3):
                if changes[i] != owner:
                    kept += changes[i : i + 3]
            changes[:] = kept
        for key in [k for k, o in self.checked.items() if o == owner]:
            del self.checked[key]

    def _log(self, key: str, kind: str, payload: Any) -> None:
        self.changes.setdefault(key, []).extend((self.out.current, kind, payload))

    def _check(self, key: str) -> None:
        # A write of a key the batch read from Redis is conditional on what was read.
        if key in self.base and key not in self.checked:
            self.checked[key] = self.out.current
            raw = self.base[key]
            self.out.op(CHECK, self.hash_key, key, "0" if raw is None else "1", raw or b"")
