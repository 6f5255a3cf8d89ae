"""CLI commands: mcp."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("mcp", help="Serve StreamMachine's tools over MCP (not available yet).")
    def mcp() -> None:
        from .common import fail

        fail("`streammachine mcp` is not available in this version yet")
