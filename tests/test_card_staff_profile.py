"""The staff-card profile (cardsvc.verify.STAFF_CARD_POLICY): the city card CA marks a staff
card's certificate with the staff policy, and verification tells staff from residents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cardsvc.ca import CardCA
from cardsvc.errors import CardVerificationError, VerificationFailure
from cardsvc.verify import STAFF_CARD_POLICY, CardRole, card_role, verify_certificate

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
