"""The WebSocket adapters' frames: protobuf ``Packet`` messages, sans-I/O.

The schema is ``packet.proto`` beside this file. Three fields do not warrant a protobuf
runtime on the hot path, so :func:`encode_packet` and :func:`decode_packet` implement
proto3's wire format for them directly (varints, length-delimited bytes, unknown fields
skipped as the format requires); the tests check both against the ``.proto`` compiled
with ``protoc``.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxgate.errors import RemoteProtocolError

#: Largest ingest message the spec allows, protobuf overhead included.
MAX_INGEST_MESSAGE = 32 * 1024

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class PacketError(RemoteProtocolError):
    """A frame that is not a valid ``Packet``."""

    code = "invalid_packet"


@dataclass(frozen=True, slots=True)
class Packet:
    sequence_number: int = 0
    timestamp: int = 0
    payload: bytes = b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_packet(sequence_number: int, timestamp: int, payload: bytes) -> bytes:
    """One ``Packet`` message; proto3 leaves zero-valued fields out."""
    parts = []
    if sequence_number:
        parts.append(b"\x08" + _varint(sequence_number & 0xFFFFFFFF))
    if timestamp:
        parts.append(b"\x10" + _varint(timestamp & 0xFFFFFFFF))
    if payload:
        parts.append(b"\x2a" + _varint(len(payload)) + payload)
    return b"".join(parts)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise PacketError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise PacketError("varint longer than 10 bytes")


def decode_packet(data: bytes) -> Packet:
    """Parse one message; raises :class:`PacketError` for anything malformed."""
    seq = ts = 0
    payload = b""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise PacketError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            if field == 1:
                seq = value & 0xFFFFFFFF
            elif field == 2:
                ts = value & 0xFFFFFFFF
        elif wire == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise PacketError("length-delimited field runs past the message")
            if field == 5:
                payload = data[pos : pos + length]
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise PacketError("fixed-width field runs past the message")
        else:
            raise PacketError(f"unsupported wire type {wire}")
        if (field in (1, 2) and wire != _VARINT) or (field == 5 and wire != _LEN):
            raise PacketError(f"field {field} has the wrong wire type")
    return Packet(seq, ts, payload)
