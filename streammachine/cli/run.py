"""`streammachine run APP`: import the app and run it (under the supervisor when asked)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import command, fail, resolve_url


def register(app: typer.Typer) -> None:
    """Add the `run` command to the CLI."""

    @command(app, "run", log_level="info")
    def run(
        target: Annotated[
            str, typer.Argument(metavar="APP", help="module:attr, module, or path/file.py:attr")
        ],
        workers: Annotated[
            int, typer.Option("--workers", min=1, help="Worker processes (timers run in one).")
        ] = 1,
        reload: Annotated[
            bool, typer.Option("--reload", help="Restart workers when a .py file changes.")
        ] = False,
        reload_dir: Annotated[
            list[str] | None,
            typer.Option(
                "--reload-dir", help="More folders to watch (repeatable; implies --reload)."
            ),
        ] = None,
        shutdown_timeout: Annotated[
            float | None,
            typer.Option(
                "--shutdown-timeout", min=0, help="Seconds in-flight handlers get to finish."
            ),
        ] = None,
        dashboard: Annotated[
            bool, typer.Option("--dashboard", help="Serve the web dashboard (one per run).")
        ] = False,
        dashboard_port: Annotated[
            int | None,
            typer.Option("--dashboard-port", min=1, max=65535, help="Dashboard port (8000)."),
        ] = None,
        redis_url: str | None = None,
        log_level: str = "info",
        log_format: str = "auto",
    ) -> None:
        """Run an app's agents and timers until SIGINT/SIGTERM."""
        from ..settings import Settings

        # The one place `run` reads the environment; flags beat it, and the workers get the
        # result (and how to log) from the supervisor, not through environment variables.
        settings = Settings.from_env()
        changes: dict[str, object] = {}
        if redis_url is not None:
            changes["redis_url"] = resolve_url(redis_url)
        if shutdown_timeout is not None:
            changes["shutdown_timeout_s"] = shutdown_timeout
        if dashboard or dashboard_port:
            changes["dashboard"] = True
        if dashboard_port:
            changes["dashboard_port"] = dashboard_port
        settings = settings.replace(**changes)
        from ..process.importer import AppModuleError
        from ..process.launch import run_app

        try:
            code = run_app(
                target,
                workers=workers,
                reload=reload or bool(reload_dir),
                reload_dirs=reload_dir,
                settings=settings,
                # The workers set up logging as this process did.
                log_setup="streammachine.cli.logs:setup_logging",
                log_args=[log_level, log_format],
            )
        except SyntaxError as exc:
            fail(f"syntax error in {exc.filename}:{exc.lineno}: {exc.msg}")
        except AppModuleError as exc:
            # One line first (what failed, where), then the traceback: the user's bug needs it.
            import sys
            import traceback

            sys.stderr.write(f"error: {exc}\n")
            if exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__)
            raise SystemExit(1) from None
        raise SystemExit(code)
