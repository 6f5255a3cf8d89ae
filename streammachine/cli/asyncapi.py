"""`streammachine asyncapi APP`: the app's streams as an AsyncAPI 3.0 document."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import command, fail


def register(app: typer.Typer) -> None:
    """Add the `asyncapi` command to the CLI."""

    @command(app, "asyncapi")
    def asyncapi(
        target: Annotated[
            str, typer.Argument(metavar="APP", help="module:attr, module, or path/file.py:attr")
        ],
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format", help="json or yaml (default: from --output's suffix, else json)."
            ),
        ] = None,
        output: Annotated[
            str | None, typer.Option("--output", "-o", metavar="FILE", help="Write to FILE.")
        ] = None,
        version: Annotated[
            str, typer.Option("--app-version", help="The document's info.version.")
        ] = "1.0.0",
        redis_url: str | None = None,
    ) -> None:
        """Print the app's AsyncAPI 3.0 document: its channels (streams), its agents'
        receive operations and the sends it declares with App.produces. Nothing connects to
        Redis; --redis-url only names the server in the document."""
        if fmt is None:
            fmt = "yaml" if output and output.endswith((".yaml", ".yml")) else "json"
        if fmt not in ("json", "yaml"):
            fail(f"--format must be json or yaml, not {fmt!r}", 2)
        from ..admin.asyncapi import asyncapi_document, to_json, to_yaml
        from ..exceptions import StreamMachineError
        from ..process.importer import AppModuleError, import_app

        try:
            loaded = import_app(target)
        except AppModuleError as exc:  # the user's module raised while importing: say what
            cause = exc.__cause__
            fail(f"cannot import {target}: {type(cause).__name__}: {cause}" if cause else str(exc))
        except StreamMachineError as exc:
            fail(str(exc))
        except SyntaxError as exc:
            fail(f"syntax error in {exc.filename}:{exc.lineno}: {exc.msg}")
        except Exception as exc:  # the user's module raised while importing
            fail(f"cannot import {target}: {type(exc).__name__}: {exc}")
        if redis_url is not None:
            from ..urls import validate_url

            try:
                validate_url(redis_url)
            except StreamMachineError as exc:
                fail(str(exc), 2)
        doc = asyncapi_document(loaded, version=version, server_url=redis_url)
        text = to_yaml(doc) if fmt == "yaml" else to_json(doc)
        if output is None or output == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
