"""Load an App from a reference: `module:attr`, `module` (its single App) or `path/file.py:attr`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ..app import App
from ..exceptions import AppImportError, ConfigError

__all__ = ["AppModuleError", "app_dir", "import_app"]

_PACKAGE = str(Path(__file__).resolve().parent.parent)


class AppModuleError(AppImportError):
    """The app's own module raised while it was imported; `__cause__` is what it raised (the CLI
    prints this one line, then that exception's traceback)."""


def _import(name: str, shown: str) -> ModuleType:
    """Import `name`; an error raised by the module's own code becomes `AppModuleError` saying
    where (a SyntaxError stays itself: its one line already says where)."""
    try:
        return importlib.import_module(name)
    except (SyntaxError, AppImportError):
        raise
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename[:1] != "<"]
        if isinstance(exc, ConfigError):
            # A declaration StreamMachine refused (a bad cron, timer, partition count): its
            # message says what to fix, so name the user's line and leave our frames out.
            own = [f for f in frames if not f.filename.startswith(_PACKAGE)]
            where = f" at {own[-1].filename}:{own[-1].lineno}" if own else ""
            raise AppImportError(f"the app module {shown!r}{where}: {exc}") from None
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise AppModuleError(
            f"the app module {shown!r} failed to import: {type(exc).__name__}{where}: {exc}"
        ) from exc


def _split(ref: str) -> tuple[str, str | None]:
    module, sep, attr = ref.partition(":")
    if not module or (sep and not attr):
        raise AppImportError(
            f"bad app reference {ref!r}: use module:attr, module, or path/to/file.py:attr"
        )
    return module, attr or None


def _load_module(module: str) -> ModuleType:
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module).resolve()
        if not path.is_file():
            raise AppImportError(f"no such file {module!r}: check the path of your app")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return _import(path.stem, module)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        return _import(module, module)
    except AppModuleError as exc:
        missing = getattr(exc.__cause__, "name", None) or "\0"
        its_own = module == missing or module.startswith(missing + ".")
        if isinstance(exc.__cause__, ModuleNotFoundError) and its_own:
            raise AppImportError(
                f"cannot import module {module!r}: run from the folder that contains it, "
                "or pass path/to/file.py:app"
            ) from None
        raise


def import_app(ref: str) -> App:
    """Import and return the App that `ref` names.

    Raises:
        AppImportError: the module or attribute is missing, or it is not an App.
        AppModuleError: the module's own code raised while it was imported (`__cause__`).
        SyntaxError: the module has a syntax error (shown as it is).

    Example:
        >>> import_app("examples.basic:app")  # doctest: +SKIP
        App('basic_example', agents=1, timers=1)
    """
    module_name, attr = _split(ref)
    module = _load_module(module_name)
    if attr is None:
        apps = [v for v in vars(module).values() if isinstance(v, App)]
        if len(apps) != 1:
            found = "no App" if not apps else f"{len(apps)} Apps"
            raise AppImportError(
                f"module {module_name!r} has {found}: name one as {module_name}:attr"
            )
        return apps[0]
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(
                f"module {module_name!r} has no attribute {attr!r}: check the name after ':'"
            ) from None
    if not isinstance(obj, App):
        raise AppImportError(
            f"{ref!r} is a {type(obj).__name__}, not a streammachine App: "
            "point it at the object made with App(...)"
        )
    return obj


def app_dir(ref: str) -> Path:
    """The folder to watch for `--reload`: the app file's folder, or the current one."""
    module_name, _ = _split(ref)
    if module_name.endswith(".py") or "/" in module_name:
        return Path(module_name).resolve().parent
    spec = importlib.util.find_spec(module_name.split(".")[0])
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent
    return Path.cwd()
