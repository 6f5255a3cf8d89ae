"""DataFrame helpers, the only room that imports pandas: `dataframe` (stream entries to a frame,
column by column, from `columns`), `buffer` (age pruning and `TimeSeriesBuffer`).

Example:
    >>> from streammachine.frames import streams_to_dataframe
    >>> streams_to_dataframe([["s", [["1-0", {"a": "1"}]]]])["a"].tolist()
    ['1']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .buffer import TimeSeriesBuffer, prune_old_dataframe_rows
    from .dataframe import streams_to_dataframe, streams_to_dataframe_fast

_LAZY = {
    "TimeSeriesBuffer": ".buffer",
    "prune_old_dataframe_rows": ".buffer",
    "streams_to_dataframe": ".dataframe",
    "streams_to_dataframe_fast": ".dataframe",
}

__all__ = [
    "TimeSeriesBuffer",
    "prune_old_dataframe_rows",
    "streams_to_dataframe",
    "streams_to_dataframe_fast",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streammachine.frames' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
