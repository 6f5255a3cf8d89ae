"""The texts of the MCP server: its instructions, the `streammachine-guide` prompt and the
`stream-processing-patterns` prompt (working code for common patterns), without the `mcp` SDK.

Example:
    >>> "stream_read" in guide(read_only=True)
    True
    >>> patterns("fan-out").count("```python")
    1
"""

from __future__ import annotations

from ..exceptions import ConfigError

__all__ = ["GUIDE", "PATTERNS", "guide", "instructions", "patterns"]

GUIDE = """\
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
- `app.table(name)` is keyed state changed inside handlers exactly-once with the stream;
  `app.window(...)` aggregates event-time windows (tumbling, hopping, sliding, session).
- `FastOHLC` / `create_ohlc_aggregator` build candles from ticks in event time.

## The tools of this server
- Streams: `stream_list` (pattern), `stream_info` (length, groups, consumers, pending, lag),
  `stream_read` (count, start, end, newest_first; follow `next`), `stream_pending` (who holds
  which unacknowledged entries, idle times), `stream_dead_letters`; `stream_send` and
  `stream_send_batch` append messages.
- Storage: `storage_read`, `storage_keys`, `storage_write`; `storage_delete` and `storage_clear`
  delete (confirmation needed). `namespace` defaults to the server's.
- Tables and windows (state committed with the stream): `table_list`, `table_get` (keys of a
  table, decoded); `windows_list` (each window agent: open windows, watermark and its lag, late
  entries sent to `<stream>:late`).
- Objects: `obj_get` (signed pickles and msgpack only), `obj_list`, `obj_delete` (one namespace,
  confirmation needed).
- OHLC (aggregators live in this server process): `ohlc_create`, `ohlc_update`,
  `ohlc_get_candles`, `ohlc_get_completed`, `ohlc_flush` (with `emit_to` to write the candles
  to a stream), `ohlc_stats`, `ohlc_list`, `ohlc_clear` (confirmation needed).
- Redis and apps: `health_check`, `redis_ping`, `redis_info` (section), `app_instances`.
- Operating (each action is written to the audit trail, `audit_log`): `agents_list`,
  `agent_pause` and `agent_resume` (an agent in every process and host of its app);
  `dead_show` (one dead letter decoded and raw), `dead_retry` (ids or a filter, `dry_run`),
  `dead_edit_retry` and `dead_purge` (confirmation needed); `pending_dead_letter` and
  `pending_hand_back` (take pending entries from their consumer; confirmation needed);
  `group_rewind` (to an id or a time; `dry_run` says how many entries are handled again,
  confirmation needed); `scheduled_list`, `scheduled_promote` (deliver now) and
  `scheduled_cancel` (confirmation needed); `stream_inspect` (browse a stream decoded, filtered
  by field, by id or time).
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

PATTERNS: dict[str, tuple[str, str]] = {
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


def guide(read_only: bool, task: str = "") -> str:
    """The guide to StreamMachine and this server's tools, with the user's `task` when given.

    Example:
        >>> guide(read_only=False, task="find stuck orders").endswith("Plan the tool calls for it.")
        True
    """
    mode = (
        "- This server is read-only: you can inspect everything and change nothing."
        if read_only
        else "- `storage_delete`, `storage_clear`, `obj_delete`, `ohlc_clear` and the operator "
        "tools that delete or take away entries need a confirmation. The client asks the user "
        "when it can; otherwise ask the user yourself and pass `confirm: true` only after they "
        "agreed. A `dry_run` needs none: use it first."
    )
    goal = f"\n\n## The user's task\n{task}\nPlan the tool calls for it." if task else ""
    return GUIDE.replace("{mode}", mode) + goal


def patterns(pattern: str = "") -> str:
    """One pattern of `PATTERNS` with its code, or all of them when `pattern` is empty.

    Raises:
        ValueError: `pattern` is not one of `PATTERNS`.

    Example:
        >>> patterns("retries").startswith("# Stream processing patterns")
        True
    """
    if pattern and pattern not in PATTERNS:
        names = ", ".join(PATTERNS)
        raise ConfigError(f"argument 'pattern': {pattern!r} is not one of {names}")
    chosen = [pattern] if pattern else list(PATTERNS)
    parts = ["# Stream processing patterns with StreamMachine\n"]
    for name in chosen:
        what, code = PATTERNS[name]
        parts.append(f"## {name}\n{what}\n\n```python\n{code}```\n")
    parts.append(
        "Run any of them with `streammachine run module:app`; watch them with the "
        "`stream_info`, `stream_pending` and `stream_dead_letters` tools."
    )
    return "\n".join(parts)


def instructions(read_only: bool) -> str:
    """What the server tells the client about itself when a session starts.

    Example:
        >>> "read-only" in instructions(read_only=True)
        True
    """
    mode = (
        "This server is read-only: it lists, reads and inspects, and changes nothing."
        if read_only
        else "Tools that delete or take away data need the user's confirmation (asked by the "
        "client, or confirm: true after you asked the user yourself); every action is audited."
    )
    return (
        "StreamMachine runs Python workers on Redis Streams. Use these tools to inspect and drive "
        "its streams, consumer groups, dead letters, shared Storage, stored objects and OHLC "
        f"candle aggregators. {mode} Results are bounded; a cut result says so in `note`, and "
        "stream_read gives a `next` id to continue. Start with health_check and stream_list; "
        "the streammachine-guide prompt explains the API."
    )
