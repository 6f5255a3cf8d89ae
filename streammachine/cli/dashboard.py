"""CLI command `dashboard`: the web dashboard, standalone (`top` is the same in a terminal)."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from ..settings import DASHBOARD_OPERATOR_TOKEN_ENV, DASHBOARD_TOKEN_ENV
from .common import command, fail, resolve_url


def register(app: typer.Typer) -> None:
    """Add `dashboard` to the CLI."""

    @command(app, "dashboard", log_level="info")
    def dashboard(
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 8000,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                envvar=DASHBOARD_TOKEN_ENV,
                show_envvar=True,
                help="Require 'Authorization: Bearer <token>' (or ?token=) on all but /healthz.",
            ),
        ] = None,
        operator_token: Annotated[
            str | None,
            typer.Option(
                "--operator-token",
                envvar=DASHBOARD_OPERATOR_TOKEN_ENV,
                show_envvar=True,
                help="Allow actions (pause, replay, purge, ...) to whoever gives this token; "
                "without it the dashboard is read-only.",
            ),
        ] = None,
        redis_url: str | None = None,
    ) -> None:
        """Serve the web dashboard, /metrics, /healthz and /readyz (read-only without --operator-token)."""
        url = resolve_url(redis_url)
        import anyio

        from ..dashboard.server import run_dashboard_server
        from ..settings import Settings

        settings = Settings.from_env()  # the entry point reads the environment once

        async def main() -> bool:
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            stop.set()
                            return

                tg.start_soon(on_signal)
                served = await run_dashboard_server(
                    url, host, port, stop, token or "",
                    operator_token=operator_token or "", settings=settings,
                )  # fmt: skip
                tg.cancel_scope.cancel()
            return served

        if not anyio.run(main):
            fail(f"cannot serve the dashboard on {host}:{port}; pick another --port")
