"""The staff-card profile (cardsvc.verify.STAFF_CARD_POLICY): the city card CA marks a staff
card's certificate with the staff policy, and verification tells staff from residents. A staff
card also carries a PIN-bound 9A key and certificate (STAFF_SIGN_IN_POLICY), made at issuance,
which the virtual card, as a real PIV card, refuses to use before VERIFY PIN (SW 6982); the 9E
key keeps signing without a PIN, and a resident's card is issued as before, without 9A."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cardsvc.apdu import split_response
from cardsvc.ca import CardCA
from cardsvc.errors import (
    CardVerificationError,
    InvalidPinError,
    NotFoundError,
    SecurityStatusError,
    VerificationFailure,
)
from cardsvc.piv import Algorithm, PivSession, Slot
from cardsvc.profile import sign_in
from cardsvc.provision import provision_card
from cardsvc.signin import SignInChallenge, verify_sign_in_signature
from cardsvc.vcard import VirtualPivCard
from cardsvc.verify import (
    STAFF_CARD_POLICY,
    STAFF_SIGN_IN_POLICY,
    CardRole,
    card_role,
    verify_certificate,
)

NOW = datetime.now(UTC)


@pytest.fixture
def ca(tmp_path: Path) -> CardCA:
    return CardCA.create(tmp_path / "ca", now=NOW - timedelta(days=1))


@pytest.mark.parametrize("role", [CardRole.RESIDENT, CardRole.STAFF])
def test_the_role_is_the_one_the_ca_certified(ca: CardCA, role: CardRole) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    guid = uuid.uuid4().bytes
    der = ca.issue(key.public_key(), guid, NOW + timedelta(days=30), role=role)
    if role is CardRole.STAFF:  # what provisioning a staff card calls
        der = ca.staff_issuer().issue(key.public_key(), guid, NOW + timedelta(days=30))
    card = verify_certificate(der, ca.certificate_der, now=NOW)
    assert card.role is role
    policies = [
        p.policy_identifier
        for ext in x509.load_der_x509_certificate(der).extensions
        if isinstance(ext.value, x509.CertificatePolicies)
        for p in ext.value
    ]
    assert policies == ([STAFF_CARD_POLICY] if role is CardRole.STAFF else [])


def test_a_staff_policy_from_another_ca_gets_no_further_than_verification(
    ca: CardCA, tmp_path: Path
) -> None:
    """The role is read from a verified certificate only: a self-made 'staff' card fails first."""
    other = CardCA.create(tmp_path / "other", now=NOW - timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    der = other.issue(
        key.public_key(), uuid.uuid4().bytes, NOW + timedelta(days=30), role=CardRole.STAFF
    )
    assert card_role(x509.load_der_x509_certificate(der)) is CardRole.STAFF
    with pytest.raises(CardVerificationError) as refused:
        verify_certificate(der, ca.certificate_der, now=NOW)
    assert refused.value.reason is VerificationFailure.UNTRUSTED_ISSUER


PIN = "24681357"


class Reader:
    """The virtual card as a PC/SC connection, in process."""

    supports_extended = True

    def __init__(self, card: VirtualPivCard) -> None:
        self.card = card

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return split_response(self.card.process(apdu))


def policies_of(der: bytes) -> list[x509.ObjectIdentifier]:
    return [
        p.policy_identifier
        for ext in x509.load_der_x509_certificate(der).extensions
        if isinstance(ext.value, x509.CertificatePolicies)
        for p in ext.value
    ]


def test_the_pin_bound_certificate_is_a_staff_cards_only(ca: CardCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    guid = uuid.uuid4().bytes
    der = ca.staff_issuer().issue_sign_in(key.public_key(), guid, NOW + timedelta(days=30))
    card = verify_certificate(der, ca.certificate_der, now=NOW)
    assert card.role is CardRole.STAFF and card.pin_bound and card.guid == guid
    assert policies_of(der) == [STAFF_CARD_POLICY, STAFF_SIGN_IN_POLICY]
    usage = card.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    nine_e = ca.staff_issuer().issue(key.public_key(), guid, NOW + timedelta(days=30))
    assert not verify_certificate(nine_e, ca.certificate_der, now=NOW).pin_bound
    with pytest.raises(ValueError, match="only a staff card"):
        ca.issue(key.public_key(), guid, NOW + timedelta(days=30), pin_bound=True)


@pytest.fixture
def staff_card(ca: CardCA, tmp_path: Path) -> VirtualPivCard:
    card = VirtualPivCard(tmp_path / "staff-card.json")
    issued = provision_card(PivSession(Reader(card)), ca.staff_issuer(), pin=PIN)
    assert issued.sign_in_certificate_der is not None
    card.reset()  # taken out of the issuing reader: the card forgets its security status
    return card


def test_a_staff_card_refuses_its_9a_key_before_the_pin(
    ca: CardCA, staff_card: VirtualPivCard
) -> None:
    """As a stolen card in a reader driven by other software: 9A answers 69 82 until VERIFY."""
    piv = PivSession(Reader(staff_card))
    piv.select()
    digest = bytes(range(32))
    with pytest.raises(SecurityStatusError) as refused:
        piv.sign_digest(Slot.AUTHENTICATION, digest, Algorithm.ECCP256)
    assert refused.value.sw == 0x6982  # security status not satisfied
    # The raw command, as any software would send it: GENERAL AUTHENTICATE, ECC P-256, 9A.
    template = bytes([0x7C, 0x24, 0x82, 0x00, 0x81, 0x20]) + digest
    answer = staff_card.process(bytes([0x00, 0x87, 0x11, 0x9A, len(template)]) + template + b"\x00")
    assert answer == b"\x69\x82"
    piv.sign_digest(Slot.CARD_AUTH, digest, Algorithm.ECCP256)  # 9E: no PIN, for the kiosks
    with pytest.raises(InvalidPinError):
        sign_in(piv, "11112222", digest)
    with pytest.raises(SecurityStatusError):  # a wrong PIN leaves 9A locked
        piv.sign_digest(Slot.AUTHENTICATION, digest, Algorithm.ECCP256)


def test_after_its_pin_a_staff_card_signs_in_with_its_9a_certificate(
    ca: CardCA, staff_card: VirtualPivCard
) -> None:
    piv = PivSession(Reader(staff_card))
    challenge = SignInChallenge("https://onecard.example", bytes(16), 2**40)
    certificate, signature = sign_in(piv, PIN, challenge.digest())
    card = verify_certificate(certificate, ca.certificate_der)
    assert card.pin_bound and card.role is CardRole.STAFF
    assert (
        card.guid
        == verify_certificate(piv.get_certificate(Slot.CARD_AUTH), ca.certificate_der).guid
    )
    verify_sign_in_signature(card.certificate.public_key(), challenge, signature)


def test_a_residents_card_is_issued_as_before_without_a_9a_key(ca: CardCA, tmp_path: Path) -> None:
    card = VirtualPivCard(tmp_path / "resident.json")
    piv = PivSession(Reader(card))
    issued = provision_card(piv, ca, pin=PIN)
    assert issued.sign_in_certificate_der is None
    assert verify_certificate(issued.certificate_der, ca.certificate_der).role is CardRole.RESIDENT
    with pytest.raises(NotFoundError):
        piv.get_certificate(Slot.AUTHENTICATION)
    tries = card.state["pin_tries"]
    with pytest.raises(NotFoundError):  # before its PIN is tried: no try spent
        sign_in(piv, PIN, bytes(32))
    assert card.state["pin_tries"] == tries
