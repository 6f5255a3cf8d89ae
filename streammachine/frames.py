"""DataFrame helpers: XREAD/XREADGROUP output to pandas, age pruning, and a rolling buffer.

This is the only module that imports pandas. A frame built from stream entries has the meta columns
first — stream, id, timestamp_ms (int64, from the entry id), then `sequence` (int64) when asked —
and then one column per message field, in the order fields are first seen. Field values stay text
(decoded UTF-8, bad bytes replaced by U+FFFD; missing values are NaN) unless `dtypes=` or
`schema=` converts them. A field whose name is a meta column is kept as `field_<name>`.
"""

from __future__ import annotations

import time
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd

from ._columns import SEQUENCE_COLUMN, StreamsReply, column_names, meta_columns, reply_columns
from .exceptions import ConfigError, SerializationError

__all__ = [
    "TimeSeriesBuffer",
    "prune_old_dataframe_rows",
    "streams_to_dataframe",
    "streams_to_dataframe_fast",
]

_TEXT_DTYPE: Any = pd.Series(["x"]).dtype  # what pandas infers for text: `str` in pandas 3
_BOOL_TEXT = {"true": True, "1": True, "false": False, "0": False}


def streams_to_dataframe(
    streams: StreamsReply,
    stream_name_column: str = "stream",
    id_column: str = "id",
    timestamp_column: str = "timestamp_ms",
    include_sequence: bool = False,
    *,
    dtypes: Mapping[str, Any] | None = None,
    schema: type[msgspec.Struct] | None = None,
) -> pd.DataFrame:
    """One row per stream entry of an XREAD/XREADGROUP reply (RESP2 list or RESP3 dict).

    Built column by column (no dict per row), by the same code as `streams_to_dataframe_fast`.

    Args:
        streams: the reply as redis-py returns it; bytes or str anywhere; fields as a dict or a
            flat [key, value, ...] list. `(None, None)` placeholders of deleted entries are skipped.
        stream_name_column, id_column, timestamp_column: names of the meta columns.
        include_sequence: add the id's sequence number as an int64 `sequence` column.
        dtypes: column → pandas dtype to convert to, e.g. `{"price": "float64"}`.
        schema: a `msgspec.Struct` whose field types give the dtypes (int → int64, float →
            float64, bool → bool, `X | None` → a nullable dtype); missing values take the
            field's default.

    Raises:
        ValueError: an entry id is not `<ms>-<seq>` (the message names it), the reply has
            another shape, or a value does not convert to its dtype.

    Example:
        >>> reply = [[b"ticks", [(b"1700000000000-0", {b"price": b"1.5"})]]]
        >>> streams_to_dataframe(reply, dtypes={"price": "float64"})["price"].tolist()
        [1.5]
    """
    meta = meta_columns(stream_name_column, id_column, timestamp_column, include_sequence)
    if schema is not None:
        _schema_fields(schema)
    cols = reply_columns(streams)
    names = column_names(meta, cols.fields)
    data: dict[str, Any] = {
        meta[0]: _text_array(cols.streams),
        meta[1]: _text_array(cols.ids),
        meta[2]: cols.ms,
    }
    if include_sequence:
        data[SEQUENCE_COLUMN] = cols.seq
    for name, values in cols.fields.items():
        data[names[name]] = _text_array(values)
    return _finish(data, meta, names, dtypes, schema)


def streams_to_dataframe_fast(
    streams: StreamsReply,
    stream_name_column: str = "stream",
    id_column: str = "id",
    timestamp_column: str = "timestamp_ms",
    include_sequence: bool = False,
    *,
    dtypes: Mapping[str, Any] | None = None,
    schema: type[msgspec.Struct] | None = None,
) -> pd.DataFrame:
    """`streams_to_dataframe` under its older name: the same function, the same frame.

    Example:
        >>> reply = {"ticks": [("1700000000000-3", {"price": "1.5"})]}
        >>> streams_to_dataframe_fast(reply, include_sequence=True)["sequence"].tolist()
        [3]
    """
    return streams_to_dataframe(
        streams,
        stream_name_column,
        id_column,
        timestamp_column,
        include_sequence,
        dtypes=dtypes,
        schema=schema,
    )


def _text_array(values: Sequence[str | None]) -> Any:
    # From an object ndarray, not a list: pandas then checks the values without copying them
    # into one first, several times cheaper. Missing values (None) become pandas' NA of text.
    return pd.array(np.fromiter(values, dtype=object, count=len(values)), dtype=_TEXT_DTYPE)


