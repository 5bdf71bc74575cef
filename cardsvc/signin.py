"""The staff-card sign-in challenge: what the server asks a staff card to sign, and its check.

The server makes a challenge bound to its own origin (scheme://host[:port]), a random nonce and
an expiry; the desk's card service refuses to have the card sign a challenge for an origin
other than the page that asks (the request's Origin), VERIFYs the PIN, and has the card sign
SHA-256 of the challenge's bytes with its ECDSA P-256 key. The server then checks the card
certificate (cardsvc.verify.verify_certificate, the staff policy) and the signature over the
exact bytes it issued. A page on another origin cannot obtain a signature usable here: the card
service will not sign for it, and the server accepts only its own origin.

Layout (UTF-8, one line per field, no trailing newline):

    ONECARD-STAFF-SIGN-IN-v1
    <origin>
    <nonce: 32 lower-case hex characters>
    <expires: Unix milliseconds>

Pure: `cryptography` only, no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import CardVerificationError, VerificationFailure

SIGN_IN_DOMAIN = "ONECARD-STAFF-SIGN-IN-v1"
SIGN_IN_NONCE_LENGTH = 16
MAX_ORIGIN_LENGTH = 200


@dataclass(frozen=True)
class SignInChallenge:
    """A sign-in challenge (see the module's docstring for its bytes)."""

    origin: str
    nonce: bytes
    expires_ms: int

    def __post_init__(self) -> None:
        if not self.origin or len(self.origin) > MAX_ORIGIN_LENGTH or "\n" in self.origin:
            raise ValueError("the origin must be 1 to 200 characters on one line")
        if len(self.nonce) != SIGN_IN_NONCE_LENGTH:
            raise ValueError(f"the nonce must be {SIGN_IN_NONCE_LENGTH} bytes")
        if self.expires_ms < 0:
            raise ValueError("the expiry must not be negative")

    def to_bytes(self) -> bytes:
        return "\n".join(
            [SIGN_IN_DOMAIN, self.origin, self.nonce.hex(), str(self.expires_ms)]
        ).encode()

    def digest(self) -> bytes:
        """SHA-256 of `to_bytes()`: what the card signs."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def parse(cls, data: bytes) -> SignInChallenge:
        """The challenge in `data`; raises ValueError unless it is exactly one."""
        try:
            domain, origin, nonce, expires = data.decode().split("\n")
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError("not a OneCard sign-in challenge") from exc
        if domain != SIGN_IN_DOMAIN or not expires.isdigit() or len(nonce) != 32:
            raise ValueError("not a OneCard sign-in challenge")
        challenge = cls(origin, bytes.fromhex(nonce), int(expires))
        if challenge.to_bytes() != data:
            raise ValueError("not in the canonical form")
        return challenge


def verify_sign_in_signature(
    public_key: object, challenge: SignInChallenge, signature: bytes
) -> None:
    """Check a card's ECDSA P-256 signature over the challenge; raises CardVerificationError."""
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
