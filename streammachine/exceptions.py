"""Errors raised by StreamMachine.

Every error StreamMachine raises on purpose derives from one root, so a user can catch one type, and
every message says what to do about it::

    StreamMachineError
    ├── ConfigError              a bad setting, argument or URL (also a ValueError)
    │   └── AppImportError       `module:attr` could not be imported or is not an App
    ├── RedisUnavailableError    Redis could not be reached (also a ConnectionError)
    ├── SerializationError       a value could not be encoded or decoded (also a ValueError)
    │   ├── UnsafePickleError    a pickle is unsigned or its signature does not match
    │   └── WrongTypeError       a value of a type that cannot be stored (also a TypeError)
    └── NotAvailableError        a feature whose optional dependency is missing

Control flow, raised by handlers (not errors):

    Retry(delay_s)               handle this message again after `delay_s`
    Skip                         acknowledge this message without handling it

A handler's own exception is never wrapped: it is logged, retried and dead-lettered as it is (its
type and message are kept in the dead letter).

redis-py's errors meet this tree at one boundary (httpx's `map_exceptions`): `UNREACHABLE` is
the one list of the errors that mean "Redis cannot be reached", and `map_redis_errors` turns them
into `RedisUnavailableError`; `REDIS_FAILURES` is any failure of a Redis call; `not_ready`
tells a server that is there but not serving yet (loading its dataset, a replica without its
master, a cluster slot moving, a refused connection while it restarts) from one that is broken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import BusyLoadingError as _BusyLoadingError
from redis.exceptions import ConnectionError as _RedisConnectionError
from redis.exceptions import MasterDownError as _MasterDownError
from redis.exceptions import RedisError as _RedisError
from redis.exceptions import TimeoutError as _RedisTimeoutError
from redis.exceptions import TryAgainError as _TryAgainError

__all__ = [
    "NOT_READY_REPLIES",
    "REDIS_FAILURES",
    "UNREACHABLE",
    "AppImportError",
    "ConfigError",
    "NotAvailableError",
    "RedisUnavailableError",
    "Retry",
    "SerializationError",
    "Skip",
    "StreamMachineError",
    "UnsafePickleError",
    "WrongTypeError",
    "not_ready",
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


class WrongTypeError(SerializationError, TypeError):
    """A value's type cannot be stored (or added to, for `incr`); the message names the key and
    the types that can."""


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


#: The errors that mean Redis cannot be reached (a refused or cut connection, a timeout); the
#: builtin TimeoutError (anyio.fail_after) is an OSError. The one place this list is written.
UNREACHABLE: tuple[type[BaseException], ...] = (_RedisConnectionError, _RedisTimeoutError, OSError)
#: Any failure of a Redis call: unreachable, or an error reply (WRONGTYPE, NOGROUP, NOSCRIPT...).
REDIS_FAILURES: tuple[type[BaseException], ...] = (_RedisError, OSError)


#: Error replies of a server that will serve soon: it is loading its dataset (LOADING), a replica
#: lost its master (MASTERDOWN), a cluster slot is moving (TRYAGAIN).
NOT_READY_REPLIES = ("LOADING", "MASTERDOWN", "TRYAGAIN")


def not_ready(exc: BaseException | None) -> bool:
    """Whether `exc` (or what it wraps) means "Redis is there but not ready yet": one of
    `NOT_READY_REPLIES`, or a refused connection (a server restarting).

    Example:
        >>> not_ready(ConnectionRefusedError(111, "Connection refused"))
        True
    """
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ConnectionRefusedError | _BusyLoadingError | _MasterDownError):
            return True
        if isinstance(exc, _TryAgainError):
            return True
        text = str(exc)
        if isinstance(exc, _RedisError) and text.startswith(NOT_READY_REPLIES):
            return True
        # redis-py words a refused connect "Error 111 connecting to ... Connection refused."
        if isinstance(exc, _RedisConnectionError) and "Connection refused" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextlib.contextmanager
def map_redis_errors(
    where: str = "Redis",
    hint: str = "",
    errors: tuple[type[BaseException], ...] = UNREACHABLE,
) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors (or any of `errors`) raised inside into
    `RedisUnavailableError` ("cannot reach <where>: <reason>[. <hint>]"); others pass through.

    Example:
        >>> with map_redis_errors("Redis at redis://localhost:6379/0"):  # doctest: +SKIP
        ...     await client.ping()
    """
    try:
        yield
    except RedisUnavailableError:
        raise
    except errors as exc:
        reason = str(exc).rstrip(".") or "no answer in time"
        raise RedisUnavailableError(
            f"cannot reach {where}: {reason}" + (f". {hint}" if hint else "")
        ) from exc
