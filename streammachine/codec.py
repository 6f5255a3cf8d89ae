"""Field encoding and decoding: records to stream fields and back, msgspec schemas.

Stream fields are str→str. `encode_fields` writes str/bytes/int/float/bool as text (bools as
`true`/`false`) and any other value as JSON; a msgspec Struct is written field by field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import msgspec

from .exceptions import ConfigError, SerializationError

__all__ = [
    "StructCodec",
    "as_text",
    "decode_dict_bytes_to_utf8",
    "decode_fields",
    "decode_struct",
    "encode_fields",
    "encode_value",
    "parse_entry_id",
]

log = logging.getLogger("streammachine.codec")

_json_encode = msgspec.json.Encoder().encode
_warned_undecodable = False
S = TypeVar("S", bound=msgspec.Struct)


def encode_value(value: Any) -> str | bytes:
    """One field value as text: str/bytes as they are, bool as true/false, numbers as text,
    anything else as JSON.

    Example:
        >>> encode_value(1.5), encode_value(True), encode_value({"a": 1})
        ('1.5', 'true', '{"a":1}')
    """
    t = type(value)
    if t is str or t is bytes:
        return value  # type: ignore[no-any-return]
    if t is bool:
        return "true" if value else "false"
    if t is int or t is float:
        return repr(value)
    if isinstance(value, str | bytes):
        return str(value) if isinstance(value, str) else bytes(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        return _json_encode(value).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise SerializationError(
            f"cannot encode a value of type {type(value).__name__} as JSON: {exc}; "
            "send str, bytes, numbers, bools, or JSON-serialisable data"
        ) from exc


def encode_fields(record: Mapping[str, Any] | msgspec.Struct) -> dict[str | bytes, str | bytes]:
    """A record as stream fields.

    Raises:
        SerializationError: (a ValueError) the record is empty, not a mapping, or has a key that
            is not a str, or a value cannot be encoded.

    Example:
        >>> encode_fields({"n": 1, "ok": True})
        {'n': '1', 'ok': 'true'}
    """
    if type(record) is dict and record:
        # The common case, in one pass: str keys, str/bytes values as they are.
        fast: dict[str | bytes, str | bytes] = {}
        for key, value in record.items():
            tk, tv = type(key), type(value)
            if tk is not str and tk is not bytes:
                break
            fast[key] = value if tv is str or tv is bytes else encode_value(value)
        else:
            return fast
    if isinstance(record, msgspec.Struct):
        record = msgspec.structs.asdict(record)
    if not isinstance(record, Mapping):
        raise SerializationError(
            f"a record must be a dict of field names to values, not {type(record).__name__}"
        )
    if not record:
        raise SerializationError(
            "a record needs at least one field: Redis streams cannot hold empty entries"
        )
    out: dict[str | bytes, str | bytes] = {}
    for key, value in record.items():
        if type(key) is not str:
            if isinstance(key, bytes):
                out[key] = encode_value(value)
                continue
            raise SerializationError(f"field names must be str, got {key!r} ({type(key).__name__})")
        out[key] = encode_value(value)
    return out


def as_text(value: Any) -> str:
    """The one bytes→text rule for names, ids and values read from Redis: UTF-8, bad bytes
    replaced (U+FFFD), anything else through `str`.

    Example:
        >>> as_text(b"orders"), as_text(b"\\xff"), as_text(7)
        ('orders', '\\ufffd', '7')
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


_text = as_text


def parse_entry_id(entry_id: Any) -> tuple[int, int]:
    """A stream entry id (`"1700000000000-3"`, bytes or text; a bare `"<ms>"` means sequence 0)
    as `(ms, seq)`, which sorts as Redis orders ids.

    Raises:
        ValueError: it is not an entry id.

    Example:
        >>> parse_entry_id(b"1700000000000-3"), parse_entry_id("5")
        ((1700000000000, 3), (5, 0))
    """
    ms, _, seq = as_text(entry_id).partition("-")
    return (int(ms), int(seq or 0))


