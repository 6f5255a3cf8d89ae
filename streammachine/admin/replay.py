"""Acting on dead letters: send them back to their source stream (one, several, or all that match
a filter, with a dry run), edit one's fields and send it back, and purge them.

Each dead letter goes back by one script of its own: it appends the original fields (the exact
bytes, in order) to the source stream, and deletes the dead letter only when that append
succeeded — so an entry Redis refuses (its source key is another type, say) stays where it is,
and two replays at once never send one entry twice. The source stream's name is kept as the bytes
the dead letter holds. The report says which entries went back and which stayed, and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ..codec import as_text, parse_entry_id
from ..consume.deadletter import split_dead
from ..exceptions import ConfigError
from .audit import Actor, record_action
from .deadletters import DeadFilter, dead_letter_stream, default_source, find_dead, read_raw_dead
from .ids import check_entry_id
from .queries import _name, check_stream

if TYPE_CHECKING:
    from ..connection import RedisConnection

__all__ = [
    "PurgeReport",
    "RetryReport",
    "edit_and_retry",
    "purge_dead",
    "replay_dead",
    "retry_dead",
]

# KEYS: [dead-letter stream, source stream]; ARGV: [dead letter's id, field, value, ...].
# Deletes the dead letter only when its own append succeeded.
RETRY_LUA = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return {0, 'gone'} end
local ok = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 2))
if type(ok) == 'table' and ok.err then return {0, ok.err} end
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, ok}
"""
_GONE = "it is not in the dead-letter stream (replayed or purged meanwhile, or a wrong id)"
#: Ids an audit record lists at most.
_AUDIT_IDS = 50


@dataclass(slots=True)
class RetryReport:
    """What a retry did: `replayed` (`{"id", "source_stream", "new_id"}`; with a dry run
    `new_id` is None and `fields` says what would go back) and `stayed` (`{"id", "reason"}`)."""

    dead_stream: str
    dry_run: bool = False
    replayed: list[dict[str, Any]] = field(default_factory=list)
    stayed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "dead_stream": self.dead_stream,
            "dry_run": self.dry_run,
            "replayed": self.replayed,
            "stayed": self.stayed,
        }


@dataclass(slots=True)
class PurgeReport:
    """What a purge did: the ids deleted (or, with a dry run, that would be) and those missing."""

    dead_stream: str
    dry_run: bool = False
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "dead_stream": self.dead_stream,
            "dry_run": self.dry_run,
            "deleted": self.deleted,
            "missing": self.missing,
        }


def _check_ids(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(check_entry_id(i) for i in ids))


async def _ids_matching(
    conn: RedisConnection, dead: str, where: DeadFilter, limit: int | None
) -> list[str]:
    """The ids of the dead letters that match, up to the newest present now (a message that
    fails again gets a later id, so a retry of "all" cannot loop)."""
    newest = await conn.client.xrevrange(dead, "+", "-", count=1)
    if not newest:
        return []
    stop = as_text(newest[0][0])
    lo, hi = where.bounds()
    if hi == "+" or parse_entry_id(hi) > parse_entry_id(stop):
        hi = stop
    bounded = DeadFilter(where.fields, where.error, lo, hi)
    found: list[str] = []
    after: str | None = None
    while limit is None or len(found) < limit:
        want = 1000 if limit is None else min(1000, limit - len(found))
        page = await find_dead(conn, dead, bounded, count=want, after=after)
        found += [d["id"] for d in page["entries"]]
        after = page["next"]
        if after is None:
            break
    return found


