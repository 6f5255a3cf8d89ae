"""Stream ids and points in time as operators type them, checked before anything reaches Redis:
`1700000000000-0` or `1700000000000` (an entry id), an ISO 8601 time (`2030-01-01T09:00:00Z`;
without an offset it is local time), or a duration meaning "that long ago" (`10m`, `2h`, `1d`).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

from ..exceptions import ConfigError
from ..schedule.timing import parse_duration

__all__ = ["MAX_SEQ", "check_entry_id", "id_before", "is_entry_id", "parse_time_ms", "point_id"]

_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
#: The largest sequence number of an entry id (2**64 - 1).
MAX_SEQ = 2**64 - 1
_MAX_MS = 2**64 - 1


def is_entry_id(text: str) -> bool:
    """Whether `text` is an entry id (`<ms>-<seq>` or `<ms>`) within Redis' 64-bit range.

    Example:
        >>> is_entry_id("1700000000000-0"), is_entry_id("abc"), is_entry_id("1-2-3")
        (True, False, False)
    """
    if not _ID.match(text):
        return False
    ms, _, seq = text.partition("-")
    return int(ms) <= _MAX_MS and int(seq or 0) <= MAX_SEQ


def check_entry_id(text: str, what: str = "id") -> str:
    """`text` when it is an entry id, else a ConfigError that shows the form.

    Example:
        >>> check_entry_id("1700000000000-0")
        '1700000000000-0'
    """
    if not isinstance(text, str) or not is_entry_id(text):
        shown = repr(text)[:60]
        raise ConfigError(
            f"{what} {shown} is not a stream entry id: use the form 1700000000000-0 "
            "(as `dead`, `tail` and `pending` print them)"
        )
    return text


def parse_time_ms(text: str, now_ms: int | None = None) -> int:
    """Epoch ms of an ISO 8601 time, a duration ago (`10m`), or an entry id's time.

    Example:
        >>> parse_time_ms("1970-01-01T00:00:01+00:00"), parse_time_ms("1m", now_ms=120_000)
        (1000, 60000)
    """
    text = text.strip()
    if is_entry_id(text):
        return int(text.partition("-")[0])
    if re.match(r"^[\d.]+\s*(ms|s|m|h|d)$", text):
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0, now - int(parse_duration(text) * 1000))
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        ms = when.timestamp() * 1000
    except (ValueError, OverflowError, OSError):
        ms = math.nan
    if not math.isfinite(ms) or ms < 0:
        raise ConfigError(
            f"{text[:60]!r} is not a time: use an ISO 8601 time (2030-01-01T09:00:00Z), "
            "a duration ago (10m, 2h, 1d) or an entry id"
        )
    return int(ms)


def id_before(ms: int) -> str:
    """The largest entry id before time `ms`: a group set there reads every entry from `ms` on.

    Example:
        >>> id_before(1000), id_before(0)
        ('999-18446744073709551615', '0-0')
    """
    return f"{ms - 1}-{MAX_SEQ}" if ms > 0 else "0-0"


def point_id(text: str) -> str:
    """An id or a time as the id a range starts at: an id as it is, a time as `<ms>-0`.

    Example:
        >>> point_id("5-1"), point_id("1970-01-01T00:00:02Z")
        ('5-1', '2000-0')
    """
    return text if is_entry_id(text) else f"{parse_time_ms(text)}-0"
