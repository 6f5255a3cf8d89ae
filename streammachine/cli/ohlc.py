"""CLI commands: ohlc."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("ohlc", help="Compute OHLC candles from a tick stream (not available yet).")
    def ohlc() -> None:
        from .common import fail

        fail("`streammachine ohlc` is not available in this version yet")
