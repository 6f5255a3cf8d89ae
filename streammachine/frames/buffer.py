"""Age pruning of frames, and `TimeSeriesBuffer`, a rolling buffer of recent rows."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pandas as pd

from ..exceptions import ConfigError

__all__ = ["TimeSeriesBuffer", "prune_old_dataframe_rows"]


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
