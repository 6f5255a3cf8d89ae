"""An aggregator's state as bytes and back: every open candle, flushed-up-to mark, symbol and
counter, packed with msgpack (the arrays as raw bytes), for a restart or a takeover.

Example:
    >>> from streammachine.ohlc.store import CandleStore
    >>> store = CandleStore((60000,), grace_ms=0, jit=False)
    >>> state = decode(encode(store, ["AAPL"], 0), (60000,), 0)
    >>> state.names, sorted(state.arrays)
    (['AAPL'], ['cf', 'ci', 'free', 'meta', 'sk'])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import numpy as np

from ..exceptions import ConfigError
from .pykernel import HEAD, LATE_BY_INTERVAL, N_FREE, N_USED, PREV
from .store import CandleStore

__all__ = ["State", "decode", "encode"]

_ARRAYS = ("ci", "cf", "free", "sk", "meta")


class State(NamedTuple):
    """A decoded snapshot: symbol names in code order, the parse-skip counter, the arrays."""

    names: list[str]
    parse_skipped: int
    arrays: dict[str, np.ndarray]


def encode(store: CandleStore, names: list[str], parse_skipped: int) -> bytes:
    """The state of `store` and its symbols, as bytes."""
    arrays = {n: getattr(store, n) for n in _ARRAYS}
    return msgspec.msgpack.encode(
        {
            "v": 1,
            "intervals": list(store.intervals_ms),
            "grace_ms": store.grace_ms,
            "names": names,
            "parse_skipped": parse_skipped,
            "arrays": {n: [a.dtype.str, list(a.shape), a.tobytes()] for n, a in arrays.items()},
        }
    )


def decode(data: bytes, intervals_ms: tuple[int, ...], grace_ms: int) -> State:
    """A snapshot taken by an aggregator of `intervals_ms` and `grace_ms`.

    Raises:
        ConfigError: the snapshot is of other intervals or grace, or not a snapshot.
    """
    try:
        state: Any = msgspec.msgpack.decode(data)
        intervals, grace, names = state["intervals"], state["grace_ms"], state["names"]
        arrays = {
            n: np.frombuffer(raw, np.dtype(dtype)).reshape(shape).copy()
            for n, (dtype, shape, raw) in state["arrays"].items()
            if n in _ARRAYS
        }
        parse_skipped = int(state["parse_skipped"])
        same = tuple(intervals) == intervals_ms and grace == grace_ms
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"not an OHLC snapshot: {exc}") from None
    if not same:
        raise ConfigError(
            f"the snapshot is of intervals {intervals} and grace {grace} ms, not "
            f"{list(intervals_ms)} and {grace_ms} ms: use the same settings, or start from "
            "scratch with a new state stream"
        )
    problem = _check(arrays, names, len(intervals_ms))
    if problem:
        raise ConfigError(f"not an OHLC snapshot: {problem}")
    return State(list(names), parse_skipped, arrays)


def _check(arrays: dict[str, np.ndarray], names: Any, nk: int) -> str | None:
    """What is wrong with decoded arrays, or None. A snapshot is read back from Redis, so it is
    untrusted: the compiled kernel does not check bounds, and a bad slot index would make it
    write outside its arrays."""
    if set(arrays) != set(_ARRAYS):
        return f"arrays {sorted(arrays)}, expected {sorted(_ARRAYS)}"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "its symbol names are not a list of str"
    ci, cf, free, sk, meta = (arrays[n] for n in _ARRAYS)
    n = len(ci)
    shapes = {
        "ci": (ci.dtype == np.int64, ci.shape == (n, 5)),
        "cf": (cf.dtype == np.float64, cf.shape == (n, 5)),
        "free": (free.dtype == np.int64, free.shape == (n,)),
        "sk": (sk.dtype == np.int64, sk.ndim == 3 and sk.shape[1:] == (nk, 2)),
        "meta": (meta.dtype == np.int64, meta.shape == (LATE_BY_INTERVAL + nk,)),
    }
    wrong = [name for name, checks in shapes.items() if not all(checks)]
    if wrong:
        return f"arrays of the wrong type or shape: {wrong}"
    used, n_free = int(meta[N_USED]), int(meta[N_FREE])
    slots_ok = (
        0 <= used <= n
        and 0 <= n_free <= used
        and len(names) <= len(sk)
        and bool(np.all((sk[:, :, HEAD] >= -1) & (sk[:, :, HEAD] < used)))
        and bool(np.all((ci[:used, PREV] >= -1) & (ci[:used, PREV] < used)))
        and bool(np.all((free[:n_free] >= 0) & (free[:n_free] < used)))
    )
    return None if slots_ok else "slot indexes out of range"
