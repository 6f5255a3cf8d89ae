"""CLI command: mcp (also the `streammachine-mcp` console script)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import command, fail

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add `mcp` to the CLI."""

    @command(app, "mcp", log_level="info")
    def mcp(
        transport: Annotated[
            str, typer.Option("--transport", help="stdio (for a client that starts us) or http.")
        ] = "stdio",
        host: Annotated[str, typer.Option("--host", help="HTTP address to listen on.")] = (
            "127.0.0.1"
        ),
        port: Annotated[
            int, typer.Option("--port", min=1, max=65535, help="HTTP port (path /mcp).")
        ] = 8765,
        read_only: Annotated[
            bool, typer.Option("--read-only", help="Offer the read-only tools only.")
        ] = False,
        redis_url: str | None = None,
    ) -> None:
        """Serve StreamMachine's tools, resources and prompts to LLM clients over MCP.

        stdio: nothing but protocol on stdout, logs on stderr. http: http://HOST:PORT/mcp.

        Tools that delete data need the user's confirmation; --read-only offers none of them.
        """
        import contextlib
        import logging

        import anyio

        from .common import resolve_url

        if transport not in ("stdio", "http"):
            fail(f"--transport must be stdio or http, not {transport!r}", 2)
        url = resolve_url(redis_url)
        try:
            from ..mcp.server import create_server, serve
        except ImportError as exc:
            fail(f"the MCP server needs the mcp extra: pip install 'streammachine[mcp]' ({exc})")
        from ..urls import mask_url

        server = create_server(url, read_only=read_only)
        log = logging.getLogger("streammachine.mcp")
        mode = "read-only" if read_only else "read-write"
        if transport == "http":
            if host not in _LOOPBACK:
                log.warning("listening on %s: the MCP endpoint has no authentication", host)
            log.info("MCP server (%s) for %s at http://%s:%d/mcp", mode, mask_url(url), host, port)
        else:
            log.info("MCP server (%s) for %s on stdio", mode, mask_url(url))
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(
                lambda: serve(
                    server, "http" if transport == "http" else "stdio", host=host, port=port
                )
            )
