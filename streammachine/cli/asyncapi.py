"""`streammachine asyncapi APP`: the app's streams as an AsyncAPI 3.0 document."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from .common import command, fail


class _ImportTimeout(BaseException):
    """The app's module took longer than the import timeout (a BaseException, so neither the
    importer nor the module's own `except Exception` catches it)."""


@contextlib.contextmanager
def _bounded(timeout_s: float) -> Iterator[None]:
    """Raise `_ImportTimeout` inside the block after `timeout_s` (SIGALRM: an endless loop in a
    module's top level is interrupted too); stdout goes to stderr meanwhile, so what the module
    prints at import cannot precede the document."""
    alarm = timeout_s > 0 and threading.current_thread() is threading.main_thread()

    def expired(signum: int, frame: Any) -> None:
        raise _ImportTimeout

    previous = signal.signal(signal.SIGALRM, expired) if alarm else None
    if alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


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
        from ..settings import Settings

        timeout_s = Settings.current().import_timeout_s
        loaded = None
        try:
            with _bounded(timeout_s):
                loaded = import_app(target)
        except _ImportTimeout:
            fail(
                f"importing {target} took longer than {timeout_s:g} s (does its module run "
                "something at import?): move that into a hook, or raise "
                "STREAMMACHINE_IMPORT_TIMEOUT_S"
            )
        except SystemExit as exc:  # sys.exit() at import: no app, so no document
            fail(
                f"the app module of {target} called sys.exit({exc.code!r}) while being imported: "
                "an app module must not exit at import"
            )
        except AppModuleError as exc:  # the user's module raised while importing: say what
            cause = exc.__cause__
            fail(f"cannot import {target}: {type(cause).__name__}: {cause}" if cause else str(exc))
        except StreamMachineError as exc:
            fail(str(exc))
        except SyntaxError as exc:
            fail(f"syntax error in {exc.filename}:{exc.lineno}: {exc.msg}")
        except Exception as exc:  # the user's module raised while importing
            fail(f"cannot import {target}: {type(exc).__name__}: {exc}")
        assert loaded is not None  # every failure above exits
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
