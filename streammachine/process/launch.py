"""`run_app`: run an app in one of two shapes.

* one process: with `workers=1`, no reload and no agent declared with `processes=N`, the app runs
  in the runner's own process, which is what docker (PID 1) and systemd (`Type=notify`) expect;
* a supervisor of worker processes (`supervisor.Supervisor`), otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anyio

from ..exceptions import ConfigError
from ..settings import Settings
from .runner import run_loop, serve
from .supervisor import Supervisor
from .worker import ChildConfig, Layout

__all__ = ["run_app"]

log = logging.getLogger("streammachine.process.supervisor")


def run_app(
    target: str,
    *,
    workers: int = 1,
    reload: bool = False,
    reload_dirs: list[str] | None = None,
    settings: Settings | None = None,
    log_setup: str | None = None,
    log_args: Sequence[str] = (),
) -> int:
    """Run the app named by `target` until it is stopped; returns the exit status.

    `settings` (default: the environment's) become this process's and every worker's settings;
    `log_setup` (`module:function`, called with `log_args`) is how each worker sets up logging.

    Raises:
        AppImportError: the app cannot be imported (bad reference, or an error in its module).
        ConfigError: a bad setting, e.g. `memory://` with more than one process.
        SyntaxError: the app's module has a syntax error (single-process path).

    Example:
        >>> run_app("orders:app", workers=2)  # doctest: +SKIP
        0
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}")
    from .importer import app_dir, import_app

    settings = settings or Settings.current()
    settings.install()
    child = ChildConfig(settings, log_setup, list(log_args))
    layout = None
    if workers == 1 and not reload:
        app = import_app(target)
        layout = Layout.of(app)
        if not any(a.processes for a in layout.agents):
            log.info("%s", layout.banner("1 worker in this process"))
            return run_loop(serve, app)
        if problem := layout.problem(len(layout.specs(1))):
            raise ConfigError(problem)
    dirs = None
    if reload:
        dirs = [app_dir(target), *(Path(d).resolve() for d in reload_dirs or [])]
        for d in dirs:
            if not d.is_dir():
                raise ConfigError(f"cannot watch {d}: no such folder (check --reload-dir)")
    supervisor = Supervisor(target, workers=workers, reload_dirs=dirs, layout=layout, child=child)
    result: int = anyio.run(supervisor.run, backend="asyncio")
    return result
