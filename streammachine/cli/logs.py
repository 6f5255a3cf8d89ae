"""Logging for the CLI: Rich on a terminal, one JSON object per line otherwise."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["auto", "text", "json"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line with stable keys: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger for a CLI command (stderr only: stdout is for data)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler: logging.Handler
    if use_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        rich = RichHandler(
            console=Console(stderr=True), show_path=False, rich_tracebacks=True, markup=False
        )
        handler = rich
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    root.addHandler(handler)
    try:
        root.setLevel(level.upper())
    except ValueError:
        root.setLevel(logging.INFO)
    for noisy in ("watchfiles", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
