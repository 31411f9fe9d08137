"""A minimal decoder of the protobuf wire format: just what the TF readers need.

No schema and no ``protobuf`` dependency: a message is walked as a flat sequence of
``(field_number, wire_type, value)`` and each reader knows the field numbers of the few TF
messages it looks at. Values come back raw: varints and fixed-width fields as ``int``
(unsigned, see :func:`as_int64` for int64 fields), length-delimited fields as ``memoryview``
slices of the input (no copy; nested messages are parsed from them on demand).

Malformed input raises :class:`ProtobufError`; callers turn it into a ``WeightsError``
naming the file and the entry.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

_MAX_VARINT_BYTES = 10

Buffer = bytes | bytearray | memoryview
Value = int | memoryview


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated or corrupt)."""


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint starting at ``buf[pos]``; return ``(value, next_pos)``."""
    result = 0
    shift = 0
    end = min(len(buf), pos + _MAX_VARINT_BYTES)
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    if pos >= len(buf):
        raise ProtobufError("truncated varint")
    raise ProtobufError("varint longer than 10 bytes")


def iter_fields(buf: Buffer) -> Iterator[tuple[int, int, Value]]:
    """Yield ``(field_number, wire_type, value)`` for every field of one serialized message."""
    view = memoryview(buf)
    pos, end = 0, len(view)
    while pos < end:
        tag, pos = read_varint(view, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos)
        elif wire_type == FIXED64:
            value = _fixed(view, pos, 8)
            pos += 8
        elif wire_type == FIXED32:
            value = _fixed(view, pos, 4)
            pos += 4
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(view, pos)
            if pos + length > end:
                raise ProtobufError(f"field {number}: {length}-byte value runs past the end")
            value = view[pos:pos + length]
            pos += length
        else:  # 3/4 are the long-deprecated groups; TF never writes them
            raise ProtobufError(f"field {number}: unsupported wire type {wire_type}")
        yield number, wire_type, value


def _fixed(view: memoryview, pos: int, size: int) -> int:
    if pos + size > len(view):
        raise ProtobufError(f"truncated {size * 8}-bit field")
    return int.from_bytes(view[pos:pos + size], "little")


def parse_message(buf: Buffer) -> dict[int, list[Value]]:
    """Group the fields of one message by number, in the order they occur.

    Proto3 semantics follow from this: a scalar field is the *last* value of its list
    (see :func:`last`), a repeated field is the whole list.
    """
    fields: dict[int, list[Value]] = {}
    for number, _wire_type, value in iter_fields(buf):
        fields.setdefault(number, []).append(value)
    return fields


def last(fields: dict[int, list[Value]], number: int, default: Value | None = None):
    """The value of a singular field (the last occurrence wins), or ``default`` if absent."""
    values = fields.get(number)
    return values[-1] if values else default


def get_int(fields: dict[int, list[Value]], number: int, default: int = 0) -> int:
    """A singular integer field (varint or fixed); a length-delimited value is an error."""
    value = last(fields, number)
    if value is None:
        return default
    if not isinstance(value, int):
        raise ProtobufError(f"field {number}: expected a number, got a length-delimited value")
    return value


def get_int64(fields: dict[int, list[Value]], number: int, default: int = 0) -> int:
    """A singular ``int64`` / ``int32`` field, sign restored (see :func:`as_int64`)."""
    return as_int64(get_int(fields, number, default))


def get_messages(fields: dict[int, list[Value]], number: int) -> list[dict[int, list[Value]]]:
    """Every occurrence of a repeated embedded-message field, parsed."""
    return [as_message(value) for value in fields.get(number, [])]


def as_int64(value: int) -> int:
    """Reinterpret an unsigned varint as a two's-complement int64 (negative int32/64 fields)."""
    if not isinstance(value, int):
        raise ProtobufError("expected a number, got a length-delimited value")
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def as_str(value: Value | None) -> str:
    """Decode a ``string`` field (UTF-8); an absent field is the empty string."""
    if value is None:
        return ""
    if isinstance(value, int):
        raise ProtobufError("expected a length-delimited string, got a number")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtobufError(f"string field is not UTF-8: {exc}") from None


def as_message(value: Value | None) -> dict[int, list[Value]]:
    """Parse an embedded message field; an absent field is the empty message."""
    if value is None:
        return {}
    if isinstance(value, int):
        raise ProtobufError("expected an embedded message, got a number")
    return parse_message(value)


def repeated_varints(values: list[Value]) -> list[int]:
    """All integers of a repeated varint field, whether written packed or one per tag."""
    out: list[int] = []
    for value in values:
        if isinstance(value, int):
            out.append(value)
        else:
            pos = 0
            while pos < len(value):
                item, pos = read_varint(value, pos)
                out.append(item)
    return out
