"""Symbols and their int codes: one table per aggregator, so the kernel sees only ints.

Symbols are str or bytes; `b"AAPL"` and `"AAPL"` are one symbol (bytes decoded as UTF-8, with
undecodable bytes kept by `surrogateescape`). Codes are handed out in order of first appearance.

Example:
    >>> table = SymbolTable(on_new=lambda n: None)
    >>> table.code("AAPL"), table.code(b"AAPL"), table.code("MSFT")
    (0, 0, 1)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from .kernel import readonly

__all__ = ["SymbolTable"]


class SymbolTable:
    """The symbols of one aggregator and their codes.

    Args:
        on_new: called with the number of symbols whenever one is added (the store grows).

    Example:
        >>> SymbolTable(on_new=lambda n: None).local_codes(np.array(["A", "B", "A"]))[0].tolist()
        [0, 1, 0]
    """

    def __init__(self, on_new: Callable[[int], None]) -> None:
        self.names: list[str] = []
        #: every spelling seen (str and bytes) → code; read directly on the per-tick path
        self.codes: dict[str | bytes, int] = {}
        self._on_new = on_new

    def code(self, symbol: str | bytes) -> int:
        """The code of `symbol`, registered if new."""
        code = self.codes.get(symbol)
        return self.register(symbol) if code is None else code

    def register(self, symbol: str | bytes) -> int:
        """The code of `symbol`, new or not (the slow path of `code`).

        Raises:
            ConfigError: `symbol` is neither str nor bytes.
        """
        if isinstance(symbol, bytes):
            name = symbol.decode("utf-8", "surrogateescape")
        elif isinstance(symbol, str):
            name = symbol
        else:
            raise ConfigError(f"a symbol must be str or bytes, got {type(symbol).__name__}")
        code = self.codes.get(name)
        if code is None:
            code = len(self.names)
            self.names.append(name)
            self._on_new(code + 1)
            self.codes[name] = code
            with contextlib.suppress(UnicodeEncodeError):  # lone surrogates have no bytes
                self.codes[name.encode("utf-8", "surrogateescape")] = code
        self.codes[symbol] = code
        return code

    def local_codes(
        self, arr: np.ndarray, factorize: Callable[[Any], Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes of str/bytes symbols, and the map from them to this table's codes (None when
        they are this table's codes already). `factorize`: the compiled kernel's row hasher,
        used for fixed-width strings when given.

        Raises:
            ConfigError: the array holds something other than str or bytes.
        """
        arr = np.ascontiguousarray(arr).ravel()
        if len(arr) == 0:
            return np.zeros(0, np.int64), None
        if arr.dtype.kind in "US" and factorize is not None:
            # Fixed-width strings viewed as rows of integers: hashed by the kernel, no str objects.
            wide = arr.dtype.kind == "U"
            rows = arr.view(np.uint32 if wide else np.uint8).reshape(len(arr), -1)
            local, firsts = factorize(readonly(rows))
            return local, self._symmap(arr[firsts].tolist())
        if arr.dtype.kind not in "USO":
            raise ConfigError(f"symbols must be str or bytes (or int codes); got dtype {arr.dtype}")
        pd = sys.modules.get("pandas")
        if pd is not None:  # its C hash table maps twice as fast as a dict; used only if loaded
            # With the NA sentinel: pandas then skips a null scan that costs more than hashing.
            local, uniques = pd.factorize(arr)
            if len(local) and local.min() < 0:
                bad = arr[int(np.argmax(local < 0))]
                raise ConfigError(f"a symbol must be str or bytes, got {type(bad).__name__}")
            return local.astype(np.int64, copy=False), self._symmap(list(uniques))
        for name in dict.fromkeys(arr.tolist()):
            self.code(name)
        return np.fromiter(map(self.codes.__getitem__, arr.tolist()), np.int64, len(arr)), None

    def _symmap(self, uniques: list[Any]) -> np.ndarray:
        return np.array([self.code(u) for u in uniques], np.int64)

    def raw_codes(self, symbols: list[Any]) -> np.ndarray | None:
        """Codes of symbols as they came, new ones registered in order; None if one is not a
        symbol (the entry-by-entry path then skips that entry alone)."""
        try:
            get = self.codes.get
            codes = list(map(get, symbols))
            if None in codes:
                for symbol in dict.fromkeys(symbols):
                    if isinstance(symbol, str | bytes) and get(symbol) is None:
                        self.register(symbol)
                codes = list(map(get, symbols))
                if None in codes:
                    return None
        except TypeError:  # unhashable
            return None
        return np.array(codes, np.int64)
