"""Compatibility: the reference's `python -m streammachine.mcp_server` and its imports.

The server lives in `streammachine.mcp.server`; this module forwards every name to it.
"""

from __future__ import annotations

from typing import Any

from .mcp import server as _server
from .mcp.server import CONFIRMED_TOOLS, TOOLS, create_server, serve, tidy_validation_error

__all__ = ["CONFIRMED_TOOLS", "TOOLS", "create_server", "serve", "tidy_validation_error"]


def __getattr__(name: str) -> Any:
    return getattr(_server, name)


if __name__ == "__main__":
    from .cli import mcp_main

    mcp_main()