def decode_dict_bytes_to_utf8(d: Mapping[Any, Any]) -> dict[str, str]:
    """Decode bytes keys and values to str (UTF-8). Undecodable bytes are replaced with U+FFFD
    and logged once, never raised.

    Example:
        >>> decode_dict_bytes_to_utf8({b"a": b"1", "b": "2"})
        {'a': '1', 'b': '2'}
    """
    try:
        return {k.decode(): v.decode() for k, v in d.items()}
    except (AttributeError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            _warn_undecodable(exc)
        return {_text(k): _text(v) for k, v in d.items()}


def decode_fields(flat: Iterable[Any]) -> dict[str, str]:
    """A flat [k1, v1, k2, v2, …] field list (RESP2) as a str dict."""
    it = iter(flat)
    try:
        return {k.decode(): v.decode() for k, v in zip(it, it, strict=False)}
    except (AttributeError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            _warn_undecodable(exc)
        it = iter(flat)
        return {_text(k): _text(v) for k, v in zip(it, it, strict=False)}


def _warn_undecodable(exc: UnicodeDecodeError) -> None:
    global _warned_undecodable
    if not _warned_undecodable:
        _warned_undecodable = True
        log.warning("a message holds bytes that are not UTF-8 (%s); replaced with U+FFFD", exc)


Payload = Literal["fields", "msgpack", "json"]

#: The field that holds a packed payload.
PAYLOAD_FIELD = "data"


class StructCodec:
    """Encodes and decodes one msgspec Struct type in a payload mode.

    "fields" writes one stream field per struct field (readable in redis-cli, ~1.5 µs to decode);
    "msgpack" and "json" write the whole struct into one `data` field (nested data, ~0.2 µs).

    Example:
        >>> class Tick(msgspec.Struct):
        ...     price: float
        >>> codec = StructCodec(Tick, "msgpack")
        >>> codec.decode(codec.encode(Tick(1.5)))
        Tick(price=1.5)
    """

    def __init__(self, schema: type[msgspec.Struct], payload: Payload = "fields") -> None:
        if payload not in ("fields", "msgpack", "json"):
            raise ConfigError(f"payload must be 'fields', 'msgpack' or 'json', not {payload!r}")
        self.schema = schema
        self.payload = payload
        self._decode: Callable[[bytes], Any]
        if payload == "msgpack":
            self._encode = msgspec.msgpack.Encoder().encode
            self._decode = msgspec.msgpack.Decoder(schema).decode
        else:
            self._encode = msgspec.json.Encoder().encode
            self._decode = msgspec.json.Decoder(schema).decode

    def encode(self, value: msgspec.Struct) -> dict[str | bytes, str | bytes]:
        """The stream fields for `value`."""
        if self.payload == "fields":
            return encode_fields(value)
        return {PAYLOAD_FIELD: self._encode(value)}

    def decode(self, fields: Any) -> Any:
        """A validated struct from an entry's fields (raw flat list, bytes dict or str dict).

        Raises:
            SerializationError: the entry does not match the schema; the message says why.
        """
        if self.payload == "fields":
            if isinstance(fields, list):
                return decode_struct(decode_fields(fields), self.schema)
            return decode_struct(decode_dict_bytes_to_utf8(fields), self.schema)
        data: Any = None
        if isinstance(fields, list):
            if len(fields) == 2 and fields[0] == b"data":
                data = fields[1]  # the common case, without a search
            for i in range(0, len(fields) - 1 if data is None else 0, 2):
                if fields[i] in (b"data", "data"):
                    data = fields[i + 1]
                    break
        else:
            data = fields.get(b"data", fields.get("data"))
        if data is None:
            raise SerializationError(
                f"no '{PAYLOAD_FIELD}' field holding a packed {self.schema.__name__}"
            )
        try:
            return self._decode(data.encode() if isinstance(data, str) else data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SerializationError(
                f"message does not match {self.schema.__name__}: {exc}"
            ) from exc


def decode_struct(fields: Mapping[str, str], schema: type[S]) -> S:
    """Build and validate a `schema` Struct from text fields ("1.5" → float); JSON text for
    nested fields is parsed.

    Raises:
        SerializationError: the fields do not match the schema; the message names the field.
    """
    try:
        return msgspec.convert(fields, schema, strict=False)
    except msgspec.ValidationError:
        pass
    parsed: dict[str, Any] = {}
    for k, v in fields.items():
        if v[:1] in ("{", "[", '"'):
            try:
                parsed[k] = msgspec.json.decode(v)
                continue
            except msgspec.DecodeError:
                pass
        parsed[k] = v
    try:
        return msgspec.convert(parsed, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise SerializationError(f"message does not match {schema.__name__}: {exc}") from exc
