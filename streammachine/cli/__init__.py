"""The `streammachine` command line: the only code in the project that prints or exits.

Each command group lives in its own module and imports what it needs inside the command, so
`streammachine --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from . import asyncapi, dashboard, mcp, ohlc, ops, schedule, streams
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
for module in (run_cmd, streams, schedule, ops, ohlc, mcp, dashboard, asyncapi):
    module.register(app)


def main() -> None:
    """Entry point of the `streammachine` console script."""
    # Typer vendors click; its exceptions are not public names, so they come from there.
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from ..exceptions import StreamMachineError

    check_argv(sys.argv[1:])
    try:
        # Not standalone: usage errors come back here and are shown as one line, like ours.
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            sys.stdout.write(exc.ctx.get_help() + "\n")
        sys.exit(0 if exc.ctx is not None and exc.ctx.parent is None else 2)
    except UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}", 2)
    except ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except StreamMachineError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def mcp_main() -> None:
    """Entry point of the `streammachine-mcp` console script."""
    sys.argv = [sys.argv[0], "mcp", *sys.argv[1:]]
    main()
