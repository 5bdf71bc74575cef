"""BER-TLV (ISO/IEC 7816-4 section 5.2, the subset the PIV card application uses).

Tags of one to three bytes (tag numbers >= 31 continue in following bytes while bit 8 is set);
definite lengths in short form (< 0x80) and long form 0x81..0x83. Indefinite lengths, and lengths
above 0xFFFFFF, are refused. Tags are handled as the integer of their bytes (0x5FC102, 0x7F49).

Every parser raises `TlvError` on bytes that do not fit; none of them reads past its input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import TlvError

_MAX_TAG_BYTES = 3


def encode_tag(tag: int) -> bytes:
    if tag < 0:
        raise ValueError(f"negative tag {tag}")
    raw = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    multi = raw[0] & 0x1F == 0x1F
    if (
        len(raw) > _MAX_TAG_BYTES
        or multi != (len(raw) > 1)
        or (multi and (any(b & 0x80 == 0 for b in raw[1:-1]) or raw[-1] & 0x80))
    ):
        raise ValueError(f"{tag:X} is not a BER-TLV tag")
    return raw


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    if length <= 0xFF:
        return bytes([0x81, length])
    if length <= 0xFFFF:
        return b"\x82" + length.to_bytes(2, "big")
    if length <= 0xFFFFFF:
        return b"\x83" + length.to_bytes(3, "big")
    raise ValueError(f"length {length} too large for BER-TLV")


def _read_tag(data: bytes, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise TlvError("truncated TLV: no tag")
    start = offset
    first = data[offset]
    offset += 1
    if first & 0x1F == 0x1F:
        while True:
            if offset >= len(data):
                raise TlvError("truncated TLV: tag continues past the end")
            byte = data[offset]
            offset += 1
            if offset - start > _MAX_TAG_BYTES:
                raise TlvError("TLV tag longer than 3 bytes")
            if not byte & 0x80:
                break
    return int.from_bytes(data[start:offset], "big"), offset


def _read_length(data: bytes, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise TlvError("truncated TLV: no length")
    first = data[offset]
    offset += 1
    if first < 0x80:
        return first, offset
    count = first & 0x7F
    if count == 0:
        raise TlvError("indefinite TLV length is not allowed")
    if count > 3:
        raise TlvError(f"TLV length of {count} bytes is not allowed")
    if offset + count > len(data):
        raise TlvError("truncated TLV: length continues past the end")
    return int.from_bytes(data[offset : offset + count], "big"), offset + count


@dataclass(frozen=True)
class Tlv:
    """One BER-TLV data object: a tag and its value bytes."""

    tag: int
    value: bytes = b""

    @property
    def constructed(self) -> bool:
        """True when the value is itself a sequence of data objects (bit 6 of the first tag byte)."""
        return bool(encode_tag(self.tag)[0] & 0x20)

    def to_bytes(self) -> bytes:
        return encode_tag(self.tag) + encode_length(len(self.value)) + self.value

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def parse_from(cls, data: bytes, offset: int = 0) -> tuple[Tlv, int]:
        """Parse one object at `offset`; return it and the offset just after it."""
        tag, offset = _read_tag(data, offset)
        length, offset = _read_length(data, offset)
        end = offset + length
        if end > len(data):
            raise TlvError(
                f"truncated TLV: tag {tag:X} wants {length} bytes, {len(data) - offset} left"
            )
        return cls(tag, bytes(data[offset:end])), end

    @classmethod
    def parse(cls, data: bytes) -> Tlv:
        """Parse exactly one object that fills `data`."""
        tlv, end = cls.parse_from(data)
        if end != len(data):
            raise TlvError(f"{len(data) - end} extra bytes after TLV tag {tlv.tag:X}")
        return tlv


def encode(tag: int, value: bytes | Iterable[Tlv] = b"") -> bytes:
    """The bytes of one object; `value` may be raw bytes or the objects inside it."""
    if not isinstance(value, bytes | bytearray):
        value = b"".join(t.to_bytes() for t in value)
    return Tlv(tag, bytes(value)).to_bytes()


def parse_list(data: bytes) -> list[Tlv]:
    """All objects in `data`, in order."""
    result = []
    offset = 0
    while offset < len(data):
        tlv, offset = Tlv.parse_from(data, offset)
        result.append(tlv)
    return result


def parse_dict(data: bytes) -> dict[int, bytes]:
    """The objects in `data` by tag (the last one wins if a tag repeats)."""
    return {t.tag: t.value for t in parse_list(data)}


def unpack(tag: int, data: bytes) -> bytes:
    """The value of the single object `data`, which must carry `tag`."""
    tlv = Tlv.parse(data)
    if tlv.tag != tag:
        raise TlvError(f"expected TLV tag {tag:X}, got {tlv.tag:X}")
    return tlv.value


def find(tag: int, data: bytes) -> bytes | None:
    """The value of the first object with `tag` among the objects in `data`, or None."""
    for tlv in parse_list(data):
        if tlv.tag == tag:
            return tlv.value
    return None
