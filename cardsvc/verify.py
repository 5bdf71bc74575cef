"""Pure verification of a card tap, shared by the kiosk (offline) and the server (online).

A tap proves that the card holding a city-issued certificate is present: the kiosk sends a
fresh `TapChallenge` (bound to the kiosk, its counter, the time and a nonce), the card signs
SHA-256 of its bytes with its card-authentication key (PIV slot 9E, ECDSA P-256), and
`verify_tap` checks, in this order:

1. the certificate parses, and the CA certificate was valid at `now`;
2. the certificate was signed by the city card CA (issuer name and signature);
3. its validity period contains `now`;
4. it names the card's GUID (subjectAltName URI ``urn:uuid:<GUID>``, see ca.py), which is not
   revoked and is the GUID the challenge was made for;
5. the signature over the challenge verifies with the certificate's public key.

The card's role (`card_role`, `VerifiedCard.role`): a staff card's certificate carries the
certificate policy `STAFF_CARD_POLICY` (set by `cardsvc.ca.CardCA.issue(..., role=STAFF)`); a
resident's card carries no OneCard policy. The policy is an X.667 UUID OID (2.25.<uuid>), which
needs no registration. The role is read only from a certificate that passed steps 1-4, so it is
as trustworthy as the city card CA; a kiosk enters maintenance only for a STAFF card, and the
server never takes a staff card for a resident's (it is not in its register of residents' cards).
A staff card's PIN is checked by the card itself (VERIFY), never by the kiosk.

A staff card also holds a PIV authentication key (slot 9A), which the card uses only after
its PIN was verified (SP 800-73-4: PIN before each use in the session). Its certificate carries
`STAFF_SIGN_IN_POLICY` besides the staff policy (`VerifiedCard.pin_bound`); staff sign-in on the
server accepts only such a certificate, so a signature it accepts was made after the PIN, by the
card itself. The 9E certificate never carries it (9E signs without a PIN).

A clone (every readable object copied to another card, but not the private key) fails at 5.
The challenge layout and its JSON form are fixed in docs/interfaces.md.

Uses `cryptography` only: no pyscard, no I/O, no clock unless `now` is left out.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from .errors import CardVerificationError, VerificationFailure

TAP_DOMAIN = b"ONECARD-TAP-v1"
GUID_LENGTH = 16
NONCE_LENGTH = 16
_U64 = 1 << 64

STAFF_CARD_POLICY = x509.ObjectIdentifier("2.25.176198129014152726890687880169752508991")
"""Certificate policy of a OneCard staff card (technicians, station staff)."""

STAFF_SIGN_IN_POLICY = x509.ObjectIdentifier("2.25.187032726940496799002908900798281492415")
"""Certificate policy of a staff card's PIV authentication certificate (slot 9A): its key signs
only after the card's PIN, so staff sign-in accepts this certificate only."""


class CardRole(StrEnum):
    """Whose card a certificate is: a resident's (no OneCard policy) or staff's."""

    RESIDENT = "resident"
    STAFF = "staff"


def certificate_policies(certificate: x509.Certificate) -> frozenset[x509.ObjectIdentifier]:
    """The certificate policies a certificate names (none: empty)."""
    try:
        policies = certificate.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(p.policy_identifier for p in policies)


def card_role(certificate: x509.Certificate) -> CardRole:
    """STAFF when the certificate carries STAFF_CARD_POLICY, else RESIDENT. Call it only on a
    certificate that verified (`verify_certificate`): the role is the CA's word."""
    if STAFF_CARD_POLICY in certificate_policies(certificate):
        return CardRole.STAFF
    return CardRole.RESIDENT


