"""Window agents (`@app.window`): the engine of `state/windows.py` run over a stream, its state
and its output staged in each batch's commit (DESIGN.md "state and windows").

A window agent is a batch agent owned by one consumer at a time — `exclusive` for a stream, one
owner per partition for a partitioned one — so each stream's windows have one writer and see its
entries in order. The open windows live in memory and in a hash per stream
(`keys.window(stream, group, name)`): field `k:<key>` holds a key's open windows, `~t` the newest
event time, `~late` the late count, `~v` a version, `~meta` what the agent is (for the CLI).

Each batch's commit carries, with the acks: the closed windows (emit="close") or the changed
ones (emit="update") for the output stream, the late entries for `<stream>:late`, the changed
keys' windows, and a check that `~v` still holds the version this process last wrote. So a batch
changes the windows exactly when its entries are acked: a closed window is emitted once, even
across kills, freezes and restarts. When the check fails (a commit that was not applied, a
zombie owner that wrote meanwhile), the batch is handled again, and an entry seen again makes
the agent reload its windows from Redis first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .. import keys
from ..codec import parse_entry_id
from ..consume.deadletter import DEAD_LETTER_FIELDS, flat_fields
from ..consume.outbox import CHECK, HDEL, HSET, current_outbox
from ..exceptions import ConfigError
from .aggregates import Aggregate, reduce
from .windows import Engine, Kind, Row

if TYPE_CHECKING:
    from ..consume.outbox import Outbox
    from ..consume.partitions import PartitionOwner
    from ..message import Message

__all__ = ["WindowAgent", "read_windows"]

log = logging.getLogger("streammachine.windows")

KeyFn = Callable[["Message"], str]
TimeFn = Callable[["Message"], int]
Emit = Literal["update", "close"]
_META, _VERSION, _MAX_T, _LATE, _KEY = "~meta", "~v", "~t", "~late", "k:"


def _aggregates(agg: Any) -> dict[str, Aggregate]:
    if agg is None:
        return {}  # given later, by decorating the function (`WindowAgent.__call__`)
    if callable(agg) and not isinstance(agg, Aggregate):
        return {"value": reduce(agg)}
    if isinstance(agg, Aggregate):
        return {agg.name: agg}
    if not isinstance(agg, dict) or not agg:
        raise ConfigError(
            'window agg= takes a dict of output field → aggregate, e.g. {"n": count()}, or a '
            f"function of the window's entries; got {agg!r}"
        )
    out: dict[str, Aggregate] = {}
    for name, a in agg.items():
        if not isinstance(name, str) or name in ("key", "start", "end"):
            raise ConfigError(f"window agg: {name!r} is not a usable output field name")
        if isinstance(a, Aggregate):
            out[name] = a
        elif callable(a):
            out[name] = reduce(a)
        else:
            raise ConfigError(f"window agg[{name!r}] must be an aggregate (count(), sum_(…)…)")
    return out


def _text(value: Any) -> str | bytes:
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    return msgspec.json.encode(value)


class WindowAgent:
    """One `@app.window` registration: its settings, and per stream it owns, an `Engine`.

    Built by `App.window`; see it for the arguments.
    """

    def __init__(
        self,
        stream: str,
        *,
        group: str,
        name: str,
        kind: Kind,
        agg: Any,
        key: str | KeyFn | None = None,
        time: str | TimeFn | None = None,
        grace_s: float = 0.0,
        emit: Emit = "close",
        to: str | None = None,
    ) -> None:
        if not isinstance(kind, Kind):
            raise ConfigError(
                "window kind= takes tumbling(s), hopping(s, step), sliding(s) or session(gap)"
            )
        if emit not in ("update", "close"):
            raise ConfigError(f'window emit= must be "update" or "close", not {emit!r}')
        if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or grace_s < 0:
            raise ConfigError(f"window grace_s must be a number of seconds ≥ 0, not {grace_s!r}")
        for what, v in (("key", key), ("time", time)):
            if v is not None and not isinstance(v, str) and not callable(v):
                raise ConfigError(f"window {what}= takes a field name or a function of the entry")
        self.stream, self.group, self.name = stream, group, name
        self.kind = kind
        self.aggs = _aggregates(agg)
        self.key, self.time = key, time
        self.grace_ms = round(grace_s * 1000)
        self.emit: Emit = emit
        self.to = to or f"{stream}:{name}"
        #: stream → its windows (only the streams this process owns)
        self.engines: dict[str, Engine] = {}
        #: stream → the version of its hash this process last wrote or read
        self.versions: dict[str, int] = {}
        #: stream → the newest entry id put in its engine
        self.seen: dict[str, tuple[int, int]] = {}
        self.redis: Any = None

    def __call__(self, fn: Callable[[list[dict[str, str]]], Any]) -> Any:
        """Decorate the window's function of its entries (when `agg=` was not given)."""
        if self.aggs:
            raise ConfigError(f"window {self.name!r} has agg= already; decorate nothing")
        self.aggs = {"value": reduce(fn)}
        return fn

    def __repr__(self) -> str:
        return f"WindowAgent({self.name!r}, {self.stream!r}, {self.kind})"

    def meta(self, stream: str) -> str:
        """What the CLI, MCP and metrics show of this agent on `stream` (one of its partitions,
        or its stream), stored in the hash's `~meta`."""
        return json.dumps({
            "name": self.name, "stream": stream, "group": self.group,
            "kind": str(self.kind), "grace_ms": self.grace_ms, "emit": self.emit, "to": self.to,
            "aggs": {n: repr(a) for n, a in self.aggs.items()},
        })  # fmt: skip

    # --- ownership --------------------------------------------------------------------------

    async def on_owned(self, owner: PartitionOwner, index: int) -> None:
        """This process owns a stream (partition `index`) now: load its windows first."""
        if not self.aggs:
            raise ConfigError(f"window {self.name!r} has no agg= and decorates no function")
        stream = owner.streams[index]
        self.redis = owner.redis
        await self.load(stream)

    async def load(self, stream: str) -> Engine:
        """Read `stream`'s windows from Redis (what the last applied commit left)."""
        client = self.redis.client
        hash_key = keys.window(stream, self.group, self.name)
        raw: dict[bytes, bytes] = await client.hgetall(hash_key)
        engine = Engine(self.kind, self.aggs, self.grace_ms, track=self.emit == "update")
        version = 0
        try:
            version = int(raw.get(_VERSION.encode(), b"0"))
            if (t := raw.get(_MAX_T.encode())) is not None:
                engine.max_t = int(t)
            engine.late = int(raw.get(_LATE.encode(), b"0"))
            for f, v in raw.items():
                name = f.decode("utf-8", "replace")
                if name.startswith(_KEY):
                    engine.load(name[len(_KEY) :], v)
        except ValueError as exc:
            raise ConfigError(
                f"the windows in {hash_key!r} cannot be read ({exc}); nothing is consumed until "
                "they can (delete that key to start the windows over)"
            ) from None
        await client.hset(hash_key, _META, self.meta(stream))
        self.engines[stream] = engine
        self.versions[stream] = version
        self.seen.pop(stream, None)
        log.info("%s: loaded %d open windows of %s", self.name, engine.open_windows(), stream)
        return engine

    # --- handling ---------------------------------------------------------------------------

    def _key_of(self, m: Message, record: dict[str, str]) -> str:
        k = self.key
        if k is None:
            return ""
        if isinstance(k, str):
            return record[k]
        return str(k(m))

    def _time_of(self, m: Message, record: dict[str, str]) -> int:
        t = self.time
        if t is None:
            return parse_entry_id(m.key or "")[0]
        if isinstance(t, str):
            return int(float(record[t]))
        return int(t(m))

    async def handle(self, batch: list[Message]) -> None:
        """The batch handler: put the entries in their windows, stage the commit."""
        out = current_outbox.get()
        assert out is not None, "a window agent runs as an agent"
        stream = out.stream
        engine = self.engines.get(stream)
        first = parse_entry_id(batch[0].key or "0-0")
        if engine is None or (stream in self.seen and first <= self.seen[stream]):
            # Entries seen before come again: a commit was not applied (or a zombie wrote).
            engine = await self.load(stream)
        try:
            self._handle(engine, stream, batch, out)
        except BaseException:
            # Not committed: start over from Redis with the next batch.
            self.engines.pop(stream, None)
            raise
        self.seen[stream] = parse_entry_id(batch[-1].key or "0-0")

    def _handle(self, engine: Engine, stream: str, batch: list[Message], out: Outbox) -> None:
        hash_key = keys.window(stream, self.group, self.name)
        late_stream, dead = keys.late(stream), keys.dead_letters(stream)
        for m in batch:
            record = m.message
            try:
                ok = engine.add(self._key_of(m, record), self._time_of(m, record), record)
            except (KeyError, ValueError, TypeError) as exc:
                # Bad input is kept, not dropped: to the dead letters, with the reason.
                error = f"window {self.name}: {type(exc).__name__} {exc}"
                meta = [error, type(exc).__name__, "", str(m.deliveries), stream, m.key or "",
                        self.group, "0"]  # fmt: skip
                fields = flat_fields(m._fields)
                for f, v in zip(DEAD_LETTER_FIELDS, meta, strict=True):
                    fields += [f, v]
                out.xadd(dead, None, fields)
                continue
            if not ok:
                fields = flat_fields(m._fields)
                out.xadd(late_stream, None, [*fields, "late_of", m.key or "", "window", self.name])
        rows: list[Row] = engine.updates() if self.emit == "update" else []
        closed = engine.close()
        if self.emit == "close":
            rows = closed
        for row in rows:
            fields = ["key", row.key, "start", str(row.start), "end", str(row.end)]
            for name, value in row.values.items():
                fields += [name, _text(value)]
            out.xadd(self.to, None, fields)
        version = self.versions.get(stream, 0)
        out.op(CHECK, hash_key, _VERSION, "1" if version else "0", str(version) if version else "")
        for k in sorted(engine.dirty):
            raw = engine.dump(k)
            if raw is None:
                out.op(HDEL, hash_key, _KEY + k)
            else:
                out.op(HSET, hash_key, _KEY + k, raw)
        engine.dirty.clear()
        out.op(HSET, hash_key, _MAX_T, "" if engine.max_t is None else str(engine.max_t))
        out.op(HSET, hash_key, _LATE, str(engine.late))
        out.op(HSET, hash_key, _VERSION, str(version + 1))
        self.versions[stream] = version + 1