def _finish(
    arrays: dict[str, Any],
    meta: list[str],
    names: Mapping[str, str],
    dtypes: Mapping[str, Any] | None,
    schema: type[msgspec.Struct] | None,
) -> pd.DataFrame:
    """The frame from its columns, each given its dtype before the frame is built (cheaper than
    converting a built frame, which matters for the many small replies of a live consumer)."""
    conversions: dict[str, tuple[Any, Any]] = {}
    if schema is not None:
        conversions.update(_schema_conversions(schema, meta, names))
    conversions.update({col: (dtype, msgspec.NODEFAULT) for col, dtype in (dtypes or {}).items()})
    n = len(arrays[meta[0]])
    for column, (dtype, default) in conversions.items():
        if column not in arrays:
            arrays[column] = _text_array([None] * n)
        series = pd.Series(arrays[column], copy=False)
        if isinstance(default, str | int | float):  # bool is an int; "true"/"false" as sent
            series = series.fillna(
                str(default).lower() if isinstance(default, bool) else str(default)
            )
        arrays[column] = _convert(series, dtype, column).array
    # Arrays, not Series: the frame is built without aligning indexes.
    return pd.DataFrame(arrays, index=pd.RangeIndex(n), copy=False)


def _schema_conversions(
    schema: type[msgspec.Struct], meta: list[str], names: Mapping[str, str]
) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for field in _schema_fields(schema):
        column = (
            names.get(field.encode_name)
            or column_names(meta, [field.encode_name])[field.encode_name]
        )
        out[column] = (_dtype_for(field.type), field.default)
    return out


def _schema_fields(schema: Any) -> tuple[msgspec.structs.FieldInfo, ...]:
    if not (isinstance(schema, type) and issubclass(schema, msgspec.Struct)):
        raise ConfigError(f"schema must be a msgspec.Struct class, got {schema!r}")
    return msgspec.structs.fields(schema)


