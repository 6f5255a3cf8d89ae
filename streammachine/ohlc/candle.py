"""A candle and its names: the `Candle` tuple, interval lengths and their names, stream-id times,
and a candle as XADD fields. The one definition of a candle's fields (the MCP tools use it too),
and of what they are as window aggregates (`candle_aggregates`: a candle is a tumbling window).

Example:
    >>> c = Candle(60000, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 119000)
    >>> format_candle_for_redis(c, "AAPL", parse_interval("1m"))["interval_ms"]
    '60000'
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..exceptions import ConfigError, SerializationError
from ..state.aggregates import Aggregate, Record, count, first, last, max_, min_, sum_

__all__ = [
    "Candle",
    "candle_aggregates",
    "candle_from_row",
    "candle_from_window",
    "format_candle_for_redis",
    "interval_name",
    "parse_interval",
    "parse_stream_id_timestamp",
]


class Candle(NamedTuple):
    """One candle; `timestamp_ms` is the time of its newest tick.

    Example:
        >>> Candle(60000, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 119000).close
        1.5
    """

    candle_start_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    timestamp_ms: int


def candle_from_row(row: tuple[Any, ...]) -> Candle:
    """A Candle from a store row (start, first, last, count, open, high, low, close, volume).

    Example:
        >>> candle_from_row((0, 1, 5, 2, 1.0, 2.0, 1.0, 2.0, 3.0)).timestamp_ms
        5
    """
    start, _first, last, count, o, h, lo, c, v = row
    return Candle(start, o, h, lo, c, v, count, last)


class _NewestTime(Aggregate):
    # The newest event time in the window: a candle's `timestamp_ms`.
    name = "newest_time"

    def init(self, record: Record, t: int) -> Any:
        return t

    def merge(self, a: Any, b: Any) -> Any:
        return b if b > a else a


def candle_aggregates(
    price_field: str = "price", volume_field: str = "volume"
) -> dict[str, Aggregate]:
    """A candle's fields as the window engine's aggregates: open = first, high = max, low = min
    and close = last of the price, volume = sum, trade_count = count, timestamp_ms = the newest
    tick time. `FastOHLC`'s kernel is the batch path of these; `app.window(stream, kind=
    tumbling(60), key="symbol", agg=candle_aggregates())` is the per-entry one.

    Example:
        >>> candle_aggregates()["open"], candle_aggregates("px")["high"]
        (first('price'), max('px'))
    """
    return {
        "open": first(price_field),
        "high": max_(price_field),
        "low": min_(price_field),
        "close": last(price_field),
        "volume": sum_(volume_field),
        "trade_count": count(),
        "timestamp_ms": _NewestTime(),
    }


def candle_from_window(start: int, values: dict[str, Any]) -> Candle:
    """A Candle from a tumbling window's start and its `candle_aggregates` values.

    Example:
        >>> v = {"open": 1, "high": 2, "low": 1, "close": 2, "volume": 3, "trade_count": 2,
        ...      "timestamp_ms": 5}
        >>> candle_from_window(0, v).volume
        3.0
    """
    return Candle(
        int(start), float(values["open"]), float(values["high"]), float(values["low"]),
        float(values["close"]), float(values["volume"]), int(values["trade_count"]),
        int(values["timestamp_ms"]),
    )  # fmt: skip


_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def interval_name(interval_ms: int) -> str:
    """A short name, one per length: the count of the largest unit that divides it.

    Example:
        >>> [interval_name(ms) for ms in (60000, 90000, 3600000, 86400000, 1500)]
        ['1m', '90s', '1h', '1d', '1500ms']
    """
    ms = parse_interval(interval_ms)
    return next(f"{ms // size}{unit}" for unit, size in _UNITS if ms % size == 0)


def parse_interval(interval: int | str) -> int:
    """An interval in ms, from ms or a name: "1500ms", "90s", "1m", "1h", "1d" or "60000".

    Example:
        >>> parse_interval("5m"), parse_interval(60000)
        (300000, 60000)
    """
    ms = 0
    if isinstance(interval, int) and not isinstance(interval, bool):
        ms = interval
    elif isinstance(interval, str):
        text = interval.strip().lower()
        unit = next(
            (u for u, _ in sorted(_UNITS, key=lambda u: -len(u[0])) if text.endswith(u)), ""
        )
        number = text[: len(text) - len(unit)]
        if number.isascii() and number.isdigit():
            ms = int(number) * dict(_UNITS).get(unit, 1)
    if ms <= 0:
        raise ConfigError(
            f"interval {interval!r} is not a positive length; give ms (60000) or a name such as "
            "1500ms, 90s, 1m, 1h, 1d"
        )
    return ms


def parse_stream_id_timestamp(stream_id: str | bytes) -> int:
    """The milliseconds part of a Redis stream id.

    Raises:
        SerializationError: not an id `<ms>-<seq>` or `<ms>` (a ValueError).

    Example:
        >>> parse_stream_id_timestamp("1638360000000-0")
        1638360000000
    """
    text = stream_id.decode("latin-1") if isinstance(stream_id, bytes) else str(stream_id)
    ms, dash, seq = text.partition("-")
    if not all(part.isascii() and part.isdigit() for part in ((ms, seq) if dash else (ms,))):
        raise SerializationError(
            f"{stream_id!r} is not a Redis stream id such as '1638360000000-0'"
        )
    return int(ms)


def format_candle_for_redis(candle: Any, symbol: str | bytes, interval_ms: int) -> dict[str, str]:
    """A candle (a Candle, or a dict of its fields) as str fields for XADD.

    Example:
        >>> c = Candle(60000, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 119000)
        >>> format_candle_for_redis(c, b"AAPL", 60000)["close"]
        '1.5'
    """
    values = candle if isinstance(candle, dict) else candle._asdict()
    name = symbol.decode("utf-8", "replace") if isinstance(symbol, bytes) else str(symbol)
    out = {"symbol": name, "interval_ms": str(int(interval_ms))}
    out.update((field, str(values[field])) for field in Candle._fields)
    return out