async def read_windows(
    client: Any, *, count: bool = True, limit: int = 1000
) -> list[dict[str, Any]]:
    """Every window agent's streams on this Redis (at most `limit`): name, stream, kind, keys
    with open windows, open windows (`count=False`: None, and only a few fields are read, as
    for /metrics), watermark and late count. Values read back are checked, not trusted."""
    rows: list[dict[str, Any]] = []
    header = [_META, _MAX_T, _LATE]
    async for hash_key in client.scan_iter(match=keys.WINDOW_MATCH, count=500):
        if len(rows) >= limit:
            break
        if count:
            raw: dict[bytes, bytes] = await client.hgetall(hash_key)
            fields = len(raw)
        else:
            values = await client.hmget(hash_key, header)
            raw = {f.encode(): v for f, v in zip(header, values, strict=True) if v is not None}
            fields = int(await client.hlen(hash_key))
        if not raw:
            continue  # gone since the scan
        rows.append(_summary(hash_key, raw, fields, count))
    rows.sort(key=lambda r: r["key"])
    return rows


def _summary(hash_key: Any, raw: dict[bytes, bytes], fields: int, count: bool) -> dict[str, Any]:
    name = hash_key.decode("utf-8", "replace") if isinstance(hash_key, bytes) else str(hash_key)
    try:
        meta = json.loads(raw.get(_META.encode(), b"{}"))
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    try:
        max_t = int(raw[_MAX_T.encode()]) if raw.get(_MAX_T.encode()) else None
        late = int(raw.get(_LATE.encode(), b"0"))
    except ValueError:
        max_t, late = None, 0
    grace: int = meta["grace_ms"] if isinstance(meta.get("grace_ms"), int) else 0
    opened: int | None = None
    if count:
        opened = 0
        sliding = "sliding" in str(meta.get("kind", ""))
        for f, v in raw.items():
            if not f.startswith(_KEY.encode()):
                continue
            try:
                w = msgspec.msgpack.decode(v)
            except msgspec.DecodeError:
                continue
            if isinstance(w, dict | list):
                opened += len(w[1]) if sliding and isinstance(w, list) and len(w) == 2 else len(w)
    text = {k: meta.get(k) if isinstance(meta.get(k), str) else None
            for k in ("name", "stream", "group", "kind", "emit", "to")}  # fmt: skip
    return {
        "key": name, **text, "open_keys": max(0, fields - 4), "open_windows": opened,
        "max_event_ms": max_t, "watermark_ms": None if max_t is None else max_t - grace,
        "late": late,
    }  # fmt: skip
