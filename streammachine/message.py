"""Message: one entry read from a Redis stream, decoded on first access."""

from __future__ import annotations

import time
from typing import Any

from .codec import as_text, decode_dict_bytes_to_utf8, decode_fields, parse_entry_id

__all__ = ["Message", "messages_from_reply", "stream_entries"]

_UNSET: Any = object()


class Message:
    """A message received from a Redis stream.

    Attributes:
        topic: the stream it came from.
        key: its entry id, e.g. ``"1700000000000-0"``.
        received: when the consumer read it (epoch seconds).
        consumer_id: the consumer that read it.
        value: the decoded Struct when the agent declared ``schema=``, else None.
        deliveries: how many times this entry has been delivered, 1 the first time (from the
            group's pending entries list; retries and dead-lettering use the same count).

    Example:
        >>> m = Message(topic="orders", key="1700000000000-0", data=("1700000000000-0", {b"a": b"1"}))
        >>> m.message
        {'a': '1'}
    """

    __slots__ = (
        "_fields",
        "_message",
        "_sent",
        "consumer_id",
        "deliveries",
        "key",
        "received",
        "topic",
        "value",
    )

    def __init__(
        self,
        topic: str | None = None,
        key: str | None = None,
        sent: float | None = None,
        received: float | None = None,
        consumer_id: str | None = None,
        data: tuple[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.key = key if key is not None or data is None else str(data[0])
        self._sent = _UNSET if sent is None else sent
        self.received = received
        self.consumer_id = consumer_id
        self._fields: Any = data[1] if data is not None else {}
        self._message: dict[str, str] | None = None
        self.value: Any = None
        self.deliveries = 1

    @classmethod
    def _from_entry(
        cls,
        topic: str,
        key: str,
        fields: Any,
        received: float,
        consumer: str | None,
        deliveries: int = 1,
    ) -> Message:
        # The hot path: no __init__ call, nothing decoded until asked for.
        m = cls.__new__(cls)
        m.topic = topic
        m.key = key
        m._sent = _UNSET
        m.received = received
        m.consumer_id = consumer
        m._fields = fields
        m._message = None
        m.value = None
        m.deliveries = deliveries
        return m

    @property
    def message(self) -> dict[str, str]:
        """The fields as a str→str dict (bytes decoded as UTF-8, bad bytes replaced)."""
        msg = self._message
        if msg is None:
            f = self._fields
            if f is None:
                msg = {}
            elif isinstance(f, dict):
                msg = decode_dict_bytes_to_utf8(f)
            else:
                msg = decode_fields(f)
            self._message = msg
        return msg

    @property
    def raw(self) -> tuple[str, Any]:
        """The entry as read, without conversion: (id, fields) with fields a flat
        [k1, v1, k2, v2, …] list of bytes (or a dict), for fast paths such as
        `FastOHLC.process_stream_batch([(stream, [m.raw for m in batch])])`."""
        return (self.key or "", self._fields if self._fields is not None else [])

    @property
    def data(self) -> tuple[str, dict[Any, Any]]:
        """The raw entry: (id, fields as read from Redis)."""
        f = self._fields
        if f is None:
            f = {}
        elif not isinstance(f, dict):
            it = iter(f)
            f = dict(zip(it, it, strict=False))
            self._fields = f
        return (self.key or "", f)

    @property
    def sent(self) -> float | None:
        """When it was sent (epoch seconds): its `sent` field when it has one, else its id's time."""
        s = self._sent
        if s is _UNSET:
            s = None
            raw = self.message.get("sent")
            if raw is not None:
                try:
                    s = float(raw)
                    if s > 1e11:  # milliseconds
                        s /= 1000.0
                except ValueError:
                    s = None
            if s is None and self.key:
                try:
                    s = parse_entry_id(self.key)[0] / 1000.0
                except ValueError:
                    s = None
            self._sent = s
        return s

    @property
    def timer(self) -> str:
        """Latency from send to receipt as ``"topic: task X.XX ms"`` (to now when `received` is
        unset); ``""`` when `sent` is unknown.

        Example:
            >>> Message(topic="test", sent=100.0, received=100.5).timer
            'test: task 500.00 ms'
        """
        sent = self.sent
        if sent is None:
            return ""
        received = self.received if self.received is not None else time.time()
        return f"{self.topic}: task {(received - sent) * 1000:.2f} ms"

    def __repr__(self) -> str:
        return f"Message(topic={self.topic!r}, key={self.key!r}, message={self.message!r})"


def stream_entries(reply: Any) -> list[tuple[Any, Any]]:
    """An XREAD/XREADGROUP reply as `[(stream, entries), ...]`, whatever its shape: RESP2's list
    of pairs, or RESP3's map (which redis-py may wrap in one more list per stream). The one
    place that tells the two apart.

    Example:
        >>> stream_entries({b"s": [[[b"1-0", [b"a", b"1"]]]]})
        [(b's', [[b'1-0', [b'a', b'1']]])]
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        out = []
        for stream, entries in reply.items():
            if (
                isinstance(entries, list)
                and len(entries) == 1
                and isinstance(entries[0], list)
                and entries[0]
                and isinstance(entries[0][0], list)
            ):
                entries = entries[0]
            out.append((stream, entries))
        return out
    return [(stream, entries) for stream, entries in reply]


def messages_from_reply(reply: Any, consumer: str | None) -> list[Message]:
    """Messages from an XREAD/XREADGROUP reply (RESP2 or RESP3, raw or parsed by redis-py)."""
    now = time.time()
    out: list[Message] = []
    add = out.append
    new = object.__new__
    for stream, entries in stream_entries(reply):
        topic = as_text(stream)
        for entry_id, fields in entries:
            # `_from_entry` inlined: this runs once per message read.
            m = new(Message)
            m.topic = topic
            m.key = entry_id.decode() if type(entry_id) is bytes else entry_id
            m._sent = _UNSET
            m.received = now
            m.consumer_id = consumer
            m._fields = fields
            m._message = None
            m.value = None
            m.deliveries = 1
            add(m)
    return out
