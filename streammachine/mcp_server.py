"""The MCP server: StreamMachine's streams, storage, objects, OHLC aggregators and Redis health as
tools an LLM client can call (the only module importing the `mcp` SDK, 2.x).

Safety model:
    - Every tool carries all four MCP annotations (readOnly, destructive, idempotent, openWorld).
      `read_only=True` (`streammachine mcp --read-only`) registers the read-only tools only.
    - The tools that delete data (`storage_delete`, `storage_clear`, `obj_delete`, `ohlc_clear`)
      need a confirmation: a client that supports elicitation is asked (the user must accept
      `confirm: true`); any other client must pass `confirm: true`. Without it nothing changes.
    - Bad arguments, Redis errors (unreachable, WRONGTYPE, NOGROUP) and refusals are error results
      (`isError`) with a message that names the argument or says what to do; never a crash, never
      a success. Passwords never appear in results or messages.
    - Results are JSON with output schemas, ids and values as text, bounded in entries and bytes;
      a cut result says so in `note` (and `stream_read` returns a `next` cursor).
    - `obj_get` unpickles only values signed with `STREAMMACHINE_SECRET_KEY`.

Example:
    >>> server = create_server("redis://localhost:6379/0", read_only=True)  # doctest: +SKIP
    >>> anyio.run(serve, server)  # stdio  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, ToolAnnotations
from mcp.types.version import is_version_at_least
from pydantic import BaseModel, Field, StrictBool
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from . import inspect as sm_inspect
from .connection import RedisConnection, mask_url, validate_url
from .exceptions import ConfigError, RedisUnavailableError, StreamMachineError
from .objstore import RedisObjectStorage
from .settings import Settings
from .storage import Storage

__all__ = ["CONFIRMED_TOOLS", "TOOLS", "create_server", "serve"]

log = logging.getLogger("streammachine.mcp")

#: Bounds of every result: JSON bytes of its list, characters of one value, fields of one entry.
MAX_RESULT_BYTES = 100_000
MAX_VALUE_CHARS = 2_000
MAX_FIELDS = 50
MAX_WRITE_BYTES = 1_000_000
MAX_AGGREGATORS = 100
CALL_TIMEOUT_S = 15.0

# name: (title, readOnlyHint, destructiveHint, idempotentHint); openWorldHint is False for all:
# every tool acts on this one Redis and this process, never on an open set of outside systems.
TOOLS: dict[str, tuple[str, bool, bool, bool]] = {
    "stream_send": ("Send a message to a stream", False, False, False),
    "stream_send_batch": ("Send messages to a stream", False, False, False),
    "stream_read": ("Read stream entries", True, False, True),
    "stream_info": ("Describe a stream", True, False, True),
    "stream_list": ("List streams", True, False, True),
    "stream_pending": ("Pending entries of consumer groups", True, False, True),
    "stream_dead_letters": ("Dead letters of a stream", True, False, True),
    "storage_read": ("Read a storage key", True, False, True),
    "storage_write": ("Write a storage key", False, True, True),
    "storage_delete": ("Delete a storage key", False, True, True),
    "storage_keys": ("List storage keys", True, False, True),
    "storage_clear": ("Delete every storage key of a namespace", False, True, True),
    "health_check": ("Check Redis health", True, False, True),
    "redis_info": ("Redis server INFO", True, False, True),
    "redis_ping": ("Ping Redis", True, False, True),
    "obj_get": ("Read a stored object", True, False, True),
    "obj_list": ("List stored objects", True, False, True),
    "obj_delete": ("Delete stored objects", False, True, True),
    "ohlc_create": ("Create an OHLC aggregator", False, False, True),
    "ohlc_update": ("Add a tick to an OHLC aggregator", False, False, False),
    "ohlc_get_candles": ("Candles of a symbol", True, False, True),
    "ohlc_get_completed": ("Completed candles of a symbol", True, False, True),
    "ohlc_flush": ("Remove (and emit) completed candles", False, True, True),
    "ohlc_clear": ("Clear an OHLC aggregator", False, True, True),
    "ohlc_stats": ("OHLC aggregator statistics", True, False, True),
    "ohlc_list": ("List OHLC aggregators", True, False, True),
    "app_instances": ("Running StreamMachine instances", True, False, True),
}
#: The tools that delete data and so need a confirmation.
CONFIRMED_TOOLS = ("storage_delete", "storage_clear", "obj_delete", "ohlc_clear")

# -- argument types ---------------------------------------------------------------------------

StreamName = Annotated[str, Field(min_length=1, max_length=1024, description="Stream name.")]
Pattern = Annotated[str, Field(min_length=1, max_length=256, description="Glob, e.g. 'orders*'.")]
Namespace = Annotated[
    str | None,
    Field(description="Storage namespace (letters, digits, _ . -); default: the server's."),
]
ObjNamespace = Annotated[
    str, Field(description="Object storage namespace (letters, digits, _ . -).")
]
Key = Annotated[str, Field(min_length=1, max_length=1024, description="The key.")]
Confirm = Annotated[
    StrictBool,
    Field(description="Set true, after the user agreed, when the client cannot ask the user."),
]
AggName = Annotated[str, Field(pattern=r"^[\w.-]{1,64}$", description="Aggregator name.")]
Symbol = Annotated[str, Field(min_length=1, max_length=64, description="Symbol, e.g. 'AAPL'.")]
Interval = Annotated[int | str, Field(description="Interval in ms (60000) or a name ('1m').")]
NowMs = Annotated[
    int | None, Field(ge=0, description="Clock in ms for completeness; default: newest tick time.")
]

# -- output models ----------------------------------------------------------------------------


class Bounded(BaseModel):
    """A result that may have been cut to stay small."""

    truncated: bool = False
    note: str | None = None


class SendResult(BaseModel):
    stream: str
    id: str


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


class GroupPending(BaseModel):
    group: str
    pending: int
    lowest_id: str | None
    highest_id: str | None
    consumers: dict[str, int]
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


class ValueResult(Bounded):
    namespace: str
    key: str
    found: bool
    type: str | None = None
    format: str | None = None
    value: Any = None


class WriteResult(BaseModel):
    namespace: str
    key: str
    ttl_s: float | None


class DeleteResult(BaseModel):
    namespace: str
    deleted: int = Field(description="How many keys were deleted.")
    confirmed_by: Literal["elicitation", "argument"]


class KeysResult(Bounded):
    namespace: str
    keys: list[str]


class HealthResult(BaseModel):
    healthy: bool
    redis: str
    redis_url: str
    redis_version: str | None
    latency_ms: float
    instances: int


class InfoResult(Bounded):
    section: str | None
    info: dict[str, Any]
    hidden: list[str] = Field(
        default=[], description="Fields left out because they may hold secrets."
    )


class PingResult(BaseModel):
    pong: bool
    latency_ms: float


class Candle(BaseModel):
    candle_start_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    timestamp_ms: int


class AggregatorInfo(BaseModel):
    name: str
    intervals_ms: list[int]
    intervals: list[str]
    grace_ms: int
    symbols: int = 0
    tick_count: int = 0
    created: bool = False


class TickResult(BaseModel):
    name: str
    symbol: str
    tick_count: int
    watermark_ms: int | None


class CandlesResult(Bounded):
    name: str
    symbol: str
    interval_ms: int
    interval: str
    candles: list[Candle]
    emitted_to: str | None = None
    ids: list[str] = []


class ClearResult(BaseModel):
    name: str
    removed: bool
    confirmed_by: Literal["elicitation", "argument"]


class StatsResult(BaseModel):
    name: str
    stats: dict[str, Any]


class AggregatorList(BaseModel):
    aggregators: list[AggregatorInfo]


class Instance(BaseModel):
    id: str
    app: str | None
    host: str | None
    pid: int | None
    version: str | None
    started_at: float | None
    heartbeat_age_s: float | None
    fresh: bool
    agents: list[dict[str, Any]]
    timers: list[dict[str, Any]]


class InstancesResult(Bounded):
    instances: list[Instance]


# -- confirmation of destructive tools ------------------------------------------------------------


class ConfirmForm(BaseModel):
    """What the user is asked to accept."""

    confirm: bool = Field(description="true to go ahead")


class Confirmation(BaseModel):
    """The decision without elicitation: the `confirm` argument."""

    ok: bool


async def _ask(ctx: Context, confirm: bool, question: str) -> Elicit[ConfirmForm] | Confirmation:
    caps = ctx.client_capabilities
    form = caps.elicitation if caps is not None else None
    if form is not None and (form.form is not None or form.url is None):
        version = ctx.protocol_version or ""
        # Before 2026-07-28 the question is a request back to the client, which needs a channel.
        modern = version and is_version_at_least(version, "2026-07-28")
        if modern or ctx.session.can_send_request:
            return Elicit(question + " This cannot be undone.", ConfirmForm)
    return Confirmation(ok=confirm)


# Resolvers (run before the tool body, from the tool's own arguments): the question shown is
# fixed by the arguments, so a retried round of the 2026-07-28 protocol asks the same one.
async def _ask_storage_delete(
    ctx: Context, confirm: bool, key: str, namespace: str | None
) -> Elicit[ConfirmForm] | Confirmation:
    where = f"namespace {namespace!r}" if namespace else "the default namespace"
    return await _ask(ctx, confirm, f"Delete the storage key {key!r} of {where}?")


async def _ask_storage_clear(
    ctx: Context, confirm: bool, namespace: str | None
) -> Elicit[ConfirmForm] | Confirmation:
    where = f"namespace {namespace!r}" if namespace else "the default namespace"
    return await _ask(ctx, confirm, f"Delete EVERY storage key of {where}?")


async def _ask_obj_delete(
    ctx: Context, confirm: bool, pattern: str, namespace: str
) -> Elicit[ConfirmForm] | Confirmation:
    return await _ask(
        ctx, confirm, f"Delete the stored objects of namespace {namespace!r} matching {pattern!r}?"
    )


async def _ask_ohlc_clear(
    ctx: Context, confirm: bool, name: str, drop: bool
) -> Elicit[ConfirmForm] | Confirmation:
    what = "and remove" if drop else "of"
    return await _ask(ctx, confirm, f"Delete every candle {what} OHLC aggregator {name!r}?")


Confirmed = ElicitationResult[ConfirmForm]


def _confirmed_by(outcome: Any, tool: str) -> Literal["elicitation", "argument"]:
    """How a destructive call was confirmed; a `ToolError` (nothing changed) when it was not."""
    if isinstance(outcome, AcceptedElicitation):
        data = outcome.data
        if isinstance(data, Confirmation):
            if data.ok:
                return "argument"
            raise ToolError(
                f"{tool} deletes data and was not confirmed, so nothing was changed. Ask the user; "
                "if they agree, call it again with confirm: true."
            )
        if isinstance(data, ConfirmForm) and data.confirm:
            return "elicitation"
        raise ToolError(f"the user did not confirm {tool}, so nothing was changed")
    action = getattr(outcome, "action", "declined")
    raise ToolError(f"the user answered {action!r} to {tool}, so nothing was changed")


# -- helpers --------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
_ID = re.compile(r"^\(?\d+(-\d+)?$|^[-+]$")
_SECRET_NAME = re.compile(r"pass|auth|secret|token|credential|private", re.IGNORECASE)


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _clip(text: str, limit: int = MAX_VALUE_CHARS) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return f"{text[:limit]}…[{len(text) - limit} more characters]", True


def _fields(raw: Mapping[Any, Any] | None) -> tuple[dict[str, str], bool]:
    """Entry fields as text, at most MAX_FIELDS of them, each value clipped."""
    out: dict[str, str] = {}
    cut = False
    for i, (k, v) in enumerate((raw or {}).items()):
        if i >= MAX_FIELDS:
            return out, True
        key, c1 = _clip(_s(k), 200)
        out[key], c2 = _clip(_s(v))
        cut = cut or c1 or c2
    return out, cut


def _fit(items: Sequence[M], budget: int = MAX_RESULT_BYTES) -> tuple[list[M], bool]:
    """The leading items whose JSON fits `budget` bytes (always at least one)."""
    kept: list[M] = []
    used = 0
    for item in items:
        size = len(item.model_dump_json())
        if kept and used + size > budget:
            return kept, True
        kept.append(item)
        used += size
    return kept, False


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A stored value as JSON: bytes as UTF-8 text (else base64), other objects as their repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return {"base64": base64.b64encode(raw).decode()}
    if depth > 64:
        return repr(value)
    if isinstance(value, Mapping):
        return {_s(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


def _bounded_value(value: Any) -> tuple[Any, bool, str | None]:
    data = _jsonable(value)
    text = json.dumps(data, ensure_ascii=False)
    if len(text) <= MAX_RESULT_BYTES:
        return data, False, None
    note = f"the value is {len(text)} characters of JSON; showing the start as text"
    return text[:MAX_RESULT_BYTES], True, note


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _mask(url: str) -> str:
    """`url` with its password replaced by ***, even one holding '@' or '/'."""
    try:
        pw = urlsplit(url).password
    except ValueError:
        pw = None
    return mask_url(url.replace(f":{pw}@", ":***@", 1) if pw else url)


def _check_id(name: str, value: str | None) -> None:
    if value is not None and not _ID.match(value):
        raise ToolError(
            f"argument {name!r}: {value!r} is not a stream id; use an id such as 1700000000000-0 "
            "(or 1700000000000), '(' before it to exclude it, '-' for the first or '+' for the last"
        )


def _candle(c: Any) -> Candle:
    return Candle(**c._asdict())


_INVALID = re.compile(r"^(Error executing tool \w+: )\d+ validation errors? for \w+\n(.*)$", re.S)
_DETAIL = re.compile(r"\s*\[type=[^,\]]*(?:, input_value=(.*?), input_type=\w+)?\]\s*$")


def tidy_validation_error(text: str) -> str:
    """Pydantic's report on bad tool arguments as one line per argument, e.g.
    `Error executing tool stream_read: argument 'count': Input should be <= 1000 (got 5000)`."""
    m = _INVALID.match(text)
    if m is None:
        return text
    lines = [ln for ln in m.group(2).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    problems = []
    for loc, msg in zip(lines[::2], lines[1::2], strict=False):
        detail = _DETAIL.search(msg)
        got = f" (got {detail.group(1)})" if detail and detail.group(1) else ""
        problems.append(f"argument {loc.strip()!r}: {_DETAIL.sub('', msg).strip()}{got}")
    return m.group(1) + "; ".join(problems) if problems else text


async def _tidy_errors(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    result = await call_next(ctx)  # the wire form: a dict
    if isinstance(result, dict) and result.get("isError"):
        for block in result.get("content") or []:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                block["text"] = tidy_validation_error(block["text"])
    return result


# -- the tools ------------------------------------------------------------------------------------


class _Tools:
    """The server's state (Redis URL, settings, OHLC aggregators) and every tool as a method."""

    def __init__(self, url: str, settings: Settings, read_only: bool, timeout_s: float) -> None:
        self.url = url
        self.settings = settings
        self.read_only = read_only
        self.timeout_s = timeout_s
        self.aggregators: dict[str, Any] = {}
        self._conn: RedisConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._users = 0
        self._ohlc_lock: anyio.Lock | None = None
        parts = urlsplit(url)
        pw = parts.password
        self._secrets = [s for s in (pw, unquote(pw) if pw else None, settings.secret_key) if s]

    # -- plumbing

    @property
    def conn(self) -> RedisConnection:
        """This event loop's connection (redis-py connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._conn is None or self._loop is not loop:
            self._conn, self._loop = RedisConnection(url=self.url, settings=self.settings), loop
        return self._conn

    @property
    def masked_url(self) -> str:
        return _mask(self.url)

    def scrub(self, text: str) -> str:
        """`text` with every known secret replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @asynccontextmanager
    async def lifespan(self, _server: Any) -> AsyncIterator[None]:
        self._users += 1
        if self._users == 1:
            try:
                with anyio.fail_after(2):
                    await self.conn.client.ping()
            except Exception as exc:  # the server still starts; each tool reports the error
                reason = self.scrub(str(exc)) or type(exc).__name__
                log.warning("Redis at %s does not answer yet: %s", self.masked_url, reason)
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._conn is not None:
                conn, self._conn = self._conn, None
                with anyio.CancelScope(shield=True):
                    await conn.close()

    def guard(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`fn` with a time limit, and every failure turned into an error result that says why."""

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                with anyio.fail_after(self.timeout_s):
                    return await fn(*args, **kwargs)
            except ToolError as exc:
                raise ToolError(self.scrub(str(exc))) from None
            except TimeoutError:
                raise ToolError(
                    f"{name}: no answer from Redis at {self.masked_url} within {self.timeout_s:g} s"
                ) from None
            except Exception as exc:
                raise ToolError(self.scrub(self.explain(name, exc))) from None

        return call

    def explain(self, name: str, exc: Exception) -> str:
        if isinstance(exc, AuthenticationError):
            return f"Redis at {self.masked_url} refused the credentials ({exc}); check REDIS_URL"
        if isinstance(exc, ResponseError):
            text = str(exc)
            if text.startswith("WRONGTYPE"):
                return f"{name}: a key holds another type than this tool needs ({text})"
            if text.startswith("NOGROUP"):
                return f"{name}: no such consumer group ({text}); see stream_info for the groups"
            return f"{name}: Redis refused the command: {text}"
        if isinstance(exc, RedisError | OSError | RedisUnavailableError):
            return (
                f"cannot reach Redis at {self.masked_url}: "
                f"{str(exc).rstrip('. ') or type(exc).__name__}. "
                "Start redis-server or point REDIS_URL (or --redis-url) at a reachable server."
            )
        if isinstance(exc, StreamMachineError | ValueError | TypeError):
            return f"{name}: {exc}"
        log.exception("MCP tool %s failed", name)
        return f"{name} failed: {type(exc).__name__}: {exc}"

    def storage(self, namespace: str | None) -> Storage:
        return Storage(namespace or self.settings.storage_namespace, redis=self.conn)

    def objects(self, namespace: str) -> RedisObjectStorage:
        return RedisObjectStorage(
            namespace=namespace, redis=self.conn, secret_key=self.settings.secret_key
        )

    # -- streams

    async def stream_send(
        self,
        stream: StreamName,
        message: Annotated[dict[str, Any], Field(description="Fields; non-text values as JSON.")],
        maxlen: Annotated[int | None, Field(ge=1, description="Trim to about this many.")] = None,
    ) -> SendResult:
        """Append one message to a Redis stream; returns its id. Field values: strings, numbers
        and booleans are written as text, anything else as JSON. Agents consuming the stream
        receive it (at-least-once)."""
        maxlen = maxlen or self.settings.stream_maxlen
        return SendResult(stream=stream, id=await self.conn.xadd(stream, message, maxlen=maxlen))

    async def stream_send_batch(
        self,
        stream: StreamName,
        messages: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=1000)],
        maxlen: Annotated[int | None, Field(ge=1, description="Trim to about this many.")] = None,
    ) -> BatchResult:
        """Append up to 1000 messages to a stream in one round trip; returns their ids in order."""
        maxlen = maxlen or self.settings.stream_maxlen
        ids = await self.conn.pipeline_xadd(stream, messages, maxlen=maxlen)
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
        c = self.conn.client
        if not await sm_inspect.check_stream(c, stream):
            return ReadResult(stream=stream, exists=False, note=f"stream {stream!r} does not exist")
        lo, hi = start or "-", end or "+"
        if newest_first:
            raw = await c.xrevrange(stream, hi, lo, count=count + 1)
        else:
            raw = await c.xrange(stream, lo, hi, count=count + 1)
        entries, clipped = [], False
        for entry_id, fields in raw or []:
            shown, cut = _fields(fields)
            clipped = clipped or cut
            entries.append(Entry(id=_s(entry_id), fields=shown))
        kept, over = _fit(entries[:count])
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
        c = self.conn.client
        info = await sm_inspect.stream_info(c, stream)
        if info is None:
            return StreamInfo(stream=stream, exists=False, note=f"stream {stream!r} does not exist")
        groups = [Group(**g) for g in info.pop("groups")]
        for g in groups[:50]:
            try:
                found = await sm_inspect.list_consumers(c, stream, g.name)
            except ResponseError:  # the group was deleted meanwhile
                found = []
            g.consumer_list = [Consumer(**x) for x in found[:50]]
        dead = sm_inspect.dead_letter_stream(stream)
        n_dead = 0
        if dead != stream and _s(await c.type(dead)) == "stream":
            n_dead = int(await c.xlen(dead))
        kept, over = _fit(groups)
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
        found = await sm_inspect.list_streams(self.conn.client, pattern, limit + 1)
        streams = [
            StreamSummary(groups=[Group(**g) for g in s.pop("groups")], **s) for s in found[:limit]
        ]
        kept, over = _fit(streams)
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
        group (totals per consumer, then the oldest entries with consumer, idle time and
        delivery count). Entries idle long are being retried or belong to a dead consumer."""
        c = self.conn.client
        if not await sm_inspect.check_stream(c, stream):
            return PendingResult(
                stream=stream, exists=False, note=f"stream {stream!r} does not exist"
            )
        names = [group] if group else [_s(g["name"]) for g in await c.xinfo_groups(stream)]
        out: list[GroupPending] = []
        for name in names[:20]:
            summary = await c.xpending(stream, name)
            rows = await c.xpending_range(
                stream, name, min="-", max="+", count=count,
                consumername=consumer, idle=min_idle_ms,
            )  # fmt: skip
            out.append(
                GroupPending(
                    group=name,
                    pending=int(summary["pending"]),
                    lowest_id=_s(summary["min"]) if summary["min"] else None,
                    highest_id=_s(summary["max"]) if summary["max"] else None,
                    consumers={_s(x["name"]): int(x["pending"]) for x in summary["consumers"]},
                    entries=[
                        PendingEntry(
                            id=_s(r["message_id"]),
                            consumer=_s(r["consumer"]),
                            idle_ms=int(r["time_since_delivered"]),
                            deliveries=int(r["times_delivered"]),
                        )
                        for r in rows
                    ],
                )
            )
        kept, over = _fit(out)
        note = (
            "only the first groups fit; name one with group=" if over or len(names) > 20 else None
        )
        return PendingResult(
            stream=stream, exists=True, groups=kept, truncated=note is not None, note=note
        )

    async def stream_dead_letters(
        self,
        stream: Annotated[str, Field(min_length=1, description="A stream or its ':dead' stream.")],
        count: Annotated[int, Field(ge=1, le=500)] = 20,
    ) -> DeadResult:
        """The oldest dead letters of a stream (`<stream>:dead`): messages a handler failed on
        `max_deliveries` times, with the error, traceback, group and the original fields."""
        c = self.conn.client
        dead = sm_inspect.dead_letter_stream(stream)
        total = int(await c.xlen(dead)) if await sm_inspect.check_stream(c, dead) else 0
        items, clipped = [], False
        for d in await sm_inspect.list_dead(c, stream, count) if total else []:
            d["fields"], cut = _fields(d["fields"])
            for k in ("error", "traceback"):
                if d[k] is not None:
                    d[k], c2 = _clip(d[k])
                    cut = cut or c2
            clipped = clipped or cut
            d.pop("stream", None)
            items.append(DeadLetter(**d))
        kept, over = _fit(items)
        note = f"showing {len(kept)} of {total} dead letters" if len(kept) < total else None
        return DeadResult(
            stream=stream, dead_letter_stream=dead, total=total, entries=kept,
            truncated=over or clipped, note=note,
        )  # fmt: skip

    # -- storage

    async def storage_read(self, key: Key, namespace: Namespace = None) -> ValueResult:
        """Read a value of the app's shared Storage (what `app.storage.read` returns)."""
        store = self.storage(namespace)
        missing = object()
        value = await store.read(key, missing)
        if value is missing:
            return ValueResult(namespace=store.namespace, key=key, found=False)
        data, cut, note = _bounded_value(value)
        return ValueResult(
            namespace=store.namespace, key=key, found=True, type=_type_name(value),
            value=data, truncated=cut, note=note,
        )  # fmt: skip

    async def storage_write(
        self,
        key: Key,
        value: Annotated[Any, Field(description="Any JSON value.")],
        namespace: Namespace = None,
        ttl_s: Annotated[float | None, Field(gt=0, description="Expire after seconds.")] = None,
    ) -> WriteResult:
        """Store a JSON value under a key of the shared Storage, replacing the old value (and its
        TTL); every process of the app sees it at once. Counters: ints are stored as numbers."""
        size = len(json.dumps(value, default=str))
        if size > MAX_WRITE_BYTES:
            raise ToolError(
                f"argument 'value': {size} bytes of JSON; the limit is {MAX_WRITE_BYTES}"
            )
        store = self.storage(namespace)
        await store.write(key, value, ttl_s=ttl_s)
        return WriteResult(namespace=store.namespace, key=key, ttl_s=ttl_s)

    async def storage_delete(
        self,
        key: Key,
        namespace: Namespace = None,
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_storage_delete)],
    ) -> DeleteResult:
        """Delete one key of the shared Storage. Needs confirmation: the user is asked when the
        client supports it; otherwise pass confirm: true once the user agreed."""
        how = _confirmed_by(confirmation, "storage_delete")
        store = self.storage(namespace)
        return DeleteResult(
            namespace=store.namespace, deleted=int(await store.delete(key)), confirmed_by=how
        )

    async def storage_keys(
        self,
        namespace: Namespace = None,
        pattern: Annotated[str | None, Field(max_length=256, description="Glob.")] = None,
        limit: Annotated[int, Field(ge=1, le=10000)] = 1000,
    ) -> KeysResult:
        """List the keys of the shared Storage (sorted), all or those matching a glob."""
        store = self.storage(namespace)
        return self._keys(store.namespace, await store.keys(pattern), limit)

    async def storage_clear(
        self,
        namespace: Namespace = None,
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_storage_clear)],
    ) -> DeleteResult:
        """Delete every key of one Storage namespace (nothing outside it). Needs confirmation:
        the user is asked when the client supports it; otherwise pass confirm: true."""
        how = _confirmed_by(confirmation, "storage_clear")
        store = self.storage(namespace)
        n = len(await store.keys())
        await store.clear()
        return DeleteResult(namespace=store.namespace, deleted=n, confirmed_by=how)

    def _keys(self, namespace: str, keys: list[str], limit: int) -> KeysResult:
        shown = [_clip(k, 1024)[0] for k in keys[:limit]]
        over = len(keys) > limit or len(json.dumps(shown)) > MAX_RESULT_BYTES
        while shown and len(json.dumps(shown)) > MAX_RESULT_BYTES:
            shown = shown[: len(shown) // 2]
        note = f"showing {len(shown)} of {len(keys)} keys; use a pattern" if over else None
        return KeysResult(namespace=namespace, keys=shown, truncated=over, note=note)

    # -- Redis

    async def health_check(self) -> HealthResult:
        """Check that Redis answers (PING), its version and latency, and count the registered
        app instances. An unreachable Redis is an error result."""
        c = self.conn.client
        try:
            info = await sm_inspect.server_info(c)
        except Exception as exc:
            raise ToolError(f"unhealthy: {self.explain('health_check', exc)}") from None
        try:
            instances = len(await sm_inspect.list_instances(c))
        except ResponseError:  # an ACL without SCAN: Redis itself is fine
            instances = 0
        return HealthResult(
            healthy=True, redis="connected", redis_url=self.masked_url, instances=instances, **info
        )

    async def redis_info(
        self,
        section: Annotated[
            str | None, Field(pattern=r"^[A-Za-z_]{1,32}$", description="e.g. server, memory.")
        ] = None,
    ) -> InfoResult:
        """Redis INFO, all of the default sections or one (server, clients, memory, persistence,
        stats, replication, cpu, keyspace, ...). Fields that may hold credentials are left out."""
        try:
            raw = await self.conn.client.info(section) if section else await self.conn.client.info()
        except ResponseError as exc:
            if "unknown command" in str(exc).lower() or self.conn.is_memory:
                raise ToolError(f"this Redis has no INFO command ({exc})") from None
            raise
        info, hidden = self.redact(raw)
        out: dict[str, Any] = {}
        used = 0
        for k, v in info.items():
            used += len(k) + len(json.dumps(v, default=str)) + 4
            if used > MAX_RESULT_BYTES:
                break
            out[k] = v
        over = len(out) < len(info)
        note = "too large: ask for one section" if over else None
        return InfoResult(section=section, info=out, hidden=hidden, truncated=over, note=note)

    def redact(self, info: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """INFO without the fields whose name or value could be a credential."""
        out: dict[str, Any] = {}
        hidden: list[str] = []
        for k, v in info.items():
            value = _jsonable(v)
            text = json.dumps(value, default=str)
            if _SECRET_NAME.search(k) or any(s in text for s in self._secrets):
                hidden.append(k)
                continue
            out[k] = value
        return out, hidden

    async def redis_ping(self) -> PingResult:
        """PING Redis; returns the round-trip time."""
        t0 = time.perf_counter()
        pong = bool(await self.conn.client.ping())
        return PingResult(pong=pong, latency_ms=round((time.perf_counter() - t0) * 1000, 3))

    # -- objects

    async def obj_get(self, key: Key, namespace: ObjNamespace = "objects") -> ValueResult:
        """Read an object of RedisObjectStorage. Pickles are unpickled only when signed with this
        server's STREAMMACHINE_SECRET_KEY (unpickling runs code); msgpack values are safe and
        always returned. Anything else is refused with the reason."""
        from .exceptions import UnsafePickleError

        store = self.objects(namespace)
        missing = object()
        fmt = "pickle"
        try:
            value = await store.retrieve_with_pickle(key, missing)
        except UnsafePickleError as refusal:
            try:  # plain data stored with store() is msgpack, which is safe to decode
                value, fmt = await store.retrieve(key, missing), "msgpack"
            except StreamMachineError:
                raise ToolError(f"refused: {refusal}") from None
        if value is missing:
            return ValueResult(namespace=namespace, key=key, found=False)
        data, cut, note = _bounded_value(value)
        return ValueResult(
            namespace=namespace, key=key, found=True, type=_type_name(value), format=fmt,
            value=data, truncated=cut, note=note,
        )  # fmt: skip

    async def obj_list(
        self,
        namespace: ObjNamespace = "objects",
        pattern: Annotated[str, Field(min_length=1, max_length=256)] = "*",
        limit: Annotated[int, Field(ge=1, le=10000)] = 1000,
    ) -> KeysResult:
        """List the object keys of a RedisObjectStorage namespace matching a glob (SCAN)."""
        return self._keys(namespace, await self.objects(namespace).list_keys(pattern), limit)

    async def obj_delete(
        self,
        pattern: Annotated[
            str, Field(min_length=1, max_length=256, description="Glob; '*' = all.")
        ],
        namespace: ObjNamespace = "objects",
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_obj_delete)],
    ) -> DeleteResult:
        """Delete the objects of ONE RedisObjectStorage namespace whose keys match a glob; never
        touches keys outside that namespace ('*' empties the namespace only). Needs confirmation:
        the user is asked when the client supports it; otherwise pass confirm: true."""
        how = _confirmed_by(confirmation, "obj_delete")
        deleted = await self.objects(namespace).delete_keys(pattern)
        return DeleteResult(namespace=namespace, deleted=deleted, confirmed_by=how)

    # -- OHLC (aggregators live in this server process)

    def agg(self, name: str) -> Any:
        found = self.aggregators.get(name)
        if found is None:
            known = ", ".join(sorted(self.aggregators)) or "none yet"
            raise ToolError(
                f"argument 'name': no OHLC aggregator {name!r} (known: {known}); ohlc_create it"
            )
        return found

    def lock(self) -> anyio.Lock:
        if self._ohlc_lock is None:
            self._ohlc_lock = anyio.Lock()
        return self._ohlc_lock

    def _info(self, name: str, agg: Any, created: bool = False) -> AggregatorInfo:
        from .ohlc import interval_name

        return AggregatorInfo(
            name=name, intervals_ms=list(agg.intervals),
            intervals=[interval_name(i) for i in agg.intervals], grace_ms=agg.grace_ms,
            symbols=len(agg.symbols()), tick_count=agg.tick_count, created=created,
        )  # fmt: skip

    async def ohlc_create(
        self,
        name: AggName,
        intervals: Annotated[Sequence[int | str], Field(min_length=1, max_length=10)] = (
            60000,
            300000,
        ),
        grace_ms: Annotated[int, Field(ge=0)] = 0,
    ) -> AggregatorInfo:
        """Create an in-memory OHLC candle aggregator (FastOHLC) with intervals in ms or names
        ('1m', '5m'). Calling it again with the same settings keeps the existing one."""
        from .ohlc import FastOHLC, parse_interval

        found = self.aggregators.get(name)
        if found is not None:
            wanted = [parse_interval(i) for i in intervals]
            if list(found.intervals) != wanted or found.grace_ms != grace_ms:
                raise ToolError(
                    f"argument 'name': aggregator {name!r} exists with intervals "
                    f"{list(found.intervals)} and grace_ms {found.grace_ms}; use another name, "
                    "or ohlc_clear it with drop: true first"
                )
            return self._info(name, found)
        if len(self.aggregators) >= MAX_AGGREGATORS:
            raise ToolError(f"there are already {MAX_AGGREGATORS} aggregators; ohlc_clear some")
        agg = self.aggregators[name] = FastOHLC(intervals=intervals, grace_ms=grace_ms)
        return self._info(name, agg, created=True)

    async def ohlc_update(
        self,
        name: AggName,
        symbol: Symbol,
        price: Annotated[float, Field(allow_inf_nan=False)],
        volume: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        timestamp_ms: Annotated[int | None, Field(ge=0, description="Default: now.")] = None,
    ) -> TickResult:
        """Add one trade (tick) to an aggregator; its candles use the tick's time (event time)."""
        agg = self.agg(name)
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        async with self.lock():
            agg.update_tick(symbol, price, volume, ts)
            return TickResult(
                name=name, symbol=symbol, tick_count=agg.tick_count, watermark_ms=agg.watermark_ms
            )

    def _candles(
        self, name: str, symbol: str, interval: int | str, rows: list[Any]
    ) -> CandlesResult:
        from .ohlc import interval_name, parse_interval

        ms = parse_interval(interval)
        candles = [_candle(c) for c in rows]
        shown, over = _fit(candles[-1000:][::-1])  # the newest fit, shown oldest first
        shown.reverse()
        over = over or len(candles) > 1000
        note = f"showing the newest {len(shown)} of {len(candles)} candles" if over else None
        return CandlesResult(
            name=name, symbol=symbol, interval_ms=ms, interval=interval_name(ms),
            candles=shown, truncated=over, note=note,
        )  # fmt: skip

    async def ohlc_get_candles(
        self, name: AggName, symbol: Symbol, interval_ms: Interval = 60000
    ) -> CandlesResult:
        """Every candle held for a symbol and interval, oldest first (open, high, low, close,
        volume, trade_count, candle_start_ms)."""
        agg = self.agg(name)
        async with self.lock():
            return self._candles(name, symbol, interval_ms, agg.get_candles(symbol, interval_ms))

    async def ohlc_get_completed(
        self, name: AggName, symbol: Symbol, interval_ms: Interval = 60000, now_ms: NowMs = None
    ) -> CandlesResult:
        """The completed candles (ready to emit) of a symbol and interval: those whose end (plus
        grace_ms) the watermark, or now_ms when given, has reached."""
        agg = self.agg(name)
        async with self.lock():
            rows = agg.get_completed_candles(symbol, interval_ms, now_ms)
            return self._candles(name, symbol, interval_ms, rows)

    async def ohlc_flush(
        self,
        name: AggName,
        symbol: Symbol,
        interval_ms: Interval = 60000,
        now_ms: NowMs = None,
        emit_to: Annotated[
            str | None, Field(min_length=1, description="Also XADD them to this stream.")
        ] = None,
    ) -> CandlesResult:
        """Remove the completed candles of a symbol and interval from memory and return them;
        with emit_to they are first appended to that stream (one entry per candle). A later
        tick for a flushed candle is counted as late and dropped."""
        from .ohlc import format_candle_for_redis, parse_interval

        agg = self.agg(name)
        async with self.lock():
            wm = agg.watermark_ms if now_ms is None else now_ms
            ids: list[str] = []
            if emit_to is not None and wm is not None:
                ms = parse_interval(interval_ms)
                done = agg.get_completed_candles(symbol, ms, wm)
                rows = [format_candle_for_redis(c, symbol, ms) for c in done]
                ids = await self.conn.pipeline_xadd(emit_to, rows)
            flushed = [] if wm is None else agg.flush_interval(symbol, interval_ms, wm)
            result = self._candles(name, symbol, interval_ms, flushed)
        # The ids of the candles shown (the newest, when the result was cut).
        result.emitted_to, result.ids = emit_to, ids[len(ids) - len(result.candles) :]
        return result

    async def ohlc_clear(
        self,
        name: AggName,
        drop: Annotated[bool, Field(description="Also remove the aggregator itself.")] = False,
        confirm: Confirm = False,
        *,
        confirmation: Annotated[Confirmed, Resolve(_ask_ohlc_clear)],
    ) -> ClearResult:
        """Forget every candle, symbol and counter of an aggregator (drop: also remove it). Needs
        confirmation: the user is asked when the client supports it; else pass confirm: true."""
        agg = self.agg(name)
        how = _confirmed_by(confirmation, "ohlc_clear")
        async with self.lock():
            agg.clear()
            if drop:
                del self.aggregators[name]
        return ClearResult(name=name, removed=drop, confirmed_by=how)

    async def ohlc_stats(self, name: AggName) -> StatsResult:
        """Counters of an aggregator: ticks, late and skipped ticks, symbols, candles held,
        watermark, whether the Numba kernel is active."""
        agg = self.agg(name)
        async with self.lock():
            return StatsResult(name=name, stats=_jsonable(agg.stats()))

    async def ohlc_list(self) -> AggregatorList:
        """The OHLC aggregators of this server with their intervals, symbols and tick counts."""
        async with self.lock():
            return AggregatorList(
                aggregators=[self._info(n, a) for n, a in sorted(self.aggregators.items())]
            )

    # -- instances

    async def app_instances(
        self,
        app: Annotated[str | None, Field(description="Only this app's instances.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> InstancesResult:
        """Running StreamMachine processes (their heartbeat records in Redis): app, host, pid,
        version, heartbeat age, and each agent's stream, group and counters."""
        from .dashboard.registry import list_instances

        found = [i for i in await list_instances(self.conn.client) if app in (None, i.get("app"))]
        out = [self._instance(r) for r in found[:limit]]
        kept, over = _fit(out)
        cut = over or len(found) > limit
        note = f"showing {len(kept)} of {len(found)} instances" if cut else None
        return InstancesResult(instances=kept, truncated=cut, note=note)

    @staticmethod
    def _instance(r: Mapping[str, Any]) -> Instance:
        def num(v: Any) -> float | None:
            return float(v) if isinstance(v, int | float) else None

        agents = []
        for a in list(r.get("agents") or [])[:50]:
            if isinstance(a, Mapping):
                raw_stats = a.get("stats")
                stats: Mapping[str, Any] = raw_stats if isinstance(raw_stats, Mapping) else {}
                keep = ("processed", "failed", "retried", "dead", "skipped")
                agents.append(
                    {k: a.get(k) for k in ("name", "stream", "group", "concurrency")}
                    | {k: stats.get(k) for k in keep}
                )
        pid = r.get("pid")
        return Instance(
            id=_s(r.get("id", "")), app=r.get("app"), host=r.get("host"),
            pid=int(str(pid)) if str(pid).isdigit() else None,
            version=r.get("version"), started_at=num(r.get("started_at")),
            heartbeat_age_s=num(r.get("heartbeat_age_s")), fresh=bool(r.get("fresh")),
            agents=_jsonable(agents), timers=_jsonable(list(r.get("timers") or [])[:50]),
        )  # fmt: skip

    # -- resources

    def config(self) -> str:
        """Settings (Redis password and secret key masked), the relevant environment, the tools."""
        settings = asdict(self.settings)
        settings["redis_url"] = _mask(settings["redis_url"]) if settings["redis_url"] else None
        settings["secret_key"] = "***" if settings["secret_key"] else None
        env = {
            k: ("***" if _SECRET_NAME.search(k) else self.scrub(_mask(v)))
            for k, v in sorted(os.environ.items())
            if k.startswith(("REDIS_", "STREAMMACHINE_"))
        }
        from . import __version__

        return json.dumps(
            {
                "version": __version__,
                "redis_url": self.masked_url,
                "read_only": self.read_only,
                "settings": settings,
                "environment": env,
                "tools": [n for n, hints in TOOLS.items() if hints[1] or not self.read_only],
                "limits": {
                    "max_result_bytes": MAX_RESULT_BYTES,
                    "max_value_chars": MAX_VALUE_CHARS,
                    "call_timeout_s": self.timeout_s,
                },
            },
            indent=2,
        )

    async def status(self) -> str:
        """Redis health and version, stream count, app instances, storage and OHLC state."""
        from . import __version__

        out: dict[str, Any] = {"server": {"version": __version__, "read_only": self.read_only}}
        c = self.conn.client
        try:
            with anyio.fail_after(self.timeout_s):
                info = await sm_inspect.server_info(c)
                out["redis"] = {"healthy": True, "url": self.masked_url, **info}
                n = 0
                async for _ in c.scan_iter(count=1000, _type="stream"):
                    n += 1
                    if n >= 10000:
                        break
                out["streams"] = {"count": n, "capped": n >= 10000}
                instances = await sm_inspect.list_instances(c, limit=100)
                out["instances"] = [
                    {k: i[k] for k in ("key", "app", "host", "pid", "age_s")} for i in instances
                ]
                store = self.storage(None)
                out["storage"] = {"namespace": store.namespace, "keys": len(await store.keys())}
        except Exception as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else None
            out["redis"] = {
                "healthy": False,
                "url": self.masked_url,
                "error": reason or self.scrub(self.explain("status", exc)),
            }
        out["ohlc_aggregators"] = sorted(self.aggregators)
        return json.dumps(out, indent=2, default=str)


# -- prompts --------------------------------------------------------------------------------------

_GUIDE = """\
# StreamMachine

StreamMachine runs event-driven Python workers on Redis Streams. An app is a module:

```python
from streammachine import App, Message

app = App(name="orders")


@app.agent("orders", group="billing", concurrency=2)
async def bill(record: Message) -> None:
    order = record.message  # dict[str, str]: every field arrives as text
    await app.send("invoices", {"item": order["item"], "total": 3.5 * int(order["qty"])})


@app.timer(5)
async def heartbeat() -> None:
    await app.storage.incr("beats")  # atomic, shared by every process and host
```

Run it with `streammachine run orders:app` (`--workers N`, `--reload`); more hosts running the
same app join the same consumer groups and share the work.

## Semantics worth knowing
- Delivery is at-least-once: XREADGROUP, handler, XACK. A handler that raises leaves the entry
  pending; it is retried with backoff and after `max_deliveries` (default 5) moves to the
  dead-letter stream `<stream>:dead` with the error. `raise Retry(delay_s)` retries later,
  `raise Skip` acks without processing.
- A new group starts at the beginning of the stream (`start="latest"` for new entries only).
- Inside a handler, `app.send` is buffered and committed atomically with the ack of the message
  that produced it (exactly-once stream-to-stream on one Redis node); `now=True` writes at once.
- Fields are str to str: str/bytes/int/float/bool are written as text, other values as JSON.
  `@app.agent(..., schema=MyStruct)` decodes and validates messages into `record.value`.
- `app.storage` is shared state in Redis (`read`, `write`, `delete`, `keys`, `incr`, `update`).
  Never read-then-write a counter: use `incr` or `update`.
- `RedisObjectStorage` stores pickles signed with `STREAMMACHINE_SECRET_KEY`, or plain msgpack.
- `FastOHLC` / `create_ohlc_aggregator` build candles from ticks in event time.

## The tools of this server
- Streams: `stream_list` (pattern), `stream_info` (length, groups, consumers, pending, lag),
  `stream_read` (count, start, end, newest_first; follow `next`), `stream_pending` (who holds
  which unacknowledged entries, idle times), `stream_dead_letters`; `stream_send` and
  `stream_send_batch` append messages.
- Storage: `storage_read`, `storage_keys`, `storage_write`; `storage_delete` and `storage_clear`
  delete (confirmation needed). `namespace` defaults to the server's.
- Objects: `obj_get` (signed pickles and msgpack only), `obj_list`, `obj_delete` (one namespace,
  confirmation needed).
- OHLC (aggregators live in this server process): `ohlc_create`, `ohlc_update`,
  `ohlc_get_candles`, `ohlc_get_completed`, `ohlc_flush` (with `emit_to` to write the candles
  to a stream), `ohlc_stats`, `ohlc_list`, `ohlc_clear` (confirmation needed).
- Redis and apps: `health_check`, `redis_ping`, `redis_info` (section), `app_instances`.
- Resources: `streammachine://config` (settings, secrets masked), `streammachine://status`.

## Working safely
{mode}
- Results are bounded; a cut result says so in `note`. Read long streams page by page.
- Errors (unreachable Redis, a key of another type, a bad argument) come back as error results
  that say what to fix; report them, do not guess a result.

## A good first look
1. `health_check`, then `stream_list` with pattern `*`.
2. `stream_info` on a stream of interest: groups with `pending` > 0 or a large `lag` are behind.
3. `stream_pending` and `stream_dead_letters` for stuck or failing messages.
4. `stream_read` with `newest_first: true` and a small `count` to see recent messages.
"""

_PATTERNS: dict[str, tuple[str, str]] = {
    "producer-consumer": (
        "Task queue: a timer (or any code) produces, a consumer group shares the work.",
        """\
from streammachine import App, Message

app = App(name="tasks")


@app.timer(1)
async def produce() -> None:
    await app.send("work_queue", {"task_id": "123", "status": "pending"})


@app.agent("work_queue", group="workers", concurrency=4)
async def work(record: Message) -> None:
    task = record.message
    await app.send("results", {"task_id": task["task_id"], "status": "done"})
""",
    ),
    "pipeline": (
        "Multi-stage transformation: each stage reads one stream and writes the next; each"
        " output is committed atomically with the input's ack.",
        """\
from streammachine import App, Message

app = App(name="pipeline")


@app.agent("stage1", group="s1")
async def stage1(record: Message) -> None:
    await app.send("stage2", {"value": int(record.message["value"]) * 2})


@app.agent("stage2", group="s2")
async def stage2(record: Message) -> None:
    print("result", record.message["value"])
""",
    ),
    "fan-out": (
        "Several independent consumers need every message: one consumer group each.",
        """\
from streammachine import App, Message

app = App(name="fanout")


@app.agent("events", group="analytics")
async def analytics(record: Message) -> None:
    print("analytics", record.message)


@app.agent("events", group="audit")
async def audit(record: Message) -> None:
    print("audit", record.message)
""",
    ),
    "time-series": (
        "Rolling-window analytics: take whole batches, keep the last minutes in a DataFrame.",
        """\
from streammachine import App, Message, TimeSeriesBuffer, streams_to_dataframe_fast

app = App(name="timeseries")
buffer = TimeSeriesBuffer(max_age_seconds=300)


@app.agent("ticks", group="analytics", batch=True)
async def analyze(records: list[Message]) -> None:
    batch = [("ticks", [r.data for r in records])]  # XREAD-shaped, one row per entry
    df = streams_to_dataframe_fast(batch, dtypes={"value": "float64"})
    buffer.append(df)
    recent = buffer.get()
    print("rolling mean", recent["value"].mean())
""",
    ),
    "stateful": (
        "State across messages and processes: shared Storage with atomic updates.",
        """\
from streammachine import App, Message

app = App(name="stateful")


@app.agent("orders", group="counters")
async def count(record: Message) -> None:
    await app.storage.incr("orders_seen")  # atomic: never read-then-write a counter
    await app.storage.update("items", lambda s: sorted({*s, record.message["item"]}), default=[])
""",
    ),
    "retries": (
        "Failures: retry later, skip, dead letters, and side effects that must not repeat.",
        """\
from streammachine import App, Message, Retry, Skip

app = App(name="payments")


@app.agent("payments", group="charger", max_deliveries=5, retry_backoff_ms=1000)
async def charge(record: Message) -> None:
    payment = record.message
    if payment.get("amount") is None:
        raise Skip  # ack without processing
    if payment.get("gateway") == "busy":
        raise Retry(5.0)  # deliver again in 5 s
    if await app.once(f"charge:{record.key}", ttl_s=86400):  # at-least-once: guard side effects
        print("charging", payment)
    # any other exception: retried with backoff, then moved to payments:dead
""",
    ),
    "ohlc": (
        "Market data: aggregate ticks into candles in event time and emit completed ones.",
        """\
from streammachine import (
    App,
    Message,
    create_ohlc_aggregator,
    format_candle_for_redis,
    parse_stream_id_timestamp,
)

app = App(name="candles")
agg = create_ohlc_aggregator(intervals=[60000, 300000])


@app.agent("ticks", group="ohlc", batch=True)
async def ticks(records: list[Message]) -> None:
    for r in records:
        m = r.message
        ts_ms = parse_stream_id_timestamp(r.key)  # event time: the entry id's time
        agg.update_tick(m["symbol"], float(m["price"]), float(m.get("volume", 0)), ts_ms)


@app.timer(5)
async def emit() -> None:
    for symbol, interval_ms, candle in agg.flush_completed():
        fields = format_candle_for_redis(candle, symbol, interval_ms)
        await app.send(f"candles_{interval_ms // 60000}m", fields)
""",
    ),
}


def _register_prompts(server: MCPServer[Any], read_only: bool) -> None:
    mode = (
        "- This server is read-only: you can inspect everything and change nothing."
        if read_only
        else "- `storage_delete`, `storage_clear`, `obj_delete` and `ohlc_clear` delete data. The "
        "client asks the user when it can; otherwise ask the user yourself and pass "
        "`confirm: true` only after they agreed."
    )
    guide = _GUIDE.replace("{mode}", mode)

    @server.prompt(
        name="streammachine-guide",
        title="StreamMachine guide",
        description="How StreamMachine works, what each tool of this server does, how to start.",
    )
    def streammachine_guide(task: str = "") -> str:
        goal = f"\n\n## The user's task\n{task}\nPlan the tool calls for it." if task else ""
        return guide + goal

    names = ", ".join(_PATTERNS)

    @server.prompt(
        name="stream-processing-patterns",
        title="Stream processing patterns",
        description=f"Common StreamMachine patterns with working code: {names}.",
    )
    def stream_processing_patterns(pattern: str = "") -> str:
        if pattern and pattern not in _PATTERNS:
            raise MCPError(INVALID_PARAMS, f"argument 'pattern': {pattern!r} is not one of {names}")
        chosen = [pattern] if pattern else list(_PATTERNS)
        parts = ["# Stream processing patterns with StreamMachine\n"]
        for name in chosen:
            what, code = _PATTERNS[name]
            parts.append(f"## {name}\n{what}\n\n```python\n{code}```\n")
        parts.append(
            "Run any of them with `streammachine run module:app`; watch them with the "
            "`stream_info`, `stream_pending` and `stream_dead_letters` tools."
        )
        return "\n".join(parts)


def create_server(
    url: str | None = None,
    *,
    read_only: bool = False,
    settings: Settings | None = None,
    timeout_s: float = CALL_TIMEOUT_S,
) -> MCPServer[Any]:
    """An MCP server with StreamMachine's tools, resources and prompts, for one Redis.

    Args:
        url: the Redis URL (default: `REDIS_URL`, else `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`).
        read_only: register only the read-only tools.
        settings: the settings to use (default: `Settings.from_env()`).
        timeout_s: the time limit of one tool call.

    Raises:
        ConfigError: the URL is not a Redis URL.

    Example:
        >>> server = create_server("memory://", read_only=True)
        >>> server.name
        'streammachine'
    """
    from . import __version__

    settings = settings or Settings.from_env()
    url = validate_url(url or settings.resolve_url())
    if timeout_s <= 0:
        raise ConfigError(f"timeout_s must be > 0, not {timeout_s!r}")
    tools = _Tools(url, settings, read_only, timeout_s)
    # MCPServer() calls logging.basicConfig(); a library must not configure logging, so while it
    # runs the root logger has a handler and that call does nothing.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    try:
        server: MCPServer[Any] = MCPServer(
            "streammachine",
            title="StreamMachine",
            version=__version__,
            instructions=_instructions(read_only),
            lifespan=tools.lifespan,
        )
    finally:
        root.removeHandler(placeholder)
    for name, (title, ro, destructive, idempotent) in TOOLS.items():
        if read_only and not ro:
            continue
        hints = ToolAnnotations(
            title=title,
            read_only_hint=ro,
            destructive_hint=destructive,
            idempotent_hint=idempotent,
            open_world_hint=False,
        )
        method = getattr(tools, name)
        server.add_tool(
            tools.guard(name, method),
            name=name,
            title=title,
            description=" ".join((method.__doc__ or "").split()),
            annotations=hints,
            structured_output=True,
        )
    server.resource(
        "streammachine://config", name="config", title="StreamMachine configuration",
        description="Settings and environment (secrets masked), tools and limits.",
        mime_type="application/json",
    )(tools.config)  # fmt: skip
    server.resource(
        "streammachine://status", name="status", title="StreamMachine status",
        description="Redis health and version, streams, app instances, storage, OHLC.",
        mime_type="application/json",
    )(tools.status)  # fmt: skip
    _register_prompts(server, read_only)
    server.middleware.append(_tidy_errors)
    return server


def _instructions(read_only: bool) -> str:
    mode = (
        "This server is read-only: it lists, reads and inspects, and changes nothing."
        if read_only
        else "Tools that delete data need the user's confirmation (asked by the client, or "
        "confirm: true after you asked the user yourself)."
    )
    return (
        "StreamMachine runs Python workers on Redis Streams. Use these tools to inspect and drive "
        "its streams, consumer groups, dead letters, shared Storage, stored objects and OHLC "
        f"candle aggregators. {mode} Results are bounded; a cut result says so in `note`, and "
        "stream_read gives a `next` id to continue. Start with health_check and stream_list; "
        "the streammachine-guide prompt explains the API."
    )


async def serve(
    server: MCPServer[Any],
    transport: Literal["stdio", "http"] = "stdio",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
) -> None:
    """Serve `server` over stdio (protocol only on stdout) or streamable HTTP at `/mcp`.

    Example:
        >>> anyio.run(serve, create_server())  # doctest: +SKIP
    """
    if transport == "stdio":
        await server.run_stdio_async()
    elif transport == "http":
        import uvicorn

        # log_config=None: uvicorn logs through the logging the caller set up (the CLI: stderr).
        app = server.streamable_http_app(host=host)
        await uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None)).serve()
    else:
        raise ConfigError(f"transport must be 'stdio' or 'http', not {transport!r}")


if __name__ == "__main__":
    from .cli import mcp_main

    mcp_main()