@dataclass(frozen=True)
class TapChallenge:
    """What a kiosk asks a card to sign at a tap (docs/interfaces.md, "The tap challenge")."""

    kiosk_id: str
    counter: int
    time_ms: int
    nonce: bytes
    card_guid: bytes

    def __post_init__(self) -> None:
        kiosk = self.kiosk_id.encode()
        if not 1 <= len(kiosk) <= 255:
            raise ValueError("kiosk_id must be 1 to 255 bytes of UTF-8")
        if not 0 <= self.counter < _U64 or not 0 <= self.time_ms < _U64:
            raise ValueError("counter and time_ms must fit in an unsigned 64-bit integer")
        if len(self.nonce) != NONCE_LENGTH:
            raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
        if len(self.card_guid) != GUID_LENGTH:
            raise ValueError(f"card_guid must be {GUID_LENGTH} bytes")

    def to_bytes(self) -> bytes:
        kiosk = self.kiosk_id.encode()
        return b"".join(
            [
                TAP_DOMAIN,
                b"\x00",
                bytes([len(kiosk)]),
                kiosk,
                self.counter.to_bytes(8, "big"),
                self.time_ms.to_bytes(8, "big"),
                self.nonce,
                self.card_guid,
            ]
        )

    def digest(self) -> bytes:
        """SHA-256 of `to_bytes()`: what the card signs."""
        return hashlib.sha256(self.to_bytes()).digest()

    def to_json(self, signature: bytes) -> dict[str, Any]:
        """The proof as the kiosk sends it to the server."""
        return {
            "kiosk_id": self.kiosk_id,
            "counter": self.counter,
            "time_ms": self.time_ms,
            "nonce": self.nonce.hex(),
            "card_guid": self.card_guid.hex(),
            "signature": base64.b64encode(signature).decode(),
        }

    @classmethod
    def from_json(cls, proof: Any) -> tuple[TapChallenge, bytes]:
        """Parse a proof; raises `CardVerificationError(MALFORMED_PROOF)` on any defect."""
        try:
            if not isinstance(proof, dict):
                raise ValueError("the proof is not a JSON object")
            kiosk_id, counter, time_ms = proof["kiosk_id"], proof["counter"], proof["time_ms"]
            if not isinstance(kiosk_id, str):
                raise ValueError("kiosk_id is not a string")
            for name, value in (("counter", counter), ("time_ms", time_ms)):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{name} is not an integer")
            nonce = _hex_field(proof, "nonce")
            card_guid = _hex_field(proof, "card_guid")
            signature_text = proof["signature"]
            if not isinstance(signature_text, str):
                raise ValueError("signature is not a string")
            signature = base64.b64decode(signature_text, validate=True)
            return cls(kiosk_id, counter, time_ms, nonce, card_guid), signature
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise CardVerificationError(VerificationFailure.MALFORMED_PROOF, str(exc)) from exc


def _hex_field(proof: dict[str, Any], name: str) -> bytes:
    value = proof[name]
    if not isinstance(value, str) or len(value) != 32:
        raise ValueError(f"{name} must be 32 hex characters")
    return bytes.fromhex(value)


@dataclass(frozen=True)
class VerifiedCard:
    """A card that passed `verify_tap`."""

    guid: bytes
    not_after: datetime
    certificate: x509.Certificate

    @property
    def role(self) -> CardRole:
        return card_role(self.certificate)

    @property
    def pin_bound(self) -> bool:
        """A staff card's 9A certificate: its key signs only after the card's PIN."""
        policies = certificate_policies(self.certificate)
        return STAFF_CARD_POLICY in policies and STAFF_SIGN_IN_POLICY in policies

    @property
    def public_key_der(self) -> bytes:
        """The card's public key (SubjectPublicKeyInfo DER), as the server records it."""
        return self.certificate.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )


def load_certificate(data: bytes | x509.Certificate) -> x509.Certificate:
    """A certificate from DER or PEM; raises `CardVerificationError(MALFORMED_CERTIFICATE)`."""
    if isinstance(data, x509.Certificate):
        return data
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise CardVerificationError(VerificationFailure.MALFORMED_CERTIFICATE, str(exc)) from exc


