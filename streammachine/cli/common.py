"""Options every command shares, and the one way the CLI reports a user mistake."""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="REDIS_URL",
        show_envvar=True,
        help="Redis URL (redis://, rediss://, unix://, memory://); default from REDIS_HOST/PORT/DB.",
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        "--log-level", envvar="STREAMMACHINE_LOG_LEVEL", help="debug, info, warning, error."
    ),
]
LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="STREAMMACHINE_LOG_FORMAT",
        help="text (Rich), json (one object per line) or auto (text on a terminal).",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object per line, stable keys.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr and exit non-zero (user mistakes never show a traceback)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def resolve_url(redis_url: str | None) -> str:
    """The URL a command uses: the flag, else REDIS_URL, else REDIS_HOST/PORT/DB."""
    from ..connection import validate_url
    from ..settings import Settings

    if redis_url:
        return validate_url(redis_url)
    return validate_url(Settings.from_env(os.environ).resolve_url())


def setup(log_level: str, log_format: str) -> None:
    """Validate the shared options and configure logging."""
    if log_format not in ("auto", "text", "json"):
        fail(f"--log-format must be text, json or auto, not {log_format!r}")
    if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    from .logs import setup_logging

    setup_logging(log_level, log_format)
