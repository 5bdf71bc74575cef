"""The PIV command set against the virtual card's applet, in process (no pcscd here: these
test the two sides of the codec and the card's rules; tests/test_card_pcsc.py goes through
pcscd)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import given, settings
from hypothesis import strategies as st

from cardsvc.apdu import split_response
from cardsvc.errors import (
    ApduError,
    ApplicationNotAvailableError,
    AuthenticationError,
    InvalidPinError,
    NotFoundError,
    PinBlockedError,
    SecurityStatusError,
)
from cardsvc.piv import (
    DEFAULT_MANAGEMENT_KEY,
    Algorithm,
    ManagementKeyType,
    ObjectId,
    PivSession,
    Slot,
    certificate_object,
    parse_certificate_object,
)
from cardsvc.tlv import Tlv
from cardsvc.vcard import VirtualPivCard


class InProcessConnection:
    """The applet as a `Connection`, counting what crosses."""

    def __init__(self, card: VirtualPivCard, *, extended: bool = True) -> None:
        self.card = card
        self.supports_extended = extended
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu)
        return split_response(self.card.process(apdu))


@pytest.fixture
def card(tmp_path: Path) -> VirtualPivCard:
    return VirtualPivCard(tmp_path / "card.json")


@pytest.fixture(params=[True, False], ids=["extended", "short"])
def piv(card: VirtualPivCard, request: pytest.FixtureRequest) -> PivSession:
    session = PivSession(InProcessConnection(card, extended=request.param))
    session.select()
    return session


def test_select_answers_the_application_property_template(card: VirtualPivCard) -> None:
    answer = card.process(bytes.fromhex("00a4040009a00000030800001000"))
    assert answer[-2:] == b"\x90\x00"
    assert (
        answer.startswith(bytes.fromhex("61"))
        and bytes.fromhex("4f0600001000010079074f05a000000308") in answer
    )


def test_select_of_another_application_is_not_found(card: VirtualPivCard) -> None:
    assert card.process(bytes.fromhex("00a4040007a0000002471001")) == bytes.fromhex("6a82")
    with pytest.raises(ApplicationNotAvailableError):
        PivSession(InProcessConnection(_NoPiv())).select()


class _NoPiv(VirtualPivCard):
    def __init__(self) -> None:
        super().__init__(None)

    def process(self, apdu: bytes) -> bytes:
        return bytes.fromhex("6a82")


def test_get_version_and_serial(piv: PivSession, card: VirtualPivCard) -> None:
    assert piv.get_version() == (1, 0, 0)
    assert piv.get_serial() == card.serial
    assert card.process(bytes.fromhex("00fd000000")) == bytes.fromhex("0100009000")


def test_unknown_instruction_and_class(card: VirtualPivCard) -> None:
    assert card.process(bytes.fromhex("00e2000000")) == bytes.fromhex("6d00")
    assert card.process(bytes.fromhex("80fd000000")) == bytes.fromhex("6e00")
    assert card.process(bytes.fromhex("00fd00")) == bytes.fromhex("6700")


def test_discovery_object_is_built_in(piv: PivSession) -> None:
    assert piv.get_object(ObjectId.DISCOVERY) == bytes.fromhex(
        "4f0ba0000003080000100001005f2f024000"
    )


def test_missing_object_is_not_found(piv: PivSession) -> None:
    with pytest.raises(NotFoundError):
        piv.get_object(ObjectId.CHUID)


def test_writes_need_the_management_key(piv: PivSession) -> None:
    with pytest.raises(SecurityStatusError):
        piv.put_object(ObjectId.CHUID, b"\x34\x10" + bytes(16))
    with pytest.raises(SecurityStatusError):
        piv.generate_key(Slot.CARD_AUTH)


@pytest.mark.parametrize(
    ("key_type", "key"),
    [
        (ManagementKeyType.TDES, DEFAULT_MANAGEMENT_KEY),
        (ManagementKeyType.AES128, bytes(range(16))),
        (ManagementKeyType.AES192, bytes(range(24))),
        (ManagementKeyType.AES256, bytes(range(32))),
    ],
)
def test_management_key_mutual_authentication(
    piv: PivSession, key_type: ManagementKeyType, key: bytes
) -> None:
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.set_management_key(key_type, key)
    piv.select()  # a new security status
    with pytest.raises(SecurityStatusError):
        piv.put_object(ObjectId.PRINTED, b"\x01")
    piv.authenticate(key, key_type)
    piv.put_object(ObjectId.PRINTED, b"\x01")


def test_wrong_management_key_is_refused(piv: PivSession) -> None:
    with pytest.raises(AuthenticationError, match="wrong management key"):
        piv.authenticate(bytes(24))
    with pytest.raises(AuthenticationError, match="not AES128"):
        piv.authenticate(bytes(16), ManagementKeyType.AES128)
    with pytest.raises(SecurityStatusError):
        piv.generate_key(Slot.CARD_AUTH)


def test_management_key_external_authentication(card: VirtualPivCard) -> None:
    from cardsvc.piv import encrypt_block

    card.process(bytes.fromhex("00a4040009a00000030800001000"))
    answer = card.process(bytes.fromhex("0087039b047c028100"))
    assert answer[-2:] == b"\x90\x00" and answer[:4] == bytes.fromhex("7c0a8108")
    response = encrypt_block(ManagementKeyType.TDES, DEFAULT_MANAGEMENT_KEY, answer[4:12])
    assert card.process(bytes.fromhex("0087039b0c7c0a8208") + response) == b"\x90\x00"
    assert card.session.management


def test_generate_sign_and_ecdh(piv: PivSession) -> None:
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_key = piv.generate_key(Slot.CARD_AUTH)
    digest = hashlib.sha256(b"tap").digest()
    signature = piv.sign_digest(Slot.CARD_AUTH, digest)
    public_key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    peer = ec.generate_private_key(ec.SECP256R1())
    secret = piv.calculate_secret(Slot.CARD_AUTH, peer.public_key())
    assert secret == peer.exchange(ec.ECDH(), public_key)


def test_p384_keys(piv: PivSession) -> None:
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_key = piv.generate_key(Slot.AUTHENTICATION, Algorithm.ECCP384)
    piv.verify_pin("123456")
    digest = hashlib.sha384(b"x").digest()
    signature = piv.sign_digest(Slot.AUTHENTICATION, digest, Algorithm.ECCP384)
    public_key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA384())))


def test_sign_with_an_empty_slot_or_the_wrong_algorithm(piv: PivSession) -> None:
    with pytest.raises(ApduError) as caught:
        piv.sign_digest(Slot.CARD_AUTH, bytes(32))
    assert caught.value.sw == 0x6A88
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(Slot.CARD_AUTH)
    with pytest.raises(ApduError) as caught:
        piv.sign_digest(Slot.CARD_AUTH, bytes(48), Algorithm.ECCP384)
    assert caught.value.sw == 0x6A80


def test_key_access_rules(piv: PivSession) -> None:
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    for slot in (Slot.AUTHENTICATION, Slot.SIGNATURE, Slot.CARD_AUTH):
        piv.generate_key(slot)
    piv.sign_digest(Slot.CARD_AUTH, bytes(32))  # 9E: no PIN, for physical access
    for slot in (Slot.AUTHENTICATION, Slot.SIGNATURE):
        with pytest.raises(SecurityStatusError):
            piv.sign_digest(slot, bytes(32))
    piv.verify_pin("123456")
    piv.sign_digest(Slot.AUTHENTICATION, bytes(32))
    piv.sign_digest(Slot.AUTHENTICATION, bytes(32))
    piv.sign_digest(Slot.SIGNATURE, bytes(32))
    with pytest.raises(SecurityStatusError):  # 9C: PIN always, once per signature
        piv.sign_digest(Slot.SIGNATURE, bytes(32))


def test_pin_protected_objects(piv: PivSession) -> None:
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.put_object(ObjectId.PRINTED, b"\x01\x01A")
    piv.select()
    with pytest.raises(SecurityStatusError):
        piv.get_object(ObjectId.PRINTED)
    piv.verify_pin("123456")
    assert piv.get_object(ObjectId.PRINTED) == b"\x01\x01A"


def test_wrong_pin_counts_down_then_blocks_and_puk_unblocks(piv: PivSession) -> None:
    assert piv.get_pin_attempts() == 3
    with pytest.raises(InvalidPinError) as caught:
        piv.verify_pin("000000")
    assert caught.value.attempts_remaining == 2
    assert "2 attempts left" in str(caught.value)
    piv.verify_pin("123456")  # a right PIN resets the counter
    assert piv.get_pin_attempts() == -1  # verified: the card does not say
    for left in (2, 1):
        with pytest.raises(InvalidPinError) as caught:
            piv.verify_pin("000000")
        assert caught.value.attempts_remaining == left
    with pytest.raises(PinBlockedError):
        piv.verify_pin("000000")
    with pytest.raises(PinBlockedError):
        piv.verify_pin("123456")
    assert piv.get_pin_attempts() == 0
    with pytest.raises(InvalidPinError) as caught:
        piv.unblock_pin("00000000", "654321")
    assert caught.value.puk and caught.value.attempts_remaining == 2
    piv.unblock_pin("12345678", "654321")
    piv.verify_pin("654321")


def test_change_pin_and_puk(piv: PivSession) -> None:
    piv.change_pin("123456", "24681357")
    with pytest.raises(InvalidPinError):
        piv.verify_pin("123456")
    piv.verify_pin("24681357")
    piv.change_puk("12345678", "87654321")
    with pytest.raises(InvalidPinError):
        piv.change_puk("12345678", "11111111")
    with pytest.raises(ApduError) as caught:
        piv.change_pin("24681357", "12")  # too short
    assert caught.value.sw == 0x6A80


def test_reset_only_when_pin_and_puk_are_blocked(piv: PivSession, card: VirtualPivCard) -> None:
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(Slot.CARD_AUTH)
    assert card.process(bytes.fromhex("00fb0000")) == bytes.fromhex("6985")
    for _ in range(3):
        with pytest.raises((InvalidPinError, PinBlockedError)):
            piv.verify_pin("000000")
        with pytest.raises((InvalidPinError, PinBlockedError)):
            piv.change_puk("00000000", "11111111")
    assert card.process(bytes.fromhex("00fb0000")) == bytes.fromhex("9000")
    assert card.state["keys"] == {} and card.state["pin_tries"] == 3


def test_state_persists_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    card = VirtualPivCard(path)
    piv = PivSession(InProcessConnection(card))
    piv.select()
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    public_key = piv.generate_key(Slot.CARD_AUTH)
    piv.put_certificate(Slot.CARD_AUTH, b"0\x03\x02\x01\x00")
    with pytest.raises(InvalidPinError):
        piv.verify_pin("999999")
    again = PivSession(InProcessConnection(VirtualPivCard(path)))
    again.select()
    digest = bytes(32)
    public_key.verify(
        again.sign_digest(Slot.CARD_AUTH, digest), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
    )
    assert again.get_certificate(Slot.CARD_AUTH) == b"0\x03\x02\x01\x00"
    assert again.get_pin_attempts() == 2
    assert json.loads(path.read_text())["format"] == 1


def test_command_chaining_and_response_chaining_on_the_card(card: VirtualPivCard) -> None:
    piv = PivSession(InProcessConnection(card, extended=False))
    piv.select()
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    big = bytes(range(256)) * 8  # 2 KiB: chained in, 61xx out
    piv.put_certificate(Slot.CARD_AUTH, big)
    connection = piv.connection
    assert isinstance(connection, InProcessConnection)
    assert sum(1 for apdu in connection.sent if apdu[0] == 0x10) == 8
    sent_before = len(connection.sent)
    assert piv.get_certificate(Slot.CARD_AUTH) == big
    assert len(connection.sent) - sent_before == 9  # GET DATA + 8 GET RESPONSE


def test_get_response_without_pending_data(card: VirtualPivCard) -> None:
    assert card.process(bytes.fromhex("00c0000000")) == bytes.fromhex("6985")


def test_certificate_object_codec() -> None:
    contents = certificate_object(b"\x30\x00")
    assert contents.hex() == "70023000710100fe00"
    assert parse_certificate_object(contents) == b"\x30\x00"


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from([0x9000, 0x6A82, 0x6982, 0x63C1, 0x6983, 0x6100, 0x61FF, 0x6C05, 0x6F00]),
)
def test_garbage_answers_raise_only_card_errors(data: bytes, sw: int) -> None:
    from cardsvc.errors import CardError
    from cardsvc.profile import read_card

    class GarbageCard:
        supports_extended = False

        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            return data, sw

    piv = PivSession(GarbageCard())
    calls = [
        piv.select,
        piv.get_version,
        piv.get_serial,
        lambda: piv.get_object(ObjectId.CHUID),
        lambda: piv.get_certificate(Slot.CARD_AUTH),
        lambda: piv.generate_key(Slot.CARD_AUTH),
        lambda: piv.sign_digest(Slot.CARD_AUTH, bytes(32)),
        lambda: piv.authenticate(DEFAULT_MANAGEMENT_KEY),
        lambda: piv.verify_pin("123456"),
        piv.get_pin_attempts,
        lambda: read_card(piv),
    ]
    for call in calls:
        with contextlib.suppress(CardError):
            call()


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0x00, 0x10, 0x80]),
    st.sampled_from([0x20, 0x24, 0x2C, 0x47, 0x87, 0xA4, 0xC0, 0xCB, 0xDB, 0xF8, 0xFB, 0xFD, 0xFF]),
    st.sampled_from([0x00, 0x03, 0x04, 0x08, 0x11, 0x3F, 0xFF]),
    st.sampled_from([0x00, 0x80, 0x81, 0x9A, 0x9B, 0x9C, 0x9E, 0xFF]),
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda tag, value: Tlv(tag, value).to_bytes(),
            st.sampled_from([0x5C, 0x7C, 0xAC, 0x9B]),
            st.binary(max_size=40),
        ),
    ),
    st.booleans(),
)
def test_the_applet_answers_any_command_with_a_status_word(
    cla: int,
    ins: int,
    p1: int,
    p2: int,
    data: bytes,
    authed: bool,
) -> None:
    from cardsvc.apdu import CommandApdu

    card = VirtualPivCard(None)
    card.session.management = authed
    card.session.pin_verified = authed
    answer = card.process(CommandApdu(cla, ins, p1, p2, data, 256).to_bytes())
    assert len(answer) >= 2
    assert answer[-2] in (0x90, 0x61, 0x63, 0x67, 0x69, 0x6A, 0x6B, 0x6D, 0x6E)  # never 6F00
