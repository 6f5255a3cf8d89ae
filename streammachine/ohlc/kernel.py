"""The OHLC kernel's two paths: the loops of `pykernel` compiled by Numba, or run as they are.

`kernels(jit=True)` wraps them with `numba.njit(cache=True)` on first use; each compiles (or
loads from its on-disk cache) on its first call, so importing this module compiles nothing and
imports no Numba. `kernels(jit=False)` runs the same source as plain Python, on memoryviews
(whose items are Python floats and ints, several times faster than NumPy scalars). One source
means both paths give identical candles.

Which path is the default is a setting, `Settings.disable_jit` (`STREAMMACHINE_DISABLE_JIT`),
passed down by the caller: `jit_active(settings)`. This module never reads the environment.

Example:
    >>> k = kernels(jit=False)
    >>> k.jit
    False
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import NotAvailableError
from ..settings import Settings
from . import pykernel
from .pykernel import LATE, LATE_BY_INTERVAL, NO_TIME, SKIPPED, TICKS, WATERMARK

__all__ = [
    "LATE",
    "LATE_BY_INTERVAL",
    "NO_TIME",
    "SKIPPED",
    "TICKS",
    "WATERMARK",
    "Kernels",
    "jit_active",
    "kernels",
    "numba_available",
    "readonly",
]

log = logging.getLogger("streammachine.ohlc.kernel")


@dataclass(frozen=True)
class Kernels:
    """One path's functions: Numba-compiled (`jit=True`) or the plain Python source."""

    jit: bool
    apply_batch: Any
    factorize_rows: Any

    def view(self, array: Any) -> Any:
        """NumPy arrays for Numba; memoryviews for Python, whose items are plain floats and ints."""
        return array if self.jit else memoryview(array)


_PY = Kernels(jit=False, apply_batch=pykernel.apply_batch, factorize_rows=pykernel.factorize_rows)
_jit: Kernels | None = None
_jit_failed = False


def numba_available() -> bool:
    """True when Numba imports (the first call imports it).

    Example:
        >>> isinstance(numba_available(), bool)
        True
    """
    return _compiled() is not None


def jit_active(settings: Settings | None = None) -> bool:
    """True when the compiled path is the default under `settings` (default: the process's,
    `Settings.current()`): Numba imports and `disable_jit` is off.

    Example:
        >>> from streammachine.settings import Settings
        >>> jit_active(Settings(disable_jit=True))
        False
    """
    if settings is None:
        settings = Settings.current()
    return not settings.disable_jit and numba_available()


def _compiled() -> Kernels | None:
    """Wrap the functions with `numba.njit(cache=True)` once; each compiles (or loads from the
    on-disk cache) on its first call, so importing this module compiles nothing."""
    global _jit, _jit_failed
    if _jit is None and not _jit_failed:
        if importlib.util.find_spec("numba") is None:
            _jit_failed = True
            return None
        try:
            import numba
            from numba.extending import register_jitable
        except ImportError as exc:  # a broken install: fall back rather than fail
            log.warning("numba could not be imported (%s); OHLC runs in pure Python", exc)
            _jit_failed = True
            return None
        for helper in pykernel.HELPERS:
            register_jitable(helper)
        jit = numba.njit(cache=True, nogil=True)
        _jit = Kernels(
            jit=True,
            apply_batch=jit(pykernel.apply_batch),
            factorize_rows=jit(pykernel.factorize_rows),
        )
    return _jit


def kernels(jit: bool | None = None) -> Kernels:
    """The functions of one path: Numba when `jit` is True, Python when False, else the
    process's default (`jit_active()`).

    Raises:
        NotAvailableError: `jit=True` and Numba cannot be imported.

    Example:
        >>> kernels(jit=False).jit
        False
    """
    if jit is None:
        jit = jit_active()
    if not jit:
        return _PY
    compiled = _compiled()
    if compiled is None:
        raise NotAvailableError(
            "the compiled OHLC kernel needs numba: pip install 'streammachine[jit]'"
        )
    return compiled


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view: Numba types writable and read-only arrays apart, so inputs always
    passed read-only (pandas hands out read-only arrays) compile one variant, not several."""
    view = array.view()
    view.flags.writeable = False
    return view