async def _retry_one(
    conn: RedisConnection, dead: str, entry_id: str, flat: list[Any] | None, dry_run: bool
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(replayed, stayed) for one dead letter whose raw fields are `flat` (None: not found)."""
    if flat is None:
        return None, {"id": entry_id, "reason": _GONE}
    original, meta = split_dead(flat)
    raw_source = meta.get("source_stream") or default_source(dead)
    source: Any = raw_source if isinstance(raw_source, bytes) else (raw_source or "")
    if not original:
        return None, {"id": entry_id, "reason": "it holds no fields of the original message"}
    if not source or as_text(source) == dead:
        return None, {"id": entry_id, "reason": "it names no source stream to go back to"}
    shown = _name(source)
    if dry_run:
        fields = {
            as_text(k): as_text(v) for k, v in zip(original[::2], original[1::2], strict=False)
        }
        return {"id": entry_id, "source_stream": shown, "new_id": None, "fields": fields}, None
    try:
        if conn.is_cluster and not conn.same_slot([dead, as_text(source)]):
            # Another slot: append, then delete (at least once there, as the cluster mover).
            new_id = await conn.client.execute_command("XADD", source, "*", *original)  # type: ignore[no-untyped-call]
            await conn.client.xdel(dead, entry_id)
            done, answer = 1, new_id
        else:
            reply = await conn.script(RETRY_LUA)(keys=[dead, source], args=[entry_id, *original])
            done, answer = int(reply[0]), reply[1]
    except ResponseError as exc:  # e.g. too many fields for one script call
        return None, {"id": entry_id, "reason": str(exc)}
    if not done:
        reason = _GONE if as_text(answer) == "gone" else as_text(answer)
        return None, {"id": entry_id, "reason": reason}
    return {"id": entry_id, "source_stream": shown, "new_id": as_text(answer)}, None


async def _retry(
    conn: RedisConnection,
    dead: str,
    ids: list[str],
    dry_run: bool,
    progress: Callable[[int], None] | None = None,
) -> RetryReport:
    report = RetryReport(dead, dry_run)
    for entry_id in ids:
        if progress is not None:
            progress(1)
        flat = await read_raw_dead(conn, dead, entry_id)
        done, stayed = await _retry_one(conn, dead, entry_id, flat, dry_run)
        if done is not None:
            report.replayed.append(done)
        if stayed is not None:
            report.stayed.append(stayed)
    return report


async def _audit(
    conn: RedisConnection, actor: Actor | None, action: str, dead: str, ids: list[str], **more: Any
) -> None:
    detail = {"ids": ids[:_AUDIT_IDS], **more}
    await record_action(conn, actor or Actor("api", "python"), action, dead, len(ids), detail)


async def retry_dead(
    conn: RedisConnection,
    stream: str,
    ids: Sequence[str] | None = None,
    *,
    where: DeadFilter | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    actor: Actor | None = None,
    progress: Callable[[int], None] | None = None,
) -> RetryReport:
    """Send dead letters back to their source streams: the given `ids`, else every one that
    passes `where` (all of them without a filter), at most `limit`. `progress(1)` is called
    for each entry (a progress bar).

    Raises:
        ConfigError: an id that is not an entry id (before anything is read).

    Example:
        >>> report = await retry_dead(conn, "orders", where=DeadFilter(error="timeout"))  # doctest: +SKIP
        >>> [r["id"] for r in report.stayed]  # doctest: +SKIP
        []
    """
    dead = dead_letter_stream(stream)
    wanted = _check_ids(ids) if ids is not None else None
    if not await check_stream(conn, dead):
        if wanted is None:
            return RetryReport(dead, dry_run)
        return RetryReport(dead, dry_run, stayed=[{"id": i, "reason": _GONE} for i in wanted])
    if wanted is None:
        wanted = await _ids_matching(conn, dead, where or DeadFilter(), limit)
    report = await _retry(conn, dead, wanted, dry_run, progress)
    if not dry_run and report.replayed:
        done = [r["id"] for r in report.replayed]
        filt = (where or DeadFilter()).as_dict() if ids is None else None
        await _audit(conn, actor, "dead.retry", dead, done, stayed=len(report.stayed), filter=filt)
    return report


def _edited(flat: list[Any], set_fields: Mapping[str, str], unset: Sequence[str]) -> list[Any]:
    """The dead letter's fields with the original message's fields changed: a name set takes its
    first place (later repeats dropped), a new name goes last, an unset name is removed."""
    original, meta = split_dead(flat)
    out: list[Any] = []
    done: set[str] = set()
    for k, v in zip(original[::2], original[1::2], strict=False):
        name = as_text(k)
        if name in unset or name in done:
            continue
        if name in set_fields:
            out += [k, set_fields[name].encode()]
            done.add(name)
        else:
            out += [k, v]
    out += [x for k, v in set_fields.items() if k not in done for x in (k.encode(), v.encode())]
    return out + [x for k, v in meta.items() for x in (k.encode(), v)]


async def edit_and_retry(
    conn: RedisConnection,
    stream: str,
    entry_id: str,
    set_fields: Mapping[str, str] | None = None,
    unset: Sequence[str] = (),
    *,
    dry_run: bool = False,
    actor: Actor | None = None,
) -> RetryReport:
    """Change one dead letter's original fields (`set_fields` sets or adds, `unset` removes) and
    send the result back to its source stream; the dead letter is deleted in the same step.

    Raises:
        ConfigError: a bad id, nothing to change, or a change that leaves no field.

    Example:
        >>> await edit_and_retry(conn, "orders", "1700000000000-0", {"qty": "1"})  # doctest: +SKIP
    """
    check_entry_id(entry_id)
    set_fields = dict(set_fields or {})
    if not set_fields and not unset:
        raise ConfigError("say what to change: set a field (FIELD=VALUE) or remove one")
    for name in [*set_fields, *unset]:
        if not name:
            raise ConfigError("a field name is empty: give a name")
    dead = dead_letter_stream(stream)
    if not await check_stream(conn, dead):
        return RetryReport(dead, dry_run, stayed=[{"id": entry_id, "reason": _GONE}])
    flat = await read_raw_dead(conn, dead, entry_id)
    if flat is not None:
        flat = _edited(flat, set_fields, list(unset))
        if not split_dead(flat)[0]:
            raise ConfigError("the edit leaves the message no field: keep or set at least one")
    report = RetryReport(dead, dry_run)
    done, stayed = await _retry_one(conn, dead, entry_id, flat, dry_run)
    report.replayed += [done] if done else []
    report.stayed += [stayed] if stayed else []
    if done and not dry_run:
        changes = {"set": sorted(set_fields), "unset": sorted(unset)}
        await _audit(conn, actor, "dead.edit_retry", dead, [entry_id], changes=changes)
    return report


async def purge_dead(
    conn: RedisConnection,
    stream: str,
    ids: Sequence[str] | None = None,
    *,
    where: DeadFilter | None = None,
    dry_run: bool = False,
    actor: Actor | None = None,
) -> PurgeReport:
    """Delete dead letters for good: the given `ids`, else every one that passes `where` (all of
    those present now without a filter).

    Example:
        >>> (await purge_dead(conn, "orders", where=DeadFilter(since="1d"))).deleted  # doctest: +SKIP
        ['1700000000000-0']
    """
    dead = dead_letter_stream(stream)
    wanted = _check_ids(ids) if ids is not None else None
    report = PurgeReport(dead, dry_run)
    if not await check_stream(conn, dead):
        report.missing = wanted or []
        return report
    if wanted is None:
        wanted = await _ids_matching(conn, dead, where or DeadFilter(), None)
    if dry_run:
        found = [i for i in wanted if await read_raw_dead(conn, dead, i) is not None]
        report.deleted = found
        report.missing = [i for i in wanted if i not in set(found)]
        return report
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        async with conn.client.pipeline(transaction=False) as pipe:
            for entry_id in chunk:
                pipe.xdel(dead, entry_id)
            gone = await pipe.execute()
        for entry_id, n in zip(chunk, gone, strict=True):
            (report.deleted if int(n) else report.missing).append(entry_id)
    if report.deleted:
        filt = (where or DeadFilter()).as_dict() if ids is None else None
        await _audit(conn, actor, "dead.purge", dead, report.deleted, filter=filt)
    return report


async def replay_dead(
    conn: RedisConnection,
    stream: str,
    ids: Iterable[str] | None = None,
    *,
    batch_size: int = 500,
) -> int:
    """Send dead letters back (the given `ids`, or all present now); returns how many went back.
    `retry_dead` says which stayed and why. (`batch_size` is accepted for compatibility: each
    entry now goes back by a script of its own.)

    Example:
        >>> await replay_dead(conn, "orders", ["1700000000000-0"])  # doctest: +SKIP
        1
    """
    report = await retry_dead(conn, stream, None if ids is None else list(ids))
    return len(report.replayed)
