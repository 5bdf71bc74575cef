"""APDU codec and processor: hex literals, chaining, 61xx and 6Cxx, against scripted cards."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardsvc.apdu import SW, ApduProcessor, CommandApdu, card_capabilities, split_response
from cardsvc.errors import ApduError, BadResponseError, NotFoundError, SecurityStatusError
from cardsvc.vcard import ATR

CASES = [
    # (apdu, hex)
    (CommandApdu(0x00, 0xFD, 0x00, 0x00), "00fd0000"),
    (CommandApdu(0x00, 0xFD, 0x00, 0x00, ne=256), "00fd000000"),
    (
        CommandApdu(0x00, 0xCB, 0x3F, 0xFF, bytes.fromhex("5c035fc102"), 256),
        "00cb3fff055c035fc10200",
    ),
    (CommandApdu(0x00, 0x20, 0x00, 0x80, b"123456\xff\xff"), "0020008008313233343536ffff"),
    (CommandApdu(0x00, 0xCB, 0x3F, 0xFF, b"\x5c\x01\x7e", 65536, True), "00cb3fff0000035c017e0000"),
    (CommandApdu(0x00, 0xC0, 0x00, 0x00, ne=65536, extended=True), "00c00000000000"),
    (CommandApdu(0x00, 0xDB, 0x3F, 0xFF, bytes(300)), "00db3fff00012c" + "00" * 300),
    (
        CommandApdu(0x00, 0x87, 0x11, 0x9E, b"\x7c\x00", 1000, True),
        "008711 9e0000027c0003e8".replace(" ", ""),
    ),
]


@pytest.mark.parametrize(("apdu", "hex_"), CASES)
def test_command_apdu_round_trips_through_hex(apdu: CommandApdu, hex_: str) -> None:
    assert apdu.to_bytes().hex() == hex_
    parsed = CommandApdu.parse(bytes.fromhex(hex_))
    assert (parsed.cla, parsed.ins, parsed.p1, parsed.p2, parsed.data, parsed.ne) == (
        apdu.cla,
        apdu.ins,
        apdu.p1,
        apdu.p2,
        apdu.data,
        apdu.ne,
    )


@pytest.mark.parametrize("hex_", ["", "00", "00a404", "00a4040005a0000003", "00a40400000002a0"])
def test_malformed_command_apdus_are_refused(hex_: str) -> None:
    with pytest.raises(BadResponseError):
        CommandApdu.parse(bytes.fromhex(hex_))


@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=600),
    st.integers(0, 65536),
    st.booleans(),
)
def test_any_command_apdu_round_trips(
    cla: int, ins: int, p1: int, p2: int, data: bytes, ne: int, extended: bool
) -> None:
    apdu = CommandApdu(cla, ins, p1, p2, data, ne, extended)
    parsed = CommandApdu.parse(apdu.to_bytes())
    assert (parsed.data, parsed.ne) == (data, ne)


@given(st.binary(max_size=300))
def test_parse_never_crashes_on_garbage(raw: bytes) -> None:
    with contextlib.suppress(BadResponseError):
        CommandApdu.parse(raw)


def test_split_response() -> None:
    assert split_response(bytes.fromhex("01029000")) == (b"\x01\x02", 0x9000)
    with pytest.raises(BadResponseError):
        split_response(b"\x90")


class ScriptedCard:
    """A card that answers from a script of (expected command hex, response hex)."""

    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script = list(script)

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        expected, response = self.script.pop(0)
        assert apdu.hex() == expected
        return split_response(bytes.fromhex(response))


def test_response_chaining_on_61xx() -> None:
    card = ScriptedCard(
        [
            ("00cb3fff055c035fc10100", "aabb6102"),
            ("00c0000002", "ccdd6101"),
            ("00c0000001", "ee9000"),
        ]
    )
    processor = ApduProcessor(card)
    assert processor.send(0x00, 0xCB, 0x3F, 0xFF, bytes.fromhex("5c035fc101")) == bytes.fromhex(
        "aabbccddee"
    )
    assert processor.apdu_count == 3 and not card.script


def test_wrong_le_6cxx_is_retried_once() -> None:
    card = ScriptedCard([("00fd000000", "6c03"), ("00fd000003", "0100009000")])
    assert ApduProcessor(card).send(0x00, 0xFD, 0, 0) == b"\x01\x00\x00"


def test_command_chaining_for_long_data() -> None:
    data = bytes(range(256)) * 2  # 512 bytes: 255 + 255 + 2
    card = ScriptedCard(
        [
            ("10db3fffff" + data[:255].hex(), "9000"),
            ("10db3fffff" + data[255:510].hex(), "9000"),
            ("00db3fff02" + data[510:].hex(), "9000"),
        ]
    )
    ApduProcessor(card).send(0x00, 0xDB, 0x3F, 0xFF, data, ne=0)
    assert not card.script


def test_extended_apdu_instead_of_chaining() -> None:
    data = bytes(300)
    card = ScriptedCard([("00db3fff00012c" + data.hex(), "9000")])
    ApduProcessor(card, extended=True).send(0x00, 0xDB, 0x3F, 0xFF, data, ne=0)
    assert not card.script


def test_chaining_stops_at_the_first_refusal() -> None:
    card = ScriptedCard([("10db3fffff" + "00" * 255, "6982")])
    with pytest.raises(SecurityStatusError):
        ApduProcessor(card).send(0x00, 0xDB, 0x3F, 0xFF, bytes(300), ne=0)


@pytest.mark.parametrize(
    ("sw", "error"), [(0x6A82, NotFoundError), (0x6982, SecurityStatusError), (0x6F00, ApduError)]
)
def test_status_words_become_typed_errors(sw: int, error: type[ApduError]) -> None:
    card = ScriptedCard([("00fd000000", f"{sw:04x}")])
    with pytest.raises(error) as caught:
        ApduProcessor(card).send(0x00, 0xFD, 0, 0)
    assert caught.value.sw == sw


def test_sw_enum_values() -> None:
    assert SW.OK == 0x9000 and SW.FILE_NOT_FOUND == 0x6A82


@pytest.mark.parametrize(
    ("atr", "expected"),
    [
        (ATR.hex(), (True, True)),
        ("3bf81300008131fe15597562696b657934d4", (False, False)),  # no category-80 capabilities
        ("3b8880010000000000000000", (False, False)),
        ("3b", (False, False)),
    ],
)
def test_card_capabilities_from_the_atr(atr: str, expected: tuple[bool, bool]) -> None:
    assert card_capabilities(bytes.fromhex(atr)) == expected


def test_the_virtual_atr_is_contact_style() -> None:
    assert ATR[0] == 0x3B and not (ATR[1] & 0xF0 == 0x80 and ATR[2:4] == b"\x80\x01")
    tck = 0
    for byte in ATR[1:]:
        tck ^= byte
    assert tck == 0  # the check byte is right


def test_traffic_log_withholds_pins(caplog: pytest.LogCaptureFixture) -> None:
    from cardsvc.apdu import TRAFFIC

    card = ScriptedCard([("0020008008313233343536ffff", "9000"), ("00fd000000", "0100009000")])
    processor = ApduProcessor(card)
    with caplog.at_level(TRAFFIC, logger="cardsvc.apdu"):
        processor.send(0x00, 0x20, 0x00, 0x80, b"123456\xff\xff", ne=0)
        processor.send(0x00, 0xFD, 0, 0)
    text = caplog.text
    assert "313233343536" not in text and "withheld" in text
    assert "00fd000000" in text


def test_endless_61xx_is_refused() -> None:
    class Endless:
        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            return b"", 0x6100

    with pytest.raises(BadResponseError, match="without end"):
        ApduProcessor(Endless()).send(0x00, 0xCB, 0x3F, 0xFF, b"\x5c\x01\x7e")
