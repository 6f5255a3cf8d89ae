"""Event-time windows: the kinds and aggregates `App.window` takes (docs/windows.md).

`sum`, `min` and `max` here are aggregates (aliases of `sum_`, `min_`, `max_`), so
`from streammachine.windows import sum` shadows the builtin in the importing module; import the
module instead (`from streammachine import windows as w; w.sum("qty")`) to keep both.

Example:
    >>> from streammachine import windows as w
    >>> w.tumbling(60), w.sum("qty")
    (Kind(kind='tumbling', size_ms=60000, step_ms=60000), sum('qty'))
"""

from __future__ import annotations

from .state.aggregates import (
    Aggregate,
    count,
    first,
    last,
    max_,
    mean,
    min_,
    reduce,
    sum_,
)
from .state.windowing import WindowAgent, read_windows
from .state.windows import Engine, Kind, Row, hopping, session, sliding, tumbling

__all__ = [
    "Aggregate",
    "Engine",
    "Kind",
    "Row",
    "WindowAgent",
    "count",
    "first",
    "hopping",
    "last",
    "max",
    "max_",
    "mean",
    "min",
    "min_",
    "read_windows",
    "reduce",
    "session",
    "sliding",
    "sum",
    "sum_",
    "tumbling",
]

sum = sum_  # the aggregate's natural name, as in the docs
min = min_
max = max_
