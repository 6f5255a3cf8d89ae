"""The committer: what a batch's handlers sent and changed, written by one script together with
the batch's acks, only for the entries the consumer still owns (DESIGN.md "handler output",
"commit ownership").

Inside a handler, `send`, delayed sends and state changes go into the batch's `Outbox`
(`current_outbox`); the consumer's `Committer` turns it into one EVALSHA of `COMMIT_SCRIPT`
(`commitlua`, with the format of its arguments), judges the reply, and re-sends after a lost
reply. Ownership is checked in O(1) by fencing: every path
that takes entries away from a consumer (claims, partition takeover, admin actions) increments
that consumer's counter in the fence hash `keys.fence(stream, group)` in the same script. A batch
carries the counter the consumer knew when it got the entries (its tag); if the counter still
equals the tag nobody took anything since, and the script writes without looking at the PEL. Else
— and always for a commit re-sent after a lost reply, which may have been applied — it checks each
entry against the consumer's PEL: outputs of entries taken away are dropped (their new owner
writes them), and a re-sent commit finds its entries acked and writes nothing twice.

One script serves Redis, Valkey and `memory://` (fakeredis): the batch travels as flat arguments,
with no msgpack and no per-entry Lua tables on the fast path. A batch's state changes are merged
per key (increments summed, writes collapsed to the last) when none needs a per-entry check:
written only if every entry is still owned, else not at all and the owned entries are handled
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from .. import keys as key_names
from .commitlua import COMMIT_SCRIPT, FENCE_LUA, FENCE_TTL_MS
from .outbox import CHECK, XADD, Outbox

if TYPE_CHECKING:
    from ..connection import RedisConnection, Script
    from ..message import Message

__all__ = [
    "COMMIT_SCRIPT",
    "FENCE_LUA",
    "FENCE_TTL_MS",
    "Committer",
    "Pending",
    "Verdict",
]


@dataclass(slots=True)
class Pending:
    """A batch's commit not confirmed yet: its command, the entries it acks (and their
    messages, handled again in place after a failed check), and how it was checked."""

    cmds: list[list[Any]]
    ids: list[str]
    messages: list[Message]
    tag: int | None
    out: Outbox | None = None
    margin: int = 0
    #: Check each entry against the PEL (a re-sent commit may already have been applied).
    check: bool = False
    #: Its operations were merged across entries (`_merge`): written all or none.
    merged: bool = False


@dataclass(slots=True)
class Verdict:
    """What a commit's reply means for the consumer."""

    #: The entries to retry later through Redis (a whole batch no longer all owned; a failure).
    retry: list[str] = field(default_factory=list)
    retry_after_s: float = 0.0
    #: The messages to handle again now (a check failed: another writer changed that state).
    again: list[Message] = field(default_factory=list)
    #: The scripts must be loaded again on the consumer's connection, and the commit re-sent.
    reload: bool = False
    dropped: int = 0
    error: str | None = None


