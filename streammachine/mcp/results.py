"""What every MCP tool result shares, without the `mcp` SDK: the size limits, `Bounded` (a result
that may have been cut, saying so), clipping of long values and lists, JSON-safe values, the
`confirm` argument of destructive tools, and `ToolFailure` (a tool's refusal).

Example:
    >>> clip("x" * 5, 3)
    ('xxx…[2 more characters]', True)
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, StrictBool

from ..codec import as_text
from ..exceptions import StreamMachineError

__all__ = [
    "CALL_TIMEOUT_S",
    "MAX_FIELDS",
    "MAX_RESULT_BYTES",
    "MAX_VALUE_CHARS",
    "Bounded",
    "Confirm",
    "ConfirmedBy",
    "ToolFailure",
    "clip",
    "clip_fields",
    "fit",
    "jsonable",
]

#: Bounds of every result: JSON bytes of its list, characters of one value, fields of one entry.
MAX_RESULT_BYTES = 100_000
MAX_VALUE_CHARS = 2_000
MAX_FIELDS = 50
CALL_TIMEOUT_S = 15.0

M = TypeVar("M", bound=BaseModel)
ConfirmedBy = Literal["elicitation", "argument"]


class ToolFailure(StreamMachineError):
    """A tool refused or failed; the message (secrets masked) is the error result's text.

    Example:
        >>> raise ToolFailure("argument 'name': no OHLC aggregator 'x'")  # doctest: +SKIP
    """


# -- argument types ---------------------------------------------------------------------------

Confirm = Annotated[
    StrictBool,
    Field(description="Set true, after the user agreed, when the client cannot ask the user."),
]

# -- output models ----------------------------------------------------------------------------


class Bounded(BaseModel):
    """A result that may have been cut to stay small."""

    truncated: bool = False
    note: str | None = None


# -- helpers --------------------------------------------------------------------------------------


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> tuple[str, bool]:
    """`text` cut at `limit` characters (saying how many more there were), and whether it was."""
    if len(text) <= limit:
        return text, False
    return f"{text[:limit]}…[{len(text) - limit} more characters]", True


def clip_fields(raw: Mapping[Any, Any] | None) -> tuple[dict[str, str], bool]:
    """Entry fields as text, at most MAX_FIELDS of them, each value clipped."""
    out: dict[str, str] = {}
    cut = False
    for i, (k, v) in enumerate((raw or {}).items()):
        if i >= MAX_FIELDS:
            return out, True
        key, c1 = clip(as_text(k), 200)
        out[key], c2 = clip(as_text(v))
        cut = cut or c1 or c2
    return out, cut


def fit(items: Sequence[M], budget: int = MAX_RESULT_BYTES) -> tuple[list[M], bool]:
    """The leading items whose JSON fits `budget` bytes (always at least one)."""
    kept: list[M] = []
    used = 0
    for item in items:
        size = len(item.model_dump_json())
        if kept and used + size > budget:
            return kept, True
        kept.append(item)
        used += size
    return kept, False


def jsonable(value: Any, depth: int = 0) -> Any:
    """A stored value as JSON: bytes as UTF-8 text (else base64), other objects as their repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode()}
    if depth > 64:
        return repr(value)
    if isinstance(value, Mapping):
        return {as_text(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    return repr(value)
