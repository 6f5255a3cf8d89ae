"""The stream tools of the MCP server (send, read, describe, list, pending entries, dead letters)
and their output models, without the `mcp` SDK; `server` registers them.

Example:
    >>> streams = StreamTools(tools)  # doctest: +SKIP
    >>> [s.stream for s in (await streams.stream_list("orders*")).streams]  # doctest: +SKIP
    ['orders', 'orders:dead']
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, Field
from redis.exceptions import ResponseError

from ..admin import queries as sm_queries
from ..admin.deadletters import DeadFilter, dead_letter_stream, find_dead
from ..admin.pending import list_pending
from ..codec import as_text
from .tools import MAX_VALUE_CHARS, Bounded, ToolFailure, Tools, clip, clip_fields, fit

__all__ = ["StreamTools"]

_ID = re.compile(r"^\(?\d+(-\d+)?$|^[-+]$")

StreamName = Annotated[str, Field(min_length=1, max_length=1024, description="Stream name.")]
Pattern = Annotated[str, Field(min_length=1, max_length=256, description="Glob, e.g. 'orders*'.")]
MaxLen = Annotated[int | None, Field(ge=1, description="Trim to about this many.")]

# -- output models ----------------------------------------------------------------------------


class SendResult(BaseModel):
    stream: str
    id: str = Field(description="The entry id, or the schedule id of a delayed send.")
    due_ms: int | None = Field(
        default=None, description="A delayed send's due time (epoch ms); null when sent now."
    )


class BatchResult(BaseModel):
    stream: str
    count: int
    ids: list[str]


class Entry(BaseModel):
    id: str
    fields: dict[str, str]


class ReadResult(Bounded):
    stream: str
    exists: bool
    entries: list[Entry] = []
    next: str | None = Field(
        default=None, description="Id of the next entry: pass it as start (end when newest_first)."
    )


class Consumer(BaseModel):
    name: str
    pending: int
    idle_ms: int


class Group(BaseModel):
    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    lag: int | None = Field(
        default=None, description="Entries not yet delivered; null = not counted."
    )
    oldest_pending_id: str | None = None
    oldest_pending_idle_ms: int | None = None
    consumer_list: list[Consumer] = []


class StreamSummary(BaseModel):
    stream: str
    length: int = 0
    first_id: str | None = None
    last_id: str | None = None
    last_generated_id: str | None = None
    groups: list[Group] = []


class StreamInfo(Bounded, StreamSummary):
    exists: bool
    dead_letters: int = Field(default=0, description="Entries in <stream>:dead.")


class StreamList(Bounded):
    pattern: str
    streams: list[StreamSummary]


class PendingEntry(BaseModel):
    id: str
    consumer: str
    idle_ms: int
    deliveries: int
    alive: bool = Field(description="Whether the consumer's process has a fresh heartbeat.")


class GroupPending(BaseModel):
    group: str
    pending: int
    lowest_id: str | None
    highest_id: str | None
    consumers: dict[str, int]
    dead_consumers: list[str] = Field(
        default=[], description="Consumers whose process is not alive (their entries wait)."
    )
    entries: list[PendingEntry]


class PendingResult(Bounded):
    stream: str
    exists: bool
    groups: list[GroupPending] = []


class DeadLetter(BaseModel):
    id: str
    source_stream: str | None
    source_id: str | None
    group: str | None
    error: str | None
    error_type: str | None
    deliveries: int | None
    failed_at: float | None
    traceback: str | None
    fields: dict[str, str]


class DeadResult(Bounded):
    stream: str
    dead_letter_stream: str
    total: int
    entries: list[DeadLetter]
    next: str | None = Field(
        default=None, description="More may match: pass it as `after` to go on."
    )


def _check_id(name: str, value: str | None) -> None:
    if value is not None and not _ID.match(value):
        raise ToolFailure(
            f"argument {name!r}: {value!r} is not a stream id; use an id such as 1700000000000-0 "
            "(or 1700000000000), '(' before it to exclude it, '-' for the first or '+' for the last"
        )


# -- the tools ------------------------------------------------------------------------------------


class StreamTools:
    """The stream tools, over the server's `Tools` (its connection and settings).

    Example:
        >>> StreamTools(tools).stream_read  # doctest: +SKIP
    """

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    async def stream_send(
        self,
        stream: StreamName,
        message: Annotated[dict[str, Any], Field(description="Fields; non-text values as JSON.")],
        maxlen: MaxLen = None,
        delay_s: Annotated[
            float | None,
            Field(
                ge=0,
                le=366 * 86400,
                description="Append it this many seconds from now instead (kept in Redis).",
            ),
        ] = None,
    ) -> SendResult:
        """Append one message to a Redis stream; returns its id. Field values: strings, numbers
        and booleans are written as text, anything else as JSON. Agents consuming the stream
        receive it (at-least-once). With delay_s it waits in Redis until due and a running app
        of the storage namespace appends it (then the schedule id is returned)."""
        maxlen = maxlen or self.tools.settings.stream_maxlen
        if delay_s is not None:
            from ..codec import encode_fields
            from ..schedule.delayed import Scheduler
            from ..schedule.timing import due_ms

            await sm_queries.check_stream(self.tools.conn, stream)
            due = due_ms(delay_s=delay_s)
            assert due is not None
            sched = Scheduler(self.tools.conn, self.tools.settings.storage_namespace)
            entry_id = await sched.schedule(stream, encode_fields(message), due, maxlen)
            return SendResult(stream=stream, id=entry_id, due_ms=due)
        entry_id = await self.tools.conn.xadd(stream, message, maxlen=maxlen)
        return SendResult(stream=stream, id=entry_id)

    async def stream_send_batch(
        self,
        stream: StreamName,
        messages: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=1000)],
        maxlen: MaxLen = None,
    ) -> BatchResult:
        """Append up to 1000 messages to a stream in one round trip; returns their ids in order."""
        maxlen = maxlen or self.tools.settings.stream_maxlen
        ids = await self.tools.conn.pipeline_xadd(stream, messages, maxlen=maxlen)
        return BatchResult(stream=stream, count=len(ids), ids=ids)

    async def stream_read(
        self,
        stream: StreamName,
        count: Annotated[int, Field(ge=1, le=1000, description="Entries, at most 1000.")] = 10,
        start: Annotated[str | None, Field(description="First id (inclusive); '-'.")] = None,
        end: Annotated[str | None, Field(description="Last id (inclusive); '+'.")] = None,
        newest_first: bool = False,
    ) -> ReadResult:
        """Read entries of a stream (XRANGE; XREVRANGE when newest_first), without consuming them.
        When more entries remain, `next` holds the id to continue from: pass it as `start`
        (as `end` when newest_first)."""
        _check_id("start", start)
        _check_id("end", end)
        c = self.tools.conn.client
        if not await sm_queries.check_stream(c, stream):
            return ReadResult(stream=stream, exists=False, note=f"stream {stream!r} does not exist")
        lo, hi = start or "-", end or "+"
        if newest_first:
            raw = await c.xrevrange(stream, hi, lo, count=count + 1)
        else:
            raw = await c.xrange(stream, lo, hi, count=count + 1)
        entries, clipped = [], False
        for entry_id, fields in raw or []:
            shown, cut = clip_fields(fields)
            clipped = clipped or cut
            entries.append(Entry(id=as_text(entry_id), fields=shown))
        kept, over = fit(entries[:count])
        nxt = entries[len(kept)].id if len(entries) > len(kept) else None
        notes = []
        if nxt is not None:
            notes.append(
                f"more entries: call again with {'end' if newest_first else 'start'}={nxt}"
            )
        if clipped:
            notes.append(f"long values were cut at {MAX_VALUE_CHARS} characters")
        return ReadResult(
            stream=stream, exists=True, entries=kept, next=nxt,
            truncated=over or clipped, note="; ".join(notes) or None,
        )  # fmt: skip

    async def stream_info(self, stream: StreamName) -> StreamInfo:
        """Length, first and last ids, and every consumer group of a stream with its consumers,
        pending count, lag (entries not yet delivered) and oldest pending entry."""
        c = self.tools.conn.client
        info = await sm_queries.stream_info(c, stream)
        if info is None:
            return StreamInfo(stream=stream, exists=False, note=f"stream {stream!r} does not exist")
        groups = [Group(**g) for g in info.pop("groups")]
        for g in groups[:50]:
            try:
                found = await sm_queries.list_consumers(c, stream, g.name)
            except ResponseError:  # the group was deleted meanwhile
                found = []
            g.consumer_list = [Consumer(**x) for x in found[:50]]
        dead = dead_letter_stream(stream)
        n_dead = 0
        if dead != stream and as_text(await c.type(dead)) == "stream":
            n_dead = int(await c.xlen(dead))
        kept, over = fit(groups)
        note = f"showing {len(kept)} of {len(groups)} groups" if over else None
        return StreamInfo(
            exists=True, groups=kept, dead_letters=n_dead, truncated=over, note=note, **info
        )

    async def stream_list(
        self,
        pattern: Pattern = "*",
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> StreamList:
        """List the streams whose names match a glob pattern (SCAN, never KEYS), sorted, with
        length, first/last id and their consumer groups."""
        found = await sm_queries.list_streams(self.tools.conn.client, pattern, limit + 1)
        streams = [
            StreamSummary(groups=[Group(**g) for g in s.pop("groups")], **s) for s in found[:limit]
        ]
        kept, over = fit(streams)
        note = None
        if over or len(found) > limit:
            note = f"showing {len(kept)} streams; more match: narrow the pattern or raise limit"
        return StreamList(pattern=pattern, streams=kept, truncated=note is not None, note=note)

    async def stream_pending(
        self,
        stream: StreamName,
        group: Annotated[str | None, Field(description="One group; default: all.")] = None,
        consumer: Annotated[str | None, Field(description="Only this consumer's.")] = None,
        min_idle_ms: Annotated[int | None, Field(ge=0)] = None,
        count: Annotated[int, Field(ge=1, le=1000, description="Entries per group.")] = 20,
    ) -> PendingResult:
        """Who holds what: entries delivered to a consumer group but not acknowledged yet, per
        group (totals per consumer, then the oldest entries with consumer, idle time, delivery
        count and whether the consumer's process is alive). Entries idle long are being retried
        or belong to a dead consumer; `pending_hand_back` or `pending_dead_letter` act on them."""
        found = await list_pending(
            self.tools.conn, stream, group, consumer=consumer, count=count, min_idle_ms=min_idle_ms
        )
        if not found["exists"]:
            return PendingResult(
                stream=stream, exists=False, note=f"stream {stream!r} does not exist"
            )
        out = [_group_pending(g) for g in found["groups"][:20]]
        kept, over = fit(out)
        note = (
            "only the first groups fit; name one with group="
            if over or len(found["groups"]) > 20
            else None
        )
        return PendingResult(
            stream=stream, exists=True, groups=kept, truncated=note is not None, note=note
        )

    async def stream_dead_letters(
        self,
        stream: Annotated[str, Field(min_length=1, description="A stream or its ':dead' stream.")],
        count: Annotated[int, Field(ge=1, le=500)] = 20,
        where: Annotated[
            list[Annotated[str, Field(max_length=2000)]] | None,
            Field(
                max_length=20,
                description="FIELD=VALUE (equal) or FIELD~TEXT (contains), "
                "on the original message's fields.",
            ),
        ] = None,
        error: Annotated[
            str | None, Field(max_length=2000, description="Text in the error.")
        ] = None,
        since: Annotated[
            str | None, Field(description="Dead-lettered at or after: ISO 8601, 10m, 2h, an id.")
        ] = None,
        until: Annotated[str | None, Field(description="Dead-lettered at or before.")] = None,
        after: Annotated[str | None, Field(description="Go on from a result's `next`.")] = None,
    ) -> DeadResult:
        """The oldest dead letters of a stream (`<stream>:dead`): messages a handler failed on
        `max_deliveries` times, with the error, traceback, group and the original fields;
        filtered by a field's value, the error text and a time range. `dead_show` shows one
        decoded and raw; `dead_retry` sends them back."""
        filt = DeadFilter.parse(where or [], error, since, until)
        if after is not None:
            _check_id("after", after)
        page = await find_dead(self.tools.conn, stream, filt, count=count, after=after)
        items, clipped = [], False
        for d in page["entries"]:
            d["fields"], cut = clip_fields(d["fields"])
            for k in ("error", "traceback"):
                if d[k] is not None:
                    d[k], c2 = clip(d[k])
                    cut = cut or c2
            clipped = clipped or cut
            d.pop("stream", None)
            items.append(DeadLetter(**d))
        kept, over = fit(items)
        total = page["total"]
        nxt = page["next"] if len(kept) == len(items) else f"({kept[-1].id}"
        note = f"showing {len(kept)} of {total} dead letters" if len(kept) < total else None
        return DeadResult(
            stream=stream, dead_letter_stream=page["dead_stream"], total=total, entries=kept,
            next=nxt, truncated=over or clipped, note=note,
        )  # fmt: skip


def _group_pending(g: dict[str, Any]) -> GroupPending:
    """One group of `admin.pending.list_pending` as the tool's model."""
    entries = g["entries"]
    return GroupPending(
        group=g["group"],
        pending=g["pending"],
        lowest_id=entries[0]["id"] if entries else None,
        highest_id=entries[-1]["id"] if entries else None,
        consumers={c["name"]: c["pending"] for c in g["consumers"]},
        dead_consumers=[c["name"] for c in g["consumers"] if not c["alive"]],
        entries=[PendingEntry(**e) for e in entries],
    )
