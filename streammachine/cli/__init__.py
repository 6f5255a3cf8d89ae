"""The `streammachine` command line: the only code in the project that prints or exits.

Each command group lives in its own module and imports what it needs inside the command, so
`streammachine --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from . import dashboard, mcp, ohlc, ops, streams
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
for module in (run_cmd, streams, ops, ohlc, mcp, dashboard):
    module.register(app)


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
