"""The reference's compatibility names, gathered in one place, each with why it exists.

StreamMachine implements the API of the reference (`spec/api-reference.txt`) exactly; a few of its
names describe machinery this implementation does not have. They keep working, and live here:

- `_has_cython_decode`: the reference's flag for its Cython byte decoder. Always True: the decoder
  (`codec.decode_dict_bytes_to_utf8`) is C-level str/bytes work driven by one comprehension, the
  fastest form CPython offers, so the fast path is always active.
- `_HAS_FAST_OHLC_CYTHON`: the reference's flag for its compiled OHLC path; here True when the Numba
  kernel is the default under the process's settings (`ohlc.kernel.jit_active()`). Resolved on
  access, so importing it is cheap until read (reading it imports Numba).
- `StreamConsumer`: the reference's name for one registered consumer; here that is `Agent`.
- `App(to_scan=True)`: the reference scanned modules for decorated tasks (venusian); here decorators
  register at import time, so the argument is accepted and kept in `AppConfig.to_scan`, unused.
- extras `cython`, `fast-json`, `monitoring` (pyproject.toml): the reference's extras, so its install
  lines work; `cython` installs the JIT (numba), `monitoring` the dashboard, `fast-json` nothing
  (msgspec, a core dependency, is the fast JSON codec).
- module aliases: `streammachine.mcp_server` (the reference's `python -m streammachine.mcp_server`;
  the server is `streammachine.mcp.server`) and `streammachine.inspect` (the old name of
  `streammachine.admin.queries` and `streammachine.admin.replay`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .consume.agent import Agent as StreamConsumer

    _HAS_FAST_OHLC_CYTHON: bool

__all__ = ["_HAS_FAST_OHLC_CYTHON", "StreamConsumer", "_has_cython_decode"]

_has_cython_decode = True


def __getattr__(name: str) -> Any:
    # Resolved on access, so that answering `_has_cython_decode` loads neither the delivery
    # core nor Numba.
    if name == "StreamConsumer":
        from .consume.agent import Agent

        return Agent
    if name == "_HAS_FAST_OHLC_CYTHON":
        from .ohlc.kernel import jit_active

        return jit_active()
    raise AttributeError(f"module 'streammachine.compat' has no attribute {name!r}")