def _dtype_for(annotation: Any) -> Any:
    """The pandas dtype for a Struct field type; text for anything without a scalar dtype."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else str
    if annotation is bool:
        return "boolean" if optional else "bool"
    if annotation is int:
        return "Int64" if optional else "int64"
    if annotation is float:
        return "float64"
    return _TEXT_DTYPE


def _convert(series: pd.Series, dtype: Any, column: str) -> pd.Series:
    try:
        if pd.api.types.is_bool_dtype(pd.api.types.pandas_dtype(dtype)):
            flags = series.str.lower().map(_BOOL_TEXT)
            bad = series.notna() & flags.isna()
            if bad.any():
                raise ValueError(f"{series[bad].iloc[0]!r} is not true/false/1/0")
            series = flags
        return series.astype(dtype)
    except (ValueError, TypeError, AttributeError) as exc:
        raise SerializationError(
            f"column {column!r} cannot be converted to {dtype}: {exc}; fix the data, or use a "
            "nullable dtype (Int64, boolean) where values may be missing"
        ) from exc


def prune_old_dataframe_rows(
    df: pd.DataFrame,
    cutoff_seconds: float,
    timestamp_column: str = "timestamp_ms",
    current_time: float | None = None,
) -> pd.DataFrame:
    """Rows whose timestamp (ms) is at most `cutoff_seconds` before now (the boundary is kept).

    Args:
        df: a frame with an integer millisecond `timestamp_column`.
        cutoff_seconds: the age, in seconds, of the oldest row kept.
        timestamp_column: the column holding milliseconds since the epoch.
        current_time: "now" in seconds since the epoch; `time.time()` when None.

    Returns:
        A new frame (the index is kept) with the rows where
        `timestamp >= (current_time - cutoff_seconds) * 1000`.

    Example:
        >>> df = pd.DataFrame({"timestamp_ms": [1000, 2000, 3000]})
        >>> prune_old_dataframe_rows(df, 1.0, current_time=3.0)["timestamp_ms"].tolist()
        [2000, 3000]
    """
    if timestamp_column not in df.columns:
        raise ConfigError(
            f"the frame has no {timestamp_column!r} column (it has {list(df.columns)}); "
            "pass timestamp_column= the column holding milliseconds"
        )
    now_s = time.time() if current_time is None else current_time
    return df.loc[df[timestamp_column] >= _cutoff_ms(now_s * 1000.0, cutoff_seconds)].copy()


def _cutoff_ms(now_ms: float, age_s: float) -> float:
    # Rounded to the microsecond, so 3.0 s - 1.001 s keeps the row at 1999 ms (float error aside).
    return round(now_ms - age_s * 1000.0, 3)


#: How many appended frames wait before they are concatenated into one.
_PENDING_MAX = 64


class TimeSeriesBuffer:
    """Recent rows of appended frames, pruned by age (and optionally by count) when read.

    Appends are cheap: frames wait in a list and are concatenated only by `get()` or, every
    64 appends, into chunks of decreasing size, so each row is copied O(log n) times, never
    O(n). With `clock="wall"` (the default) rows older than `max_age_seconds` before
    `time.time()` are dropped; with `clock="event"` the age is measured from the newest
    timestamp seen, so a replay keeps the same window as the live feed did.

    Args:
        max_age_seconds: keep rows at most this old (the boundary is kept).
        timestamp_column: the column holding milliseconds since the epoch.
        max_rows: keep at most this many rows, those with the newest timestamps.
        clock: "wall" or "event", what "now" is when ages are measured.

    Example:
        >>> buf = TimeSeriesBuffer(60, clock="event")
        >>> buf.append(pd.DataFrame({"timestamp_ms": [0, 30_000, 90_000]}))
        >>> buf.get()["timestamp_ms"].tolist(), buf.last_timestamp
        ([30000, 90000], 90000)
    """

    def __init__(
        self,
        max_age_seconds: float,
        timestamp_column: str = "timestamp_ms",
        max_rows: int | None = None,
        *,
        clock: Literal["wall", "event"] = "wall",
    ) -> None:
        if not max_age_seconds >= 0:
            raise ConfigError(f"max_age_seconds must be >= 0, got {max_age_seconds!r}")
        if max_rows is not None and max_rows < 1:
            raise ConfigError(f"max_rows must be a positive int or None, got {max_rows!r}")
        if clock not in ("wall", "event"):
            raise ConfigError(f"clock must be 'wall' or 'event', got {clock!r}")
        self.max_age_seconds = float(max_age_seconds)
        self.timestamp_column = timestamp_column
        self.max_rows = max_rows
        self.clock = clock
        self.clear()

    def clear(self) -> None:
        """Drop every row and forget the newest timestamp seen."""
        self._chunks: list[pd.DataFrame] = []  # concatenated, oldest and largest first
        self._pending: list[pd.DataFrame] = []  # appended since, not yet concatenated
        self._rows = 0
        self._empty = pd.DataFrame({self.timestamp_column: pd.Series([], dtype="int64")})
        self._last_ts: int | None = None

    @property
    def last_timestamp(self) -> int | None:
        """The newest timestamp (ms) ever appended, pruned or not; None before the first row."""
        return self._last_ts

    def append(self, df: pd.DataFrame) -> None:
        """Add the rows of `df` (it is not copied: pandas copy-on-write keeps it unchanged)."""
        if self.timestamp_column not in df.columns:
            raise ConfigError(
                f"the appended frame has no {self.timestamp_column!r} column (it has "
                f"{list(df.columns)}); set TimeSeriesBuffer(timestamp_column=...)"
            )
        self._empty = df.iloc[:0]
        if df.empty:
            return
        newest = int(df[self.timestamp_column].max())
        self._last_ts = newest if self._last_ts is None else max(self._last_ts, newest)
        self._pending.append(df)
        self._rows += len(df)
        if len(self._pending) >= _PENDING_MAX:
            self._chunks.append(self._prune_age(_concat(self._pending)))
            self._pending = []
            # Merge while a chunk is no larger than the next: sizes then shrink geometrically.
            while len(self._chunks) > 1 and len(self._chunks[-2]) <= len(self._chunks[-1]):
                newer, older = self._chunks.pop(), self._chunks.pop()
                self._chunks.append(self._prune_age(_concat([older, newer])))
            self._rows = sum(map(len, self._chunks))
        if self.max_rows is not None and self._rows > 2 * self.max_rows + _PENDING_MAX:
            self.get()

    def get(self) -> pd.DataFrame:
        """The buffered rows, oldest appended first, pruned now, with a fresh 0..n-1 index.

        Example:
            >>> TimeSeriesBuffer(60).get().empty
            True
        """
        parts = self._chunks + self._pending
        if not parts:
            return self._empty.copy()
        frame = self._prune_rows(self._prune_age(_concat(parts)))
        self._chunks, self._pending, self._rows = [frame], [], len(frame)
        return frame.copy(deep=False)  # the caller may add columns without touching the cache

    def __len__(self) -> int:
        return len(self.get())

    def _prune_age(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.clock == "event":
            if self._last_ts is None:
                return frame
            cutoff_ms = _cutoff_ms(self._last_ts, self.max_age_seconds)
        else:
            cutoff_ms = _cutoff_ms(time.time() * 1000.0, self.max_age_seconds)
        ts = frame[self.timestamp_column]
        if frame.empty or ts.min() >= cutoff_ms:
            return frame
        return frame.loc[ts >= cutoff_ms].reset_index(drop=True)

    def _prune_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.max_rows is None or len(frame) <= self.max_rows:
            return frame
        ts = frame[self.timestamp_column]
        if ts.is_monotonic_increasing:
            return frame.iloc[-self.max_rows :].reset_index(drop=True)
        newest = np.sort(np.argsort(ts.to_numpy(), kind="stable")[-self.max_rows :])
        return frame.iloc[newest].reset_index(drop=True)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)
