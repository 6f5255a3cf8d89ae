"""Window kinds (`tumbling`, `hopping`, `sliding`, `session`) and the time arithmetic every
window user shares: the window engine (`windows.Engine`) and OHLC, whose Numba kernel compiles
`window_start` and `closed` in. Times and sizes in milliseconds of event time.

Example:
    >>> k = tumbling(60)
    >>> str(k), window_start(125_000, k.step_ms), closed(120_000, k.size_ms, 180_000)
    ('tumbling(60)', 120000, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..exceptions import ConfigError

__all__ = [
    "Kind",
    "closed",
    "hopping",
    "session",
    "sliding",
    "tumbling",
    "watermark_of",
    "window_start",
]


@dataclass(frozen=True, slots=True)
class Kind:
    """A window kind, made by `tumbling`, `hopping`, `sliding` or `session` (sizes in ms)."""

    kind: Literal["tumbling", "hopping", "sliding", "session"]
    size_ms: int
    step_ms: int = 0

    def __str__(self) -> str:
        s, st = self.size_ms / 1000, self.step_ms / 1000
        if self.kind == "hopping":
            return f"hopping({s:g}, {st:g})"
        if self.kind == "session":
            return f"session(gap={s:g})"
        return f"{self.kind}({s:g})"


def _ms(seconds: float, what: str) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigError(f"{what} must be a positive number of seconds, not {seconds!r}")
    ms = round(seconds * 1000)
    if ms < 1:
        raise ConfigError(f"{what} must be at least 1 ms, not {seconds!r} s")
    return ms


def tumbling(size_s: float) -> Kind:
    """Back-to-back windows of `size_s` seconds: [0, size), [size, 2·size), …"""
    size = _ms(size_s, "tumbling(size_s)")
    return Kind("tumbling", size, size)


def hopping(size_s: float, step_s: float) -> Kind:
    """Windows of `size_s` seconds starting every `step_s` seconds (they overlap)."""
    size, step = _ms(size_s, "hopping(size_s)"), _ms(step_s, "hopping(step_s)")
    if step > size:
        raise ConfigError(f"hopping: step_s ({step_s}) must not exceed size_s ({size_s})")
    return Kind("hopping", size, step)


def sliding(size_s: float) -> Kind:
    """For each entry at time t, the window (t - size_s, t] of its key."""
    return Kind("sliding", _ms(size_s, "sliding(size_s)"))


def session(gap: float) -> Kind:
    """Entries of a key less than `gap` seconds apart form one session."""
    return Kind("session", _ms(gap, "session(gap)"))


# --- the tumbling-window arithmetic, shared with OHLC (its Numba kernel compiles these) -------


def window_start(t: int, step_ms: int) -> int:
    """The start of the newest window of a `step_ms` grid holding event time `t`: for tumbling
    windows the one window of `t`, floor(t / size) * size (negative times floor too)."""
    return t - t % step_ms


def watermark_of(max_t: int, grace_ms: int) -> int:
    """The watermark: the newest event time seen minus the grace."""
    return max_t - grace_ms


def closed(start: int, size_ms: int, mark: int) -> bool:
    """True when the window [start, start + size_ms) is closed at watermark `mark`: an entry
    for it is late from then on."""
    return start + size_ms <= mark
