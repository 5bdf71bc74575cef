"""BER-TLV: hex round trips, refusals, and hypothesis fuzzing of every parser."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardsvc import tlv
from cardsvc.errors import TlvError
from cardsvc.tlv import Tlv

CASES = [
    (Tlv(0x53, b""), "5300"),
    (Tlv(0x5C, bytes.fromhex("5fc102")), "5c035fc102"),
    (Tlv(0x5FC102, b"\x01"), "5fc1020101"),
    (Tlv(0x7F49, bytes.fromhex("8603040506")), "7f49058603040506"),
    (Tlv(0x70, bytes(128)), "708180" + "00" * 128),
    (Tlv(0x53, bytes(300)), "5382012c" + "00" * 300),
    (Tlv(0x53, bytes(70000)), "5383011170" + "00" * 70000),
]


@pytest.mark.parametrize(("obj", "hex_"), CASES)
def test_round_trip_through_hex(obj: Tlv, hex_: str) -> None:
    assert obj.to_bytes().hex() == hex_
    assert Tlv.parse(bytes.fromhex(hex_)) == obj


def test_constructed_objects_and_helpers() -> None:
    data = tlv.encode(0x7C, [Tlv(0x82), Tlv(0x81, b"\x01\x02")])
    assert data.hex() == "7c06820081020102"
    assert Tlv.parse(data).constructed
    assert not Tlv(0x81).constructed
    inner = tlv.unpack(0x7C, data)
    assert tlv.parse_dict(inner) == {0x82: b"", 0x81: b"\x01\x02"}
    assert tlv.find(0x81, inner) == b"\x01\x02"
    assert tlv.find(0x85, inner) is None


@pytest.mark.parametrize(
    "hex_",
    [
        "",  # no tag
        "53",  # no length
        "5302aa",  # value shorter than its length
        "5f",  # tag continues past the end
        "5fc1",  # still continues
        "5fc1c20100",  # tag of 4 bytes
        "5380",  # indefinite length
        "5384000000010000",  # 4-byte length
        "538201",  # length continues past the end
        "530100ff",  # extra byte after the object
    ],
)
def test_malformed_tlv_is_refused(hex_: str) -> None:
    with pytest.raises(TlvError):
        Tlv.parse(bytes.fromhex(hex_))


@pytest.mark.parametrize("tag", [0x1F, 0x5F80, 0xBF2F01, 0x01FF, 0x5FC1C201])
def test_invalid_tags_are_not_encoded(tag: int) -> None:
    with pytest.raises(ValueError):
        Tlv(tag, b"").to_bytes()


def test_unpack_refuses_the_wrong_tag() -> None:
    with pytest.raises(TlvError, match="expected TLV tag 53"):
        tlv.unpack(0x53, bytes.fromhex("7e00"))


tags = st.sampled_from(
    [0x01, 0x30, 0x53, 0x5C, 0x70, 0x7C, 0x80, 0x9F1F, 0x5FC102, 0x7F49, 0xBF8101]
)


@given(tags, st.binary(max_size=2000))
def test_any_object_round_trips(tag: int, value: bytes) -> None:
    assert Tlv.parse(Tlv(tag, value).to_bytes()) == Tlv(tag, value)


@given(st.lists(st.tuples(tags, st.binary(max_size=300)), max_size=8))
def test_any_list_round_trips(objects: list[tuple[int, bytes]]) -> None:
    data = b"".join(Tlv(t, v).to_bytes() for t, v in objects)
    assert [(o.tag, o.value) for o in tlv.parse_list(data)] == objects


@given(st.binary(max_size=400))
def test_parsers_raise_only_tlv_error_on_garbage(data: bytes) -> None:
    for parser in (Tlv.parse, tlv.parse_list, tlv.parse_dict, lambda d: tlv.unpack(0x53, d)):
        with contextlib.suppress(TlvError):
            parser(data)


@given(tags, st.binary(min_size=1, max_size=300), st.data())
def test_truncated_objects_are_refused(tag: int, value: bytes, data: st.DataObject) -> None:
    encoded = Tlv(tag, value).to_bytes()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(TlvError):
        Tlv.parse(encoded[:cut])
