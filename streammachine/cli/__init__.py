"""The `streammachine` command line: the only code in the project that prints or exits.

Each command group lives in its own module and imports what it needs inside the command, so
`streammachine --help` answers at once.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from . import (
    asyncapi,
    dashboard,
    dead,
    inspect,
    mcp,
    ohlc,
    operate,
    ops,
    scheduled,
    streams,
    tables,
    tail,
    top,
    windows,
)
from . import run as run_cmd
from .common import check_argv, fail

app = typer.Typer(
    name="streammachine",
    help="Run event-driven Python workers on Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for module in (
    run_cmd, streams, tail, inspect, scheduled, ops, dead, operate, ohlc, mcp, dashboard, top,
    asyncapi, tables, windows,
):  # fmt: skip
    module.register(app)


def main() -> None:
    """Entry point of the `streammachine` console script."""
    from ..exceptions import StreamMachineError

    check_argv(sys.argv[1:])
    try:
        # Not standalone: usage errors come back here and are shown as one line, like ours.
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # Typer's public base of its (vendored) click errors
        ctx: Any = getattr(exc, "ctx", None)
        format_message = getattr(exc, "format_message", None)
        message = format_message() if format_message is not None else str(exc)
        if ctx is not None and message == ctx.get_help():  # a group given no command
            sys.stdout.write(message + "\n")
            sys.exit(0 if ctx.parent is None else 2)
        exit_code = int(getattr(exc, "exit_code", 1))
        hint = f" (see: {ctx.command_path} --help)" if exit_code == 2 and ctx else ""
        fail(f"{message}{hint}", exit_code)
    except StreamMachineError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def mcp_main() -> None:
    """Entry point of the `streammachine-mcp` console script."""
    sys.argv = [sys.argv[0], "mcp", *sys.argv[1:]]
    main()
