"""The `streammachine` command line: the only code in the project that prints or exits.

Each command group lives in its own module and imports what it needs inside the command, so
`streammachine --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from . import run as run_cmd
from .common import fail

app = typer.Typer(
    name="streammachine",
    help="Run event-driven Python workers on Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
run_cmd.register(app)


def _not_yet(name: str, what: str) -> None:
    @app.command(name, help=f"{what} (not available in this version yet).")
    def _cmd() -> None:
        fail(f"`streammachine {name}` is not available in this version yet")


_not_yet("ohlc", "Compute OHLC candles from a tick stream")
_not_yet("mcp", "Serve StreamMachine's tools to LLM clients over MCP")


def main() -> None:
    """Entry point of the `streammachine` console script."""
    from ..exceptions import StreamMachineError

    try:
        app()
    except StreamMachineError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def mcp_main() -> None:
    """Entry point of the `streammachine-mcp` console script."""
    sys.argv = [sys.argv[0], "mcp", *sys.argv[1:]]
    main()
