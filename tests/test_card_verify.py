"""Pure verification of a tap: every refusal reason, each with a card that should pass
otherwise. Cards here are made with the real CA code and real ECDSA keys (no applet needed)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from cardsvc.ca import CardCA
from cardsvc.errors import CardVerificationError, VerificationFailure
from cardsvc.verify import (
    TapChallenge,
    guid_from_certificate,
    load_certificate,
    verify_certificate,
    verify_signature,
    verify_tap,
)

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
GUID = bytes.fromhex("0123456789abcdef0123456789abcdef")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CardCA:
    return CardCA.create(tmp_path_factory.mktemp("ca"), now=NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def card_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def certificate(ca: CardCA, card_key: ec.EllipticCurvePrivateKey) -> bytes:
    return ca.issue(
        card_key.public_key(), GUID, NOW + timedelta(days=365), not_before=NOW - timedelta(hours=1)
    )


def challenge(guid: bytes = GUID, counter: int = 17) -> TapChallenge:
    return TapChallenge("K-0001", counter, int(NOW.timestamp() * 1000), bytes(range(16)), guid)


def sign(key: ec.EllipticCurvePrivateKey, tap: TapChallenge) -> bytes:
    return key.sign(tap.to_bytes(), ec.ECDSA(hashes.SHA256()))


def refused(reason: VerificationFailure, *args: object, **kwargs: object) -> CardVerificationError:
    with pytest.raises(CardVerificationError) as caught:
        verify_tap(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason is reason, caught.value
    return caught.value


def test_challenge_bytes_follow_the_interface_document() -> None:
    tap = TapChallenge("K-0001", 17, 1795996800000, bytes(range(16)), GUID)
    assert tap.to_bytes().hex() == (
        b"ONECARD-TAP-v1".hex()
        + "00"
        + "06"
        + b"K-0001".hex()
        + "0000000000000011"
        + "000001a229c05400"
        + "000102030405060708090a0b0c0d0e0f"
        + GUID.hex()
    )
    assert tap.digest() == hashlib.sha256(tap.to_bytes()).digest()


def test_challenge_json_round_trip() -> None:
    tap = challenge()
    proof = tap.to_json(b"\x30\x01\x02")
    assert proof == {
        "kiosk_id": "K-0001",
        "counter": 17,
        "time_ms": tap.time_ms,
        "nonce": "000102030405060708090a0b0c0d0e0f",
        "card_guid": GUID.hex(),
        "signature": "MAEC",
    }
    assert TapChallenge.from_json(proof) == (tap, b"\x30\x01\x02")


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": "00"},
        {"card_guid": "zz" * 16},
        {"counter": -1},
        {"counter": "17"},
        {"counter": True},
        {"time_ms": 1 << 64},
        {"kiosk_id": ""},
        {"kiosk_id": 5},
        {"signature": "not base64!"},
        {"signature": None},
    ],
)
def test_malformed_proofs_are_refused(change: dict[str, object]) -> None:
    proof = {**challenge().to_json(b"\x30\x00"), **change}
    with pytest.raises(CardVerificationError) as caught:
        TapChallenge.from_json(proof)
    assert caught.value.reason is VerificationFailure.MALFORMED_PROOF


@given(
    st.dictionaries(
        st.sampled_from(["kiosk_id", "counter", "time_ms", "nonce", "card_guid", "signature", "x"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=40), st.booleans()),
    )
)
def test_from_json_raises_only_malformed_proof(proof: dict[str, object]) -> None:
    try:
        TapChallenge.from_json(proof)
    except CardVerificationError as exc:
        assert exc.reason is VerificationFailure.MALFORMED_PROOF


def test_a_good_card_passes(
    ca: CardCA, card_key: ec.EllipticCurvePrivateKey, certificate: bytes
) -> None:
    tap = challenge()
    verified = verify_tap(certificate, ca.certificate_der, tap, sign(card_key, tap), now=NOW)
    assert verified.guid == GUID
    assert verified.not_after == NOW + timedelta(days=365)
    assert verified.public_key_der == card_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_certificate_carries_only_the_guid(certificate: bytes, ca: CardCA) -> None:
    cert = x509.load_der_x509_certificate(certificate)
    assert cert.subject.rfc4514_string() == "CN=01234567-89ab-cdef-0123-456789abcdef"
    assert cert.issuer == ca.certificate.subject
    assert guid_from_certificate(cert) == GUID
    assert {e.oid.dotted_string for e in cert.extensions} == {
        "2.5.29.19",
        "2.5.29.15",
        "2.5.29.37",
        "2.5.29.17",
        "2.5.29.14",
        "2.5.29.35",
    }


def test_a_clone_without_the_private_key_fails(ca: CardCA, certificate: bytes) -> None:
    clone_key = ec.generate_private_key(ec.SECP256R1())
    tap = challenge()
    refused(
        VerificationFailure.BAD_SIGNATURE,
        certificate,
        ca.certificate_der,
        tap,
        sign(clone_key, tap),
        now=NOW,
    )


def test_a_tampered_challenge_fails(
    ca: CardCA, card_key: ec.EllipticCurvePrivateKey, certificate: bytes
) -> None:
    tap = challenge()
    signature = sign(card_key, tap)
    for tampered in (
        challenge(counter=18),
        TapChallenge("K-0002", 17, tap.time_ms, tap.nonce, GUID),
    ):
        refused(
            VerificationFailure.BAD_SIGNATURE,
            certificate,
            ca.certificate_der,
            tampered,
            signature,
            now=NOW,
        )
    refused(
        VerificationFailure.BAD_SIGNATURE,
        certificate,
        ca.certificate_der,
        tap,
        b"\x30\x00",
        now=NOW,
    )


def test_expired_and_not_yet_valid(
    ca: CardCA, card_key: ec.EllipticCurvePrivateKey, certificate: bytes
) -> None:
    tap = challenge()
    signature = sign(card_key, tap)
    refused(
        VerificationFailure.EXPIRED,
        certificate,
        ca.certificate_der,
        tap,
        signature,
        now=NOW + timedelta(days=366),
    )
    refused(
        VerificationFailure.NOT_YET_VALID,
        certificate,
        ca.certificate_der,
        tap,
        signature,
        now=NOW - timedelta(hours=2),
    )


def test_revoked(ca: CardCA, card_key: ec.EllipticCurvePrivateKey, certificate: bytes) -> None:
    tap = challenge()
    signature = sign(card_key, tap)
    refused(
        VerificationFailure.REVOKED,
        certificate,
        ca.certificate_der,
        tap,
        signature,
        now=NOW,
        revoked=frozenset({GUID}),
    )
    refused(
        VerificationFailure.REVOKED,
        certificate,
        ca.certificate_der,
        tap,
        signature,
        now=NOW,
        revoked={GUID.hex()},
    )


def test_another_issuer(
    tmp_path: Path, card_key: ec.EllipticCurvePrivateKey, certificate: bytes
) -> None:
    other = CardCA.create(tmp_path / "other", now=NOW - timedelta(days=1))
    tap = challenge()
    signature = sign(card_key, tap)
    refused(
        VerificationFailure.UNTRUSTED_ISSUER,
        certificate,
        other.certificate_der,
        tap,
        signature,
        now=NOW,
    )
    # Same name, other key: the signature on the certificate does not verify.
    forged = other.issue(card_key.public_key(), GUID, NOW + timedelta(days=30))
    ca_like = CardCA.create(tmp_path / "same-name", now=NOW - timedelta(days=1))
    refused(
        VerificationFailure.UNTRUSTED_ISSUER,
        forged,
        ca_like.certificate_der,
        tap,
        signature,
        now=NOW,
    )


def test_guid_mismatch(
    ca: CardCA, card_key: ec.EllipticCurvePrivateKey, certificate: bytes
) -> None:
    tap = challenge(guid=bytes(16))
    refused(
        VerificationFailure.GUID_MISMATCH,
        certificate,
        ca.certificate_der,
        tap,
        sign(card_key, tap),
        now=NOW,
    )


def test_malformed_certificate(ca: CardCA) -> None:
    tap = challenge()
    refused(
        VerificationFailure.MALFORMED_CERTIFICATE,
        b"\x30\x03\x02\x01\x00",
        ca.certificate_der,
        tap,
        b"",
        now=NOW,
    )
    with pytest.raises(CardVerificationError):
        load_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_certificate_without_guid(ca: CardCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    )
    with pytest.raises(CardVerificationError) as caught:
        verify_certificate(cert, ca.certificate, now=NOW)
    assert caught.value.reason is VerificationFailure.MALFORMED_CERTIFICATE


def test_verify_signature_with_a_recorded_public_key(card_key: ec.EllipticCurvePrivateKey) -> None:
    tap = challenge()
    der = card_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_signature(der, tap, sign(card_key, tap))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(CardVerificationError) as caught:
        verify_signature(
            p384.public_key(), tap, p384.sign(tap.to_bytes(), ec.ECDSA(hashes.SHA256()))
        )
    assert caught.value.reason is VerificationFailure.UNSUPPORTED_KEY


def test_ca_files_round_trip(tmp_path: Path) -> None:
    created = CardCA.create(tmp_path / "ca")
    loaded = CardCA.load(tmp_path / "ca")
    assert loaded.certificate_der == created.certificate_der
    assert oct((tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        CardCA.create(tmp_path / "ca")
    assert CardCA.load_or_create(tmp_path / "ca").certificate_der == created.certificate_der
    assert loaded.certificate_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE")


def test_naive_now_is_utc(
    ca: CardCA, card_key: ec.EllipticCurvePrivateKey, certificate: bytes
) -> None:
    tap = challenge()
    verify_tap(
        certificate, ca.certificate_der, tap, sign(card_key, tap), now=NOW.replace(tzinfo=None)
    )