class Committer:
    """One consumer's commits: builds them from an Outbox, judges their replies, keeps the fence
    counter it knows (the tag of the next batches).

    Example:
        >>> committer = Committer(redis, "orders", "billing", "web-1-42-bill-0")  # doctest: +SKIP
        >>> pending = committer.build(["1-0"], [msg], outbox, margin=10, tag=committer.epoch)
    """

    def __init__(self, redis: RedisConnection, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.fence = key_names.fence(stream, group)
        self.script: Script = redis.script(COMMIT_SCRIPT)
        #: The fence counter as last read from Redis (None until then: the next batch is
        #: checked entry by entry, and its reply tells the counter).
        self.epoch: str | None = None

    def scripts(self) -> list[Script]:
        """The scripts the consumer's connection must have loaded."""
        return [self.script]

    def outbox(self, maxlen: int | None, namespace: str) -> Outbox:
        """A new, empty outbox for a batch."""
        redis = self.redis
        return Outbox(
            maxlen=maxlen, namespace=namespace, url=redis.url, stream=self.stream, redis=redis
        )

    def build(
        self,
        done: list[str],
        messages: list[Message],
        out: Outbox | None,
        *,
        margin: int,
        tag: int | None,
    ) -> Pending | None:
        """The commit of `done` (acks, and the operations of `out` that belong to them).

        Without operations it is a plain XACK: acking an entry another consumer took is
        harmless (that one's commit finds it acked). `margin`: how many other entries this
        consumer may own besides `done` (retries waiting, a batch in hand)."""
        if not done:
            return None
        if out is None or not out.ops:
            return Pending([["XACK", self.stream, self.group, *done]], done, messages, tag)
        cmds, merged = self._command(done, out, margin, tag, False)
        return Pending(cmds, done, messages, tag, out, margin, merged=merged)

    def again(self, pending: Pending) -> Pending:
        """`pending` to send again after its reply was lost: it may have been applied, so this
        time each entry is checked against the PEL (a plain XACK is idempotent as it is)."""
        p, out = pending, pending.out
        if out is None:
            return p
        cmds, _ = self._command(p.ids, out, p.margin, p.tag, True)
        return Pending(cmds, p.ids, p.messages, p.tag, out, p.margin, True)

    def _command(
        self,
        done: list[str],
        out: Outbox,
        margin: int,
        tag: int | None,
        check: bool,
        fold: bool = True,
    ) -> tuple[list[list[Any]], bool]:
        """The commit's script call, and whether its operations were merged.

        Merging (not for a re-sent commit, which is checked entry by entry): the operations on
        one (key, field) fold into fewer that do the same — increments summed into one, a write
        or delete making the writes before it no-ops ('-') — and every operation gets owner 0,
        so the script writes them only when every entry is still owned and every check holds
        (else nothing, and the entries are handled again). Exact because only successive
        operations on the same (key, field) fold and operations on other fields commute. A batch
        with checks (`update`) is not merged unless it is a whole batch: checked entry by entry,
        one conflict retries only the entries from it on."""
        whole = out.whole
        owner = {entry_id: i for i, entry_id in enumerate(done, 1)}
        key_index: dict[str, int] = {self.stream: 1, self.fence: 2}
        kinds: list[str] = []  # of each key from the third: x stream, z sorted set, h hash
        args: list[Any] = [
            self.group,
            self.consumer,
            "" if tag is None else str(tag),
            "",  # flags: w whole, m merged, r re-sent (check the PEL), c state checks
            "",  # kinds
            margin,
            len(done),
            *done,
        ]
        extend = args.extend
        checks = merged = False
        fold = fold and out.state and not check
        last: dict[tuple[str, Any], int] = {}  # (key, field) → where its last operation starts
        starts: list[int] = []  # where each operation starts (its owner)
        # The XADDs, one 'X' per run of a stream's entries of one maxlen and field count: its
        # (key index, maxlen, field count, [owner, fields, owner, fields, …]); `runs` the last
        # of each stream (a change of shape starts a new run, after it: order kept per stream).
        xadds: list[tuple[int, Any, int, list[Any]]] = []
        runs: dict[int, tuple[int, Any, int, list[Any]]] = {}
        for entry_id, code, key, rest in out.ops:
            found = 0 if whole else owner.get(entry_id)
            if found is None:
                continue  # an entry that failed or was skipped: nothing of it is written
            o: int = found
            k = key_index.get(key)
            if k is None:
                k = key_index[key] = len(key_index) + 1
                kinds.append(code if code in "xz" else "h")
            if code == XADD:
                run = runs.get(k)
                if run is None or run[1] != rest[0] or run[2] != len(rest) - 1:
                    run = runs[k] = (k, rest[0], len(rest) - 1, [])
                    xadds.append(run)
                items = run[3]
                items += rest
                items[len(items) - len(rest)] = o  # the owner in the place of maxlen
                continue
            if code in "ci":
                checks = True
            if fold:
                if code in _FOLDED:
                    field_key = (key, rest[0])
                    j = last.get(field_key)
                    if j is not None:
                        before = args[j + 1]
                        if code == "i":
                            if before == "i":
                                a, b = args[j + 5], rest[1]
                                ints = type(a) is int and type(b) is int
                                if ints and -_INT64 <= a + b < _INT64:
                                    args[j + 5] = a + b
                                    merged = True
                                    continue
                        elif (
                            (code in "sd" and before in "skd")
                            or (code == "k" and before == "k")
                            or (code in "hH" and before in "hH")
                        ):
                            args[j + 1] = "-"  # overwritten by this one: does nothing
                            merged = True
                    last[field_key] = len(args)
                elif code == CHECK and not whole:
                    if merged:
                        return self._command(done, out, margin, tag, check, fold=False)
                    fold = False
            starts.append(len(args))
            extend((o, code, len(rest) + 1, k, *rest))
        for k, maxlen, width, items in xadds:
            count = len(items) // (width + 1)
            if merged and not whole:
                items[:: width + 1] = [0] * count
            extend((0, "X", len(items) + 4, k, maxlen, width, count))
            extend(items)
        if merged and not whole:
            for at in starts:
                args[at] = 0
        args[3] = (
            ("w" if whole else "")
            + ("m" if merged and not whole else "")
            + ("r" if check else "")
            + ("c" if checks else "")
        )
        args[4] = "".join(kinds)
        return [self.script.command(list(key_index), args)], merged

    def judge(self, pending: Pending, reply: Any) -> Verdict:
        """What the reply of `pending`'s script (or XACK) means; updates the fence counter."""
        if isinstance(reply, int):
            return Verdict()
        if isinstance(reply, Exception):
            text = str(reply)
            if isinstance(reply, NoScriptError):
                return Verdict(reload=True)
            # E.g. OOM: nothing was written and the entries stay ours: retry them.
            return Verdict(retry=list(pending.ids), retry_after_s=1.0, error=text)
        _acked, epoch, again, kind, dropped = reply
        self.epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        ids = [e.decode() if isinstance(e, bytes) else str(e) for e in again]
        if pending.merged and pending.out is not None and int(dropped):
            # Nothing was written, and the script counted merged operations: count the lost
            # entries' own (a whole batch's are all lost).
            out = pending.out
            lost = set() if out.whole else set(pending.ids).difference(ids)
            dropped = sum(1 for e, c, _, _ in out.ops if c != CHECK and (out.whole or e in lost))
        if int(kind) == 2:
            return Verdict(retry=ids, dropped=int(dropped))
        wanted = set(ids)
        return Verdict(again=[m for m in pending.messages if m.key in wanted], dropped=int(dropped))


#: Codes whose operations a commit merges per (key, field): storage and hash writes.
_FOLDED = frozenset("skidhH")
_INT64 = 2**63
