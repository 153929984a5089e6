"""Reading one top-level field of a serialized protobuf message without decoding the rest.

The xDS proxy relays istiod's responses as the bytes it received: decoding a 6 MB CDS push into
messages and encoding it again would cost time and several times its size in memory, and all the
proxy needs to route a response is its `type_url` (field 4 of both DiscoveryResponse and
DeltaDiscoveryResponse). Wire format: https://protobuf.dev/programming-guides/encoding/
"""
from __future__ import annotations

TYPE_URL_FIELD = 4

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def string_field(data: bytes, number: int) -> str:
    """The value of top-level string field `number` (the last one, as a parser would keep); "" if absent.

    ValueError on bytes that are not a well-formed message."""
    view, i, found = memoryview(data), 0, ""
    try:
        while i < len(view):
            key, i = _varint(view, i)
            wire_type = key & 7
            if wire_type == _LENGTH:
                length, i = _varint(view, i)
                if key >> 3 == number:
                    found = bytes(view[i:i + length]).decode()
                i += length
            elif wire_type == _VARINT:
                _, i = _varint(view, i)
            elif wire_type in (_FIXED64, _FIXED32):
                i += 8 if wire_type == _FIXED64 else 4
            else:
                raise ValueError(f"unsupported wire type {wire_type}")
    except IndexError:
        raise ValueError("truncated message") from None
    if i != len(view):
        raise ValueError("truncated message")
    return found
