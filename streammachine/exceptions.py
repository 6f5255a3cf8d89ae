"""Errors raised by StreamMachine.

Every error StreamMachine raises on purpose derives from one root, so a user can catch one type, and
every message says what to do about it::

    StreamMachineError
    ├── ConfigError              a bad setting, argument or URL (also a ValueError)
    │   └── AppImportError       `module:attr` could not be imported or is not an App
    ├── RedisUnavailableError    Redis could not be reached (also a ConnectionError)
    ├── SerializationError       a value could not be encoded or decoded (also a ValueError)
    │   └── UnsafePickleError    a pickle is unsigned or its signature does not match
    ├── HandlerError             a handler failed; wraps the original exception
    └── NotAvailableError        a feature whose optional dependency is missing

Control flow, raised by handlers (not errors):

    Retry(delay_s)               handle this message again after `delay_s`
    Skip                         acknowledge this message without handling it
"""

from __future__ import annotations

__all__ = [
    "AppImportError",
    "ConfigError",
    "HandlerError",
    "NotAvailableError",
    "RedisUnavailableError",
    "Retry",
    "SerializationError",
    "Skip",
    "StreamMachineError",
    "UnsafePickleError",
]


class StreamMachineError(Exception):
    """The root of every error StreamMachine raises on purpose."""


class ConfigError(StreamMachineError, ValueError):
    """A setting, argument or URL is invalid; the message names it and the valid form."""


class AppImportError(ConfigError):
    """An `APP` reference (`module:attr`, `module` or `path/file.py:attr`) cannot be loaded."""


class RedisUnavailableError(StreamMachineError, ConnectionError):
    """Redis cannot be reached at the configured URL (password masked in the message)."""


class SerializationError(StreamMachineError, ValueError):
    """A value cannot be encoded for Redis, or a stored value cannot be decoded."""


class UnsafePickleError(SerializationError):
    """A pickled value is unsigned or signed with another key, so it is not unpickled."""


class HandlerError(StreamMachineError):
    """A handler raised; `__cause__` is the original exception."""


class NotAvailableError(StreamMachineError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


class Retry(Exception):
    """Raise in a handler to have the message delivered again after `delay_s` seconds.

    Example:
        >>> raise Retry(2.0)  # doctest: +SKIP
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(f"retry in {delay_s:g} s")
        self.delay_s = float(delay_s)


class Skip(Exception):
    """Raise in a handler to acknowledge the message without handling it further."""
