"""StreamMachine: event-driven Python workers on Redis Streams.

Example:
    >>> from streammachine import App, Message
    >>> app = App(name="orders")
    >>> @app.agent("orders", group="billing")
    ... async def bill(record: Message) -> None: ...

The reference's compatibility names (`StreamConsumer`, `_has_cython_decode`,
`_HAS_FAST_OHLC_CYTHON`) come from `streammachine.compat`, which says why each exists.

Every name loads on first use (module `__getattr__`), so `import streammachine` and the CLI's
`--help` stay cheap, and pandas, numba and the MCP SDK load only where they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    AppImportError,
    ConfigError,
    NotAvailableError,
    RedisUnavailableError,
    Retry,
    SerializationError,
    Skip,
    StreamMachineError,
    UnsafePickleError,
    WrongTypeError,
)

if TYPE_CHECKING:
    from .app import App
    from .codec import decode_dict_bytes_to_utf8
    from .compat import _HAS_FAST_OHLC_CYTHON, StreamConsumer, _has_cython_decode
    from .connection import RedisConnection
    from .consume.agent import Agent
    from .frames import (
        TimeSeriesBuffer,
        prune_old_dataframe_rows,
        streams_to_dataframe,
        streams_to_dataframe_fast,
    )
    from .message import Message
    from .ohlc import (
        FastOHLC,
        FastOHLCConsumer,
        create_ohlc_aggregator,
        format_candle_for_redis,
        parse_stream_id_timestamp,
    )
    from .settings import AppConfig, ConsumerConfig, Settings, TimerConfig
    from .state.objstore import RedisObjectStorage
    from .state.storage import Storage

__version__ = "0.1.0"

_LAZY = {
    "Agent": ".consume.agent",
    "StreamConsumer": ".compat",
    "App": ".app",
    "Message": ".message",
    "RedisConnection": ".connection",
    "AppConfig": ".settings",
    "ConsumerConfig": ".settings",
    "Settings": ".settings",
    "TimerConfig": ".settings",
    "decode_dict_bytes_to_utf8": ".codec",
    "_has_cython_decode": ".compat",
    "Storage": ".state.storage",
    "RedisObjectStorage": ".state.objstore",
    "streams_to_dataframe": ".frames.dataframe",
    "streams_to_dataframe_fast": ".frames.dataframe",
    "prune_old_dataframe_rows": ".frames.buffer",
    "TimeSeriesBuffer": ".frames.buffer",
    "FastOHLC": ".ohlc",
    "FastOHLCConsumer": ".ohlc",
    "create_ohlc_aggregator": ".ohlc",
    "parse_stream_id_timestamp": ".ohlc",
    "format_candle_for_redis": ".ohlc",
    "_HAS_FAST_OHLC_CYTHON": ".compat",
}

__all__ = [
    "_HAS_FAST_OHLC_CYTHON",
    "Agent",
    "App",
    "AppConfig",
    "AppImportError",
    "ConfigError",
    "ConsumerConfig",
    "FastOHLC",
    "FastOHLCConsumer",
    "Message",
    "NotAvailableError",
    "RedisConnection",
    "RedisObjectStorage",
    "RedisUnavailableError",
    "Retry",
    "SerializationError",
    "Settings",
    "Skip",
    "Storage",
    "StreamConsumer",
    "StreamMachineError",
    "TimeSeriesBuffer",
    "TimerConfig",
    "UnsafePickleError",
    "WrongTypeError",
    "__version__",
    "_has_cython_decode",
    "create_ohlc_aggregator",
    "decode_dict_bytes_to_utf8",
    "format_candle_for_redis",
    "parse_stream_id_timestamp",
    "prune_old_dataframe_rows",
    "streams_to_dataframe",
    "streams_to_dataframe_fast",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streammachine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
