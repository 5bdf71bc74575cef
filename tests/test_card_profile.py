"""The one-card profile: CHUID and FASC-N codecs, provisioning and the tap over the applet
in process (tests/test_card_pcsc.py does the same through pcscd)."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import given
from hypothesis import strategies as st

from cardsvc.apdu import split_response
from cardsvc.ca import CardCA
from cardsvc.errors import (
    AuthenticationError,
    BadResponseError,
    CardVerificationError,
    NotFoundError,
    TlvError,
    VerificationFailure,
)
from cardsvc.piv import ManagementKeyType, ObjectId, PivSession
from cardsvc.profile import Chuid, TapChallenge, encode_fasc_n, prove, read_card
from cardsvc.provision import diversify_management_key, provision_card
from cardsvc.vcard import VirtualPivCard
from cardsvc.verify import verify_tap

GUID = bytes.fromhex("0123456789abcdef0123456789abcdef")


class InProcessConnection:
    def __init__(self, card: VirtualPivCard) -> None:
        self.card = card
        self.supports_extended = True

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return split_response(self.card.process(apdu))


def test_fasc_n_matches_a_published_vector() -> None:
    # The non-federal FASC-N many PIV tools write by default (agency 9999, system 9999,
    # credential 999999, OC 3, OI 0000): an independent check of the 5-bit encoding and LRC.
    assert encode_fasc_n(org_category="3", org="0000").hex() == (
        "d4e739da739ced39ce739d836858210842108421c84210c3eb"
    )
    with pytest.raises(ValueError):
        encode_fasc_n(agency="99")


def test_chuid_round_trips_through_hex() -> None:
    chuid = Chuid(GUID, date(2031, 11, 23), encode_fasc_n(), b"\x30\x00")
    encoded = chuid.to_bytes()
    assert encoded.hex() == (
        "3019"
        + encode_fasc_n().hex()
        + "3410"
        + GUID.hex()
        + "3508"
        + b"20311123".hex()
        + "3e023000"
        + "fe00"
    )
    assert Chuid.parse(encoded) == chuid


@pytest.mark.parametrize(
    "contents",
    [
        "340f" + "00" * 15,
        "3508" + b"20311123".hex(),
        "3410" + GUID.hex() + "35083230333131333332",
        "3410" + GUID.hex(),
    ],
)
def test_chuid_without_guid_or_expiry_is_refused(contents: str) -> None:
    with pytest.raises(BadResponseError):
        Chuid.parse(bytes.fromhex(contents))


@given(st.binary(max_size=200))
def test_chuid_parser_raises_only_typed_errors(data: bytes) -> None:
    with contextlib.suppress(BadResponseError, TlvError):
        Chuid.parse(data)


@pytest.fixture
def ca(tmp_path: Path) -> CardCA:
    return CardCA.create(tmp_path / "ca")


@pytest.fixture
def piv(tmp_path: Path) -> PivSession:
    return PivSession(InProcessConnection(VirtualPivCard(tmp_path / "card.json")))


def test_provision_read_prove_verify(piv: PivSession, ca: CardCA) -> None:
    issued = provision_card(piv, ca)
    fresh = PivSession(piv.connection)
    card = read_card(fresh)
    assert (card.guid, card.certificate_der, card.expiry) == (
        issued.guid,
        issued.certificate_der,
        issued.expiry,
    )
    challenge = TapChallenge("K-0001", 1, 1795996800000, os.urandom(16), card.guid)
    signature = prove(fresh, challenge)
    assert fresh.apdu_count == 4
    verified = verify_tap(
        card.certificate_der, ca.certificate_der, challenge, signature, now=datetime.now(UTC)
    )
    assert verified.guid == issued.guid


def test_a_known_certificate_saves_an_apdu(piv: PivSession, ca: CardCA) -> None:
    issued = provision_card(piv, ca)
    fresh = PivSession(piv.connection)
    card = read_card(fresh, certificates={issued.guid: issued.certificate_der})
    prove(fresh, TapChallenge("K-0001", 1, 1, bytes(16), card.guid))
    assert fresh.apdu_count == 3


def test_chuid_carries_the_issuer_signature(piv: PivSession, ca: CardCA) -> None:
    provision_card(piv, ca)
    card = read_card(piv)
    assert card.chuid is not None
    signers = pkcs7.load_der_pkcs7_certificates(card.chuid.issuer_signature)
    assert signers == [ca.certificate]


def test_blank_card_has_nothing_to_read(piv: PivSession) -> None:
    with pytest.raises(NotFoundError):
        read_card(piv)


def test_provisioning_with_a_diversified_key_and_pin(piv: PivSession, ca: CardCA) -> None:
    key = diversify_management_key(b"master secret", GUID)
    assert len(key) == 16 and key != diversify_management_key(b"master secret", bytes(16))
    issued = provision_card(
        piv, ca, guid=GUID, new_management_key=(ManagementKeyType.AES128, key), pin="24681357"
    )
    assert issued.guid == GUID
    piv.select()
    with pytest.raises(AuthenticationError):
        piv.authenticate(bytes.fromhex("010203040506070801020304050607080102030405060708"))
    piv.authenticate(key, ManagementKeyType.AES128)
    piv.verify_pin("24681357")
    # Provisioning again with the card's own key restarts cleanly: a new key, the same GUID.
    again = provision_card(
        piv, ca, guid=GUID, management_key=key, management_key_type=ManagementKeyType.AES128
    )
    assert again.public_key_der != issued.public_key_der


def test_a_card_pulled_before_the_chuid_is_not_an_issued_card(tmp_path: Path, ca: CardCA) -> None:
    card = VirtualPivCard(tmp_path / "card.json")

    class PullAfterCertificate(InProcessConnection):
        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            if apdu[1] == 0xDB and bytes.fromhex("5c035fc102") in apdu:
                raise ConnectionError("card pulled")
            return super().send_and_receive(apdu)

    with pytest.raises(ConnectionError):
        provision_card(PivSession(PullAfterCertificate(card)), ca)
    with pytest.raises(NotFoundError):
        read_card(PivSession(InProcessConnection(card)))
    assert PivSession(InProcessConnection(card)).get_object(ObjectId.CARD_AUTH)  # cert is there


def test_an_expired_card_is_refused(piv: PivSession, ca: CardCA) -> None:
    provision_card(piv, ca, valid_days=1)
    card = read_card(piv)
    challenge = TapChallenge("K-0001", 1, 1, bytes(16), card.guid)
    with pytest.raises(CardVerificationError) as caught:
        verify_tap(
            card.certificate_der,
            ca.certificate_der,
            challenge,
            prove(piv, challenge),
            now=datetime(2040, 1, 1, tzinfo=UTC),
        )
    assert caught.value.reason is VerificationFailure.EXPIRED