def guid_from_certificate(certificate: x509.Certificate) -> bytes:
    """The card GUID a card certificate names (subjectAltName URI urn:uuid:…)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CardVerificationError(
            VerificationFailure.MALFORMED_CERTIFICATE, "no subjectAltName with the card GUID"
        ) from exc
    except ValueError as exc:
        raise CardVerificationError(VerificationFailure.MALFORMED_CERTIFICATE, str(exc)) from exc
    for name in san.get_values_for_type(x509.UniformResourceIdentifier):
        if name.lower().startswith("urn:uuid:"):
            try:
                return uuid.UUID(name[9:]).bytes
            except ValueError as exc:
                raise CardVerificationError(
                    VerificationFailure.MALFORMED_CERTIFICATE, f"bad card GUID {name!r}"
                ) from exc
    raise CardVerificationError(
        VerificationFailure.MALFORMED_CERTIFICATE, "no urn:uuid card GUID in subjectAltName"
    )


def verify_signature(
    public_key: ec.EllipticCurvePublicKey | bytes, challenge: TapChallenge, signature: bytes
) -> None:
    """Check the card's signature over `challenge`; `public_key` may be SubjectPublicKeyInfo DER.

    Raises `CardVerificationError` (BAD_SIGNATURE, or UNSUPPORTED_KEY for a non-P-256 key).
    """
    if isinstance(public_key, bytes):
        try:
            public_key = load_der_public_key(public_key)  # type: ignore[assignment]
        except (ValueError, TypeError) as exc:
            raise CardVerificationError(VerificationFailure.UNSUPPORTED_KEY, str(exc)) from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CardVerificationError(
            VerificationFailure.UNSUPPORTED_KEY, "the card key is not P-256"
        )
    try:
        public_key.verify(signature, challenge.to_bytes(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise CardVerificationError(VerificationFailure.BAD_SIGNATURE) from exc


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@functools.lru_cache(maxsize=65_536)
def _issuer_refusal(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    """Why `ca` did not sign `cert`, or None if it did. A signature check costs more than the
    rest of a tap's verification and its answer never changes for the same two certificates
    (they are hashed and compared by their DER bytes), so it is kept."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return str(exc) or type(exc).__name__
    return None


def verify_certificate(
    certificate: bytes | x509.Certificate,
    ca_certificate: bytes | x509.Certificate,
    *,
    now: datetime | None = None,
    revoked: Collection[bytes | str] = frozenset(),
) -> VerifiedCard:
    """Steps 1 to 4 of `verify_tap`: a genuine, valid, unrevoked card certificate."""
    now = _aware(now or datetime.now(UTC))
    cert = load_certificate(certificate)
    ca = load_certificate(ca_certificate)
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        raise CardVerificationError(VerificationFailure.UNTRUSTED_ISSUER, "the CA is not valid now")
    refused = _issuer_refusal(cert, ca)
    if refused is not None:
        raise CardVerificationError(VerificationFailure.UNTRUSTED_ISSUER, refused)
    if now < cert.not_valid_before_utc:
        raise CardVerificationError(
            VerificationFailure.NOT_YET_VALID, f"valid from {cert.not_valid_before_utc:%Y-%m-%d}"
        )
    if now > cert.not_valid_after_utc:
        raise CardVerificationError(
            VerificationFailure.EXPIRED, f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        )
    guid = guid_from_certificate(cert)
    if guid in revoked or guid.hex() in revoked:
        raise CardVerificationError(VerificationFailure.REVOKED, f"card {guid.hex()}")
    return VerifiedCard(guid, cert.not_valid_after_utc, cert)


def verify_tap(
    certificate_der: bytes | x509.Certificate,
    ca_certificate_der: bytes | x509.Certificate,
    challenge: TapChallenge,
    signature: bytes,
    *,
    now: datetime | None = None,
    revoked: Collection[bytes | str] = frozenset(),
) -> VerifiedCard:
    """Verify a tap offline; return the card, or raise `CardVerificationError(reason)`.

    `revoked` holds revoked card GUIDs (16 bytes, or 32 lower-case hex characters).
    `now` defaults to the current time (naive datetimes are taken as UTC).
    """
    card = verify_certificate(certificate_der, ca_certificate_der, now=now, revoked=revoked)
    if card.guid != challenge.card_guid:
        raise CardVerificationError(
            VerificationFailure.GUID_MISMATCH,
            f"certificate for {card.guid.hex()}, challenge for {challenge.card_guid.hex()}",
        )
    verify_signature(card.certificate.public_key(), challenge, signature)  # type: ignore[arg-type]
    return card
