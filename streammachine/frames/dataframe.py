"""XREAD/XREADGROUP output to pandas DataFrames, column by column.

A frame built from stream entries has the meta columns
first — stream, id, timestamp_ms (int64, from the entry id), then `sequence` (int64) when asked —
and then one column per message field, in the order fields are first seen. Field values stay text
(decoded UTF-8, bad bytes replaced by U+FFFD; missing values are NaN) unless `dtypes=` or
`schema=` converts them. A field whose name is a meta column is kept as `field_<name>`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from ..exceptions import ConfigError, SerializationError
from .columns import SEQUENCE_COLUMN, StreamsReply, column_names, meta_columns, reply_columns

__all__ = ["streams_to_dataframe", "streams_to_dataframe_fast"]

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
        stream_name_column: name of the meta column holding the stream name.
        id_column: name of the meta column holding the entry id.
        timestamp_column: name of the meta column holding the entry id's time.
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
