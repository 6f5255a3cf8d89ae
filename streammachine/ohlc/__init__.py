"""OHLC candles for market data: a Numba kernel over NumPy arrays, with a pure-Python twin.

A candle is a tumbling window of the event-time window engine (`state/windows.py`: its window
start, watermark and closing are the engine's functions) with the aggregates first/max/min/last
of the price, sum of the volume and count; the kernel is their batch path.

`candle` (the Candle tuple, interval names, candle fields for XADD), `pykernel` (the kernel's
loops as plain Python), `kernel` (those loops compiled by Numba, or not), `store` (the candle
arrays of one aggregator), `symbols` (symbol codes), `ticks` (ticks from stream entries),
`aggregator` (`FastOHLC`) with `output` (its reads, flushes and counters) and `snapshot` (its
state as bytes), and `consumer` (`FastOHLCConsumer`: candles from a stream, exactly once).

Every name below loads on first use: importing this package imports no NumPy and no Numba, and
compiles nothing; the kernel compiles (or loads from its on-disk cache) on first use.
`_HAS_FAST_OHLC_CYTHON` is true when the compiled path is the default (the name is kept from the
reference, which used Cython).

Example:
    >>> from streammachine.ohlc import create_ohlc_aggregator
    >>> agg = create_ohlc_aggregator(intervals=[60000])
    >>> agg.update_tick("AAPL", 150.0, 10.0, 1638360000000)
    >>> agg.get_candles("AAPL", 60000)[0].open
    150.0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aggregator import FastOHLC, create_ohlc_aggregator
    from .candle import (
        Candle,
        format_candle_for_redis,
        interval_name,
        parse_interval,
        parse_stream_id_timestamp,
    )
    from .consumer import FastOHLCConsumer

    _HAS_FAST_OHLC_CYTHON: bool

_LAZY = {
    "Candle": ".candle",
    "FastOHLC": ".aggregator",
    "FastOHLCConsumer": ".consumer",
    "create_ohlc_aggregator": ".aggregator",
    "format_candle_for_redis": ".candle",
    "interval_name": ".candle",
    "parse_interval": ".candle",
    "parse_stream_id_timestamp": ".candle",
}

__all__ = [
    "_HAS_FAST_OHLC_CYTHON",
    "Candle",
    "FastOHLC",
    "FastOHLCConsumer",
    "create_ohlc_aggregator",
    "format_candle_for_redis",
    "interval_name",
    "parse_interval",
    "parse_stream_id_timestamp",
]


def __getattr__(name: str) -> Any:
    if name == "_HAS_FAST_OHLC_CYTHON":
        # Resolved on every access (not cached): it follows the process's settings.
        from .kernel import jit_active

        return jit_active()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streammachine.ohlc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
