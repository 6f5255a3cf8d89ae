"""The time arithmetic scheduling shares: durations, rates, due times and takeover bounds (key
names are in `streammachine.keys`)."""

from __future__ import annotations

import re
import time
from datetime import datetime

from ..exceptions import ConfigError

__all__ = [
    "MAX_DELAY_S",
    "due_ms",
    "parse_duration",
    "parse_rate",
    "takeover_bound_s",
]

# --- durations and rates -----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(\d*)\s*(s|sec|m|min|h|hour)\s*$")
_PER_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `"30s"`, `"250ms"`, `"5m"`, `"2h"`, `"1d"` or a plain number of seconds.

    Example:
        >>> parse_duration("1m"), parse_duration("250ms"), parse_duration("2")
        (60.0, 0.25, 2.0)
    """
    m = _DURATION.match(text)
    if m is None:
        raise ConfigError(
            f"{text!r} is not a duration: use a number with a unit, e.g. 30s, 250ms, 5m, 2h or 1d"
        )
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_rate(text: str) -> float:
    """Tokens per second in a rate such as `"200/s"`, `"10/m"`, `"5/h"` (or `"3/10s"`).

    Example:
        >>> parse_rate("200/s"), parse_rate("30/m"), parse_rate("3/10s")
        (200.0, 0.5, 0.3)
    """
    m = _RATE.match(text) if isinstance(text, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(
            f"rate_limit {text!r} is not a rate: use a positive count per unit, "
            "e.g. '200/s', '10/m' or '5/h'"
        )
    per = float(m.group(2) or 1) * _PER_S[m.group(3)]
    if per <= 0:
        raise ConfigError(f"rate_limit {text!r}: the period must be > 0")
    return float(m.group(1)) / per


#: The furthest a delayed send may be due: 10 years from now (`delay_s`, `at`, `--delay`, `--at`).
MAX_DELAY_S = 10 * 366 * 86400.0


def due_ms(delay_s: float | None = None, at: datetime | float | None = None) -> int | None:
    """The due time (epoch ms) of a delayed send, or None for a send now.

    Args:
        delay_s: seconds from now, 0 to `MAX_DELAY_S`.
        at: a datetime (a naive one is local time, as `datetime.timestamp` takes it) or epoch
            seconds, from 1970 to `MAX_DELAY_S` from now (a past time is due at once).

    Raises:
        ConfigError: both given, NaN, infinite, negative, before 1970 or too far ahead.

    Example:
        >>> due_ms(at=1700000000.5)
        1700000000500
    """
    if delay_s is not None and at is not None:
        raise ConfigError("give delay_s or at, not both")
    limit = f"at most {MAX_DELAY_S / 86400 / 366:g} years ahead"
    if delay_s is not None:
        if (
            isinstance(delay_s, bool)
            or not isinstance(delay_s, int | float)
            or not 0 <= delay_s <= MAX_DELAY_S  # also NaN
        ):
            raise ConfigError(
                f"delay_s must be a number of seconds >= 0 and {limit}, not {delay_s!r:.60}"
            )
        return int((time.time() + delay_s) * 1000)
    if at is None:
        return None
    if isinstance(at, datetime):
        try:
            seconds = at.timestamp()
        except (OverflowError, ValueError, OSError):
            seconds = -1.0
    elif isinstance(at, bool) or not isinstance(at, int | float):
        raise ConfigError(f"at must be a datetime or epoch seconds, not {type(at).__name__}")
    else:
        seconds = at
    if not 0 <= seconds <= time.time() + MAX_DELAY_S:  # also NaN
        raise ConfigError(f"at must be a time from 1970 on and {limit}, not {at!r:.60}")
    return int(seconds * 1000)


def takeover_bound_s(interval_s: float) -> float:
    """How long at most before another process runs a timer whose runner died.

    Example:
        >>> takeover_bound_s(0.5), takeover_bound_s(10)
        (5.0, 30.0)
    """
    return max(3.0 * interval_s, 5.0)
