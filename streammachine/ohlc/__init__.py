"""OHLC candles for market data: a Numba kernel over NumPy arrays, with a pure-Python twin.

Importing this package compiles nothing and does not import Numba; the kernel compiles (or loads
from its on-disk cache) on first use. `_HAS_FAST_OHLC_CYTHON` is true when the compiled path is
active (the name is kept from the reference, which used Cython).

Example:
    >>> from streammachine.ohlc import create_ohlc_aggregator
    >>> agg = create_ohlc_aggregator(intervals=[60000])
    >>> agg.update_tick("AAPL", 150.0, 10.0, 1638360000000)
    >>> agg.get_candles("AAPL", 60000)[0].open
    150.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .aggregator import (
    Candle,
    FastOHLC,
    create_ohlc_aggregator,
    format_candle_for_redis,
    interval_name,
    parse_interval,
    parse_stream_id_timestamp,
)
from .consumer import FastOHLCConsumer

if TYPE_CHECKING:
    _HAS_FAST_OHLC_CYTHON: bool

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
    # Resolved on access, so that importing the package does not import Numba.
    if name == "_HAS_FAST_OHLC_CYTHON":
        from .kernel import jit_active

        return jit_active()
    raise AttributeError(f"module 'streammachine.ohlc' has no attribute {name!r}")
