"""The fault matrix's measurements (tests/matrix.py): the invariant checker, who handled each input
first and last, the agents' counters from their heartbeats, what the schedule left behind.

Every value read back from Redis is untrusted: an unreadable heartbeat or output counts as nothing,
never as proof.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import redis as syncredis

from streammachine import keys
from streammachine.consume.deadletter import split_dead
from streammachine.presence.heartbeat import Heartbeat

#: Result fields printed first, in this order (`scripts/chaos.py`'s columns).
COLUMNS = ("sent", "outputs", "lost", "duplicated", "claimed", "dead", "pending")


@dataclass
class Result:
    """What a cell produced, as the invariant checker counts it, and what proves its fault bit."""

    cell: str
    sent: int = 0
    outputs: int = 0
    lost: int = 0
    duplicated: int = 0
    #: inputs finally handled by a process other than the first that read them
    claimed: int = 0
    dead: int = 0
    pending: int = 0
    distinct: int = 0
    bad_dead: int = 0  # dead letters of inputs that never failed, or twice, or bytes changed
    bad_bytes: int = 0  # outputs whose data differs from the input's
    #: outputs dropped by fenced commits (the agents' `dropped` counters, from the heartbeats)
    dropped: int = 0
    #: connections the TCP proxy accepted after the first cut or stall
    reconnects: int = 0
    #: the longest a live process held an entry before its output (ms)
    held_ms: int = 0
    #: members left in the schedule's sorted sets (delayed, in flight, failed)
    sched_left: int = 0
    #: faults that struck, as measured (a kill of a worker holding entries, a freeze that ended
    #: with the worker fenced, a cut the worker reconnected after, ...)
    faults: int = 0
    seconds: float = 0.0
    #: what the cell required of its fault and did not see; bad exits at stop
    unproven: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.bad_dead
            or self.bad_bytes
            or self.pending
            or self.sched_left
            or self.unproven
        )

    def require(self, cond: bool, what: str) -> None:
        """Note `what` as unproven unless `cond`."""
        if not cond:
            self.unproven.append(what)

    def line(self) -> str:
        cols = [f"{k}={getattr(self, k)}" for k in COLUMNS]
        rest = ("dropped", "reconnects", "held_ms", "faults", "distinct", "bad_dead", "bad_bytes")
        cols += [f"{k}={getattr(self, k)}" for k in rest if getattr(self, k)]
        if self.sched_left:
            cols.append(f"sched_left={self.sched_left}")
        cols.append(f"seconds={self.seconds:.1f}")
        tail = "".join(f" UNPROVEN: {u}" for u in self.unproven)
        return f"{self.cell} " + " ".join(cols) + tail


def process_prefix(pid: int) -> str:
    """How the consumer names and instance ids of process `pid` on this host begin."""
    return f"{socket.gethostname()}-{pid}-"


def fence_count(r: syncredis.Redis, streams: list[str], pid: int) -> int:
    """How often entries were taken away from the consumers of process `pid`."""
    prefix = process_prefix(pid).encode()
    total = 0
    for s in streams:
        for name, count in r.hgetall(keys.fence(s, "stage")).items():
            if name.startswith(prefix) and count.isdigit():
                total += int(count)
    return total


def holding(r: syncredis.Redis, streams: list[str], pid: int) -> int:
    """How many entries the consumers of process `pid` own right now."""
    prefix = process_prefix(pid)
    total = 0
    for s in streams:
        if not r.exists(s):
            continue
        try:
            consumers = r.xpending(s, "stage").get("consumers") or []
        except syncredis.ResponseError:  # no group yet
            continue
        for c in consumers:
            name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            if name.startswith(prefix):
                total += int(c["pending"])
    return total


def dropped_by_instance(r: syncredis.Redis) -> dict[str, int]:
    """Each live instance's `dropped` counters (summed over its agents), from its heartbeat."""
    out: dict[str, int] = {}
    for key in r.scan_iter(match=keys.INSTANCES + "*", count=1000):
        raw = r.get(key)
        try:
            beat = msgspec.json.decode(raw or b"", type=Heartbeat)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        out[key.decode("utf-8", "replace")] = sum(a.stats.dropped for a in beat.agents)
    return out


