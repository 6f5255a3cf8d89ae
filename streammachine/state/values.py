"""Values of shared state: namespaces and keys checked, values encoded for Redis (ints as decimal
text, so `incr` is Redis' own HINCRBY; everything else msgpack) and decoded back, TTLs bounded."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from ..exceptions import ConfigError, SerializationError, WrongTypeError

__all__ = [
    "INT64",
    "MAX_TTL_S",
    "add_number",
    "check_key",
    "check_namespace",
    "decode_value",
    "encode_value",
    "ttl_ms",
]

_NAMESPACE_RE = re.compile(r"[\w.-]+")
INT64 = 2**63
MAX_TTL_S = 3_155_760_000.0  # 100 years
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def check_namespace(namespace: str) -> str:
    """Return `namespace` if it is letters, digits, `_`, `.` and `-`; else raise `ConfigError`.

    A `:` or a glob character would let one namespace's key patterns reach into another's.
    """
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError(
            f"storage namespace {namespace!r} is invalid: use letters, digits, '_', '.' and '-' "
            "(no ':' or glob characters), e.g. 'orders' or 'my-app'"
        )
    return namespace


def check_key(key: Any) -> str:
    """Return `key` if it is a str; else raise `ConfigError` saying so (Redis would take an int
    as its text, but the key's TTL and listing would then disagree with it)."""
    if not isinstance(key, str):
        raise ConfigError(
            f"storage keys are str, not {type(key).__name__} ({key!r}): use str(key), e.g. "
            f"storage.write({str(key)!r}, value)"
        )
    return key


def encode_value(key: str, value: Any) -> bytes:
    """Encode one value for Redis: ints as decimal text, everything else as msgpack."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value)).encode()
    try:
        data = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WrongTypeError(
            f"storage key {key!r}: cannot store a value of type {type(value).__name__} ({exc}); "
            "store int, float, str, bytes, bool, None and lists/dicts of them, or pickle it with "
            "RedisObjectStorage.store_with_pickle"
        ) from None
    if data[0] < 0x80:  # a positive fixint (e.g. an Enum's value) would read back as ASCII text
        return str(data[0]).encode()
    return data


def decode_value(key: str, raw: bytes) -> Any:
    """Decode what `encode_value` wrote; decimal text (also from `redis-cli`) is a number."""
    if raw[:1].isdigit() or raw[:1] == b"-":
        try:
            return int(raw)
        except ValueError:
            try:
                return float(raw)
            except ValueError:
                pass
    else:
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError:
            pass
    raise SerializationError(
        f"storage key {key!r} holds {raw[:32]!r}, which is neither msgpack nor a number, so it "
        "was not written by StreamMachine; overwrite it with write() or delete it"
    )


def ttl_ms(ttl_s: float) -> int:
    """`ttl_s` in whole milliseconds (at least 1); `ConfigError` unless it is a number > 0 and at
    most `MAX_TTL_S` (past that Redis refuses the expiry time)."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
        raise ConfigError(f"ttl_s={ttl_s!r}: give a number of seconds > 0, or None for no expiry")
    if not ttl_s <= MAX_TTL_S:
        raise ConfigError(f"ttl_s={ttl_s!r} is more than 100 years ({MAX_TTL_S:.0f} s): use None")
    return max(1, math.ceil(ttl_s * 1000))


def add_number(key: str, current: Any, by: int | float) -> int | float:
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise WrongTypeError(
            f"incr({key!r}): the stored value is a {type(current).__name__}, not a number; "
            "use update() to change it"
        )
    return current + by
