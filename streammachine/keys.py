"""Every Redis key name and suffix StreamMachine uses, in one place (as arq's `constants.py`).

Keys that must share a Redis Cluster slot with something carry a hash tag: a stream's bookkeeping
(fences, partition leases) takes the stream's own slot (`slot_tag`), a scope's keys (an app's
leases and crons, a namespace's schedule and storage) share the scope's.

| key | what |
| --- | --- |
| `<stream>:dead` | dead letters of `<stream>` |
| `<stream>:p<i>` | partition i of a partitioned stream |
| `<stream>:late` | entries that reached a window after it closed |
| `streammachine:instances:<host>-<pid>-<rand>` | an instance heartbeat (JSON, TTL) |
| `streammachine:processes` | live processes (`<host>-<pid>-`), scored by expiry |
| `streammachine:fence:{<tag>}:<stream>:<group>` | per consumer, how often entries were taken away |
| `streammachine:partitions:{<tag>}:<group>:members` / `…:lease:<i>` | partition ownership |
| `streammachine:exclusive:{<tag>}:<stream>:<group>:members` / `…:lease` | an exclusive agent's owner |
| `streammachine:lease:{<app>}:timers` | the process that runs an app's timers |
| `streammachine:cron:{<app>}:<cron>` | the newest claimed fire time of a cron |
| `streammachine:sched:{<ns>}` (`:inflight`, `:failed`) | delayed entries of a namespace |
| `streammachine:rate:{<name>}` | a rate limit (GCRA) |
| `streammachine:storage:{<ns>}` (`:ttl:<key>`) | shared state of a namespace |
| `streammachine:table:{<tag>}:<name>` (`:ttl:<key>`) | a table (or its shard in a partition's slot) |
| `streammachine:obj:<ns>:<key>` | a signed pickle |
| `streammachine:once:<key>` | an `App.once` guard |
| `streammachine:idem:{<tag>}:<stream>:<producer>:<id>` | an idempotent write's entry id |
| `streammachine:progress:{<tag>}:<stream>:<file>` | the lines of a file `send --file` wrote |
| `streammachine:ohlc:{<tag>}:<stream>:<group>:state` | an OHLC consumer's snapshot (its owner: `exclusive`) |
| `<prefix>:state:<group>` | the same, as earlier versions wrote it (read once on upgrade) |
| `streammachine:win:{<tag>}:<stream>:<group>:<name>` | a window agent's open windows on `<stream>` |
| `streammachine:paused:{<app>}` | an app's paused agents |
| `streammachine:audit` | operator actions |
"""

from __future__ import annotations

__all__ = [
    "AUDIT",
    "DEAD_SUFFIX",
    "INSTANCES",
    "LATE_SUFFIX",
    "PAUSED_MATCH",
    "PREFIX",
    "PROCESSES",
    "SCHEDULED_MATCH",
    "TABLES_MATCH",
    "WINDOW_MATCH",
    "cron",
    "dead_letters",
    "exclusive_lease",
    "exclusive_members",
    "fence",
    "idempotency",
    "late",
    "objects",
    "ohlc",
    "ohlc_legacy_state",
    "once",
    "partition",
    "partition_lease",
    "partition_members",
    "paused",
    "progress",
    "rate",
    "scheduled",
    "scope_of",
    "slot_tag",
    "storage",
    "table",
    "table_of",
    "timer_lease",
    "window",
]

PREFIX = "streammachine"
DEAD_SUFFIX = ":dead"
LATE_SUFFIX = ":late"
INSTANCES = f"{PREFIX}:instances:"
PROCESSES = f"{PREFIX}:processes"
AUDIT = f"{PREFIX}:audit"
#: SCAN patterns of the per-scope keys readers list (`scope_of` gives the scope back).
PAUSED_MATCH = f"{PREFIX}:paused:{{*}}"
SCHEDULED_MATCH = f"{PREFIX}:sched:{{*}}"
TABLES_MATCH = f"{PREFIX}:table:{{*}}:*"
WINDOW_MATCH = f"{PREFIX}:win:*"


def slot_tag(key: str) -> str:
    """The hash tag that puts another key in `key`'s cluster slot: `key`'s own tag when it has
    one (`{orders}:in` → `{orders}`), else `{key}`.

    Example:
        >>> slot_tag("orders"), slot_tag("{orders}:in")
        ('{orders}', '{orders}')
    """
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start : end + 1]
    return "{" + key + "}"


def dead_letters(stream: str) -> str:
    """The dead-letter stream of `stream`.

    Example:
        >>> dead_letters("orders")
        'orders:dead'
    """
    return stream + DEAD_SUFFIX


def late(stream: str) -> str:
    """The stream where entries that reached a closed window of `stream` go."""
    return stream + LATE_SUFFIX


def partition(stream: str, index: int) -> str:
    """Partition `index` of `stream`.

    Example:
        >>> partition("ticks", 3)
        'ticks:p3'
    """
    return f"{stream}:p{index}"


def fence(stream: str, group: str) -> str:
    """The hash of fence counters of `group` on `stream` (one field per consumer), in the stream's
    slot so a claim and a commit check it in the same script as the stream.

    Example:
        >>> fence("orders", "billing")
        'streammachine:fence:{orders}:orders:billing'
    """
    return f"{PREFIX}:fence:{slot_tag(stream)}:{stream}:{group}"


