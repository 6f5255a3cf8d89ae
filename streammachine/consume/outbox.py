"""The outbox of a batch: what its handlers sent and changed, in order, until the batch commits
(`commit.Committer` writes it with the acks). `send` inside a handler, delayed sends, `Storage`
writes (`state.staged`), tables and windows all append operations here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHECK",
    "HDEL",
    "HSET",
    "STORE_DELETE",
    "STORE_INCR",
    "STORE_KEEP",
    "STORE_SET",
    "XADD",
    "ZADD",
    "Outbox",
    "current_outbox",
]

#: What `code` an Outbox operation has: see COMMIT_SCRIPT.
XADD, ZADD, HSET, HDEL, CHECK = "x", "z", "h", "H", "c"
STORE_SET, STORE_KEEP, STORE_INCR, STORE_DELETE = "s", "k", "i", "d"


@dataclass(slots=True)
class Outbox:
    """What the handlers of one batch sent and changed, in order, until the batch commits.

    Each operation belongs to the entry being handled when it was made (`current`), so the
    outputs of an entry that failed, or that another consumer took, are not written. A batch
    handler's operations belong to the whole batch (`whole`).

    Example:
        >>> out = Outbox(current="1-0")
        >>> out.xadd("invoices", 0, ["total", "3.5"])
        >>> out.targets()
        {'invoices'}
    """

    current: str = ""
    #: (owner entry id, code, key, arguments after the key: a list or a tuple)
    ops: list[tuple[str, str, str, Sequence[Any]]] = field(default_factory=list)
    closed: bool = False
    whole: bool = False
    #: Some operation is not a stream or sorted-set write (`op`): the commit may merge them.
    state: bool = False
    #: The approximate length cap of streams written by the agent (`maxlen=`), if any.
    maxlen: int | None = None
    #: The storage namespace of delayed sends made in the handler.
    namespace: str = "default"
    #: Per-batch state (e.g. `state.staged.Staged` of a storage namespace), by name.
    views: dict[str, Any] = field(default_factory=dict)
    #: The Redis URL the commit goes to, and the stream it reads: state elsewhere (another
    #: server, or another cluster slot) is written at once instead.
    url: str = ""
    stream: str = ""
    redis: Any = None

    def same_slot(self, key: str) -> bool:
        """Whether `key` can be written by this batch's commit (same cluster slot as the
        stream; always on one node)."""
        return self.redis is None or bool(self.redis.same_slot([self.stream, key]))

    def xadd(self, key: str, maxlen: int | None, fields: list[Any]) -> None:
        """An entry for stream `key`: `fields` flat [k1, v1, ...]; `maxlen` > 0 trims
        approximately, < 0 exactly to -maxlen."""
        self.ops.append((self.current, XADD, key, [maxlen or self.maxlen or 0, *fields]))

    def zadd(self, key: str, score: int, member: bytes) -> None:
        """A member of sorted set `key` (a delayed send)."""
        self.ops.append((self.current, ZADD, key, [score, member]))

    def op(self, code: str, key: str, *args: Any) -> None:
        """Any other operation (`HSET`, `HDEL`, `CHECK`, the storage ones): see COMMIT_SCRIPT."""
        self.state = True
        self.ops.append((self.current, code, key, list(args)))

    def discard(self, mark: int) -> None:
        """Forget the operations made since `mark` (`len(ops)` then): that entry failed."""
        del self.ops[mark:]
        for view in self.views.values():
            view.discard(self.current)

    def targets(self) -> set[str]:
        """The Redis keys the operations write to."""
        return {key for _, _, key, _ in self.ops}


#: The outbox of the batch whose handler runs in this task (`App.send` and state changes
#: buffer into it).
current_outbox: ContextVar[Outbox | None] = ContextVar("streammachine_outbox", default=None)