def sched_left(r: syncredis.Redis) -> int:
    """Members left in every schedule sorted set (`keys.scheduled`, its `:inflight`, `:failed`)."""
    total = 0
    for key in r.scan_iter(match=keys.scheduled("*").replace("{*}", "*"), count=1000):
        if r.type(key) == b"zset":
            total += int(r.zcard(key))
        else:
            total += 1  # anything else there is wrong too
    return total


def first_readers(seen_dir: Path) -> dict[str, int]:
    """Who read each input first: {src: pid}, from the app's seen files — the handling with the
    lowest delivery count, then the earliest (monotonic ns). By delivery count, not time: a
    worker frozen between its read and its handler handles the entry after its claimer did."""
    first: dict[str, tuple[int, int, int]] = {}
    for f in seen_dir.iterdir():
        for line in f.read_bytes().splitlines():
            parts = line.split()
            if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
                continue  # a line cut by a SIGKILL
            src, pid, dlv, t = parts[0].decode(), int(parts[1]), int(parts[2]), int(parts[3])
            if src not in first or (dlv, t) < first[src][1:]:
                first[src] = (pid, dlv, t)
    return {src: pid for src, (pid, _, _) in first.items()}


def claimed_so_far(r: syncredis.Redis, seen_dir: Path) -> int:
    """`Result.claimed` as of now (while the cell runs)."""
    last_pid: dict[str, int] = {}
    for _, f in r.xrange("out"):
        if f.get(b"pid", b"").isdigit():
            last_pid[f.get(b"src", b"").decode("utf-8", "replace")] = int(f[b"pid"])
    first = first_readers(seen_dir)
    return sum(1 for src, pid in last_pid.items() if first.get(src, pid) != pid)


def check(
    result: Result,
    r: syncredis.Redis,
    expected: dict[str, bytes | None],
    poison: dict[str, bytes],
    streams: list[str],
    seen_dir: Path,
) -> None:
    """The invariant checker: counts lost, duplicated, claimed, wrong bytes, bad dead letters,
    pending, and what the schedule left."""
    result.sent = len(expected)
    outs: Counter[str] = Counter()
    last_pid: dict[str, int] = {}
    for _, f in r.xrange("out"):
        src = f.get(b"src", b"").decode("utf-8", "replace")
        outs[src] += 1
        if src in expected and expected[src] is not None and f.get(b"data") != expected[src]:
            result.bad_bytes += 1
        if f.get(b"pid", b"").isdigit():
            last_pid[src] = int(f[b"pid"])
        if f.get(b"held_ms", b"").isdigit():
            result.held_ms = max(result.held_ms, int(f[b"held_ms"]))
    first = first_readers(seen_dir)
    result.claimed = sum(1 for src, pid in last_pid.items() if first.get(src, pid) != pid)
    result.outputs = sum(outs.values())
    result.distinct = len(outs)
    result.duplicated = sum(c - 1 for c in outs.values() if c > 1)
    wanted = {k for k, v in expected.items() if v is not None}
    result.lost = len(wanted - set(outs))
    if set(outs) - wanted:
        result.notes.append(f"outputs of inputs that should have none: {len(set(outs) - wanted)}")
        result.bad_dead += len(set(outs) - wanted)
    dead: Counter[str] = Counter()
    raw_dead = r.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, "in:dead")
    for _, flat in raw_dead:  # type: ignore[union-attr]
        original, meta = split_dead(list(flat))
        key = f"{meta['source_stream'].decode()}/{meta['source_id'].decode()}"
        dead[key] += 1
        fields = dict(zip(original[::2], original[1::2], strict=True))
        if key not in poison or fields.get(b"data") != poison[key]:
            result.bad_dead += 1
    result.dead = sum(dead.values())
    result.bad_dead += sum(c - 1 for c in dead.values() if c > 1) + len(set(poison) - set(dead))
    result.pending = sum(int(r.xpending(s, "stage")["pending"]) for s in streams if r.exists(s))
    result.sched_left = sched_left(r)