def partition_members(stream: str, group: str) -> str:
    """The sorted set of processes sharing the partitions of `stream` in `group`."""
    return f"{PREFIX}:partitions:{slot_tag(stream)}:{stream}:{group}:members"


def partition_lease(stream: str, group: str, index: int) -> str:
    """The lease of partition `index` of `stream` in `group` (its value: the owner's id)."""
    return f"{PREFIX}:partitions:{slot_tag(stream)}:{stream}:{group}:lease:{index}"


def exclusive_members(stream: str, group: str) -> str:
    """The sorted set of processes that may own `stream` in `group` (an exclusive agent)."""
    return f"{PREFIX}:exclusive:{slot_tag(stream)}:{stream}:{group}:members"


def exclusive_lease(stream: str, group: str) -> str:
    """The lease of the one owner of `stream` in `group` (an exclusive agent; its value: the
    owner's id).

    Example:
        >>> exclusive_lease("ticks", "ohlc_workers")
        'streammachine:exclusive:{ticks}:ticks:ohlc_workers:lease'
    """
    return f"{PREFIX}:exclusive:{slot_tag(stream)}:{stream}:{group}:lease"


def timer_lease(app: str) -> str:
    """The lease whose holder runs the `scope="app"` timers of `app`.

    Example:
        >>> timer_lease("orders")
        'streammachine:lease:{orders}:timers'
    """
    return f"{PREFIX}:lease:{{{app}}}:timers"


def cron(app: str, name: str) -> str:
    """The newest claimed fire time of cron `name` of `app`."""
    return f"{PREFIX}:cron:{{{app}}}:{name}"


def scheduled(namespace: str) -> str:
    """The sorted set of the delayed entries of `namespace`.

    Example:
        >>> scheduled("default")
        'streammachine:sched:{default}'
    """
    return f"{PREFIX}:sched:{{{namespace}}}"


def rate(name: str) -> str:
    """The GCRA state of rate limit `name`."""
    return f"{PREFIX}:rate:{{{name}}}"


def storage(namespace: str) -> str:
    """The hash of the shared state of `namespace` (its TTL keys are `<this>:ttl:<key>`)."""
    return f"{PREFIX}:storage:{{{namespace}}}"


def table(name: str, tag: str) -> str:
    """The hash of table `name` kept in the slot of hash tag `tag` (a partition's, a stream's, or
    the table's own); its TTL keys are `<this>:ttl:<key>`.

    Example:
        >>> table("counts", slot_tag("orders:p3"))
        'streammachine:table:{orders:p3}:counts'
    """
    return f"{PREFIX}:table:{tag}:{name}"


def table_of(key: bytes | str) -> str | None:
    """The table name of a table hash (None for its TTL keys and anything else).

    Example:
        >>> table_of("streammachine:table:{orders:p3}:counts"), table_of("orders")
        ('counts', None)
    """
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    head = f"{PREFIX}:table:{{"
    end = text.find("}:", len(head))
    if not text.startswith(head) or end < 0:
        return None
    name = text[end + 2 :]
    return name if name and ":" not in name else None


def objects(namespace: str) -> str:
    """The prefix of the signed pickles of `namespace`."""
    return f"{PREFIX}:obj:{namespace}:"


def once(key: str) -> str:
    """The guard key of `App.once(key)`."""
    return f"{PREFIX}:once:{key}"


def ohlc(stream: str, group: str, what: str) -> str:
    """An OHLC consumer's `state` stream (`what`), in its tick stream's slot.

    Example:
        >>> ohlc("ticks", "ohlc_workers", "state")
        'streammachine:ohlc:{ticks}:ticks:ohlc_workers:state'
    """
    return f"{PREFIX}:ohlc:{slot_tag(stream)}:{stream}:{group}:{what}"


def idempotency(stream: str, producer: str, iid: str) -> str:
    """The marker of an idempotent write to `stream` (in its slot): the entry id it wrote."""
    return f"{PREFIX}:idem:{slot_tag(stream)}:{stream}:{producer}:{iid}"


def progress(stream: str, source: str) -> str:
    """How many lines of file `source` `streammachine send --file` wrote to `stream`."""
    return f"{PREFIX}:progress:{slot_tag(stream)}:{stream}:{source}"


def ohlc_legacy_state(output_prefix: str, group: str) -> str:
    """Where earlier versions kept an OHLC consumer's snapshot (no `streammachine:` prefix); read
    once, when `ohlc(..., "state")` has none, so an upgrade resumes instead of starting over.

    Example:
        >>> ohlc_legacy_state("candles", "ohlc_workers")
        'candles:state:ohlc_workers'
    """
    return f"{output_prefix}:state:{group}"


def window(stream: str, group: str, name: str) -> str:
    """The hash of the open windows of window agent `name` on `stream`, in the stream's slot so
    a batch's commit changes them with its acks.

    Example:
        >>> window("trades", "w", "volume")
        'streammachine:win:{trades}:trades:w:volume'
    """
    return f"{PREFIX}:win:{slot_tag(stream)}:{stream}:{group}:{name}"


def paused(app: str) -> str:
    """The set of the paused agents of `app`."""
    return f"{PREFIX}:paused:{{{app}}}"


def scope_of(key: str) -> str | None:
    """The scope inside a per-scope key's braces (an app, a namespace), None when it has none.

    Example:
        >>> scope_of(paused("orders")), scope_of("orders")
        ('orders', None)
    """
    start, end = key.find("{"), key.rfind("}")
    return key[start + 1 : end] if 0 <= start < end else None
