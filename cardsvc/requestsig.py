"""Signatures between kiosk and server: the canonical form of a kiosk's HTTP request and its
Ed25519 signature, and the canonical JSON of the documents the server signs for kiosks
(configuration, revocation list).

Pure: no sockets, no clocks. One side signs with it, the other verifies with it, so the two
sides can never disagree on the bytes. The formats are fixed in docs/interfaces.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = "ONECARD-KIOSK-v1"

HEADER_KIOSK = "X-Kiosk-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"
HEADER_IDEMPOTENCY = "Idempotency-Key"


def canonical_json(value: Any) -> bytes:
    """The bytes the server signs for a JSON document: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SignedHeaders:
    kiosk_id: str
    timestamp: int
    nonce: str
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {
            HEADER_KIOSK: self.kiosk_id,
            HEADER_TIMESTAMP: str(self.timestamp),
            HEADER_NONCE: self.nonce,
            HEADER_SIGNATURE: self.signature,
        }


def canonical(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes a kiosk signs for one request."""
    lines = [
        DOMAIN,
        method.upper(),
        path,
        str(timestamp),
        nonce,
        hashlib.sha256(body).hexdigest(),
    ]
    return "\n".join(lines).encode()


def sign(
    key: Ed25519PrivateKey,
    kiosk_id: str,
    method: str,
    path: str,
    timestamp: int,
    nonce: str,
    body: bytes,
) -> SignedHeaders:
    signature = key.sign(canonical(method, path, timestamp, nonce, body))
    return SignedHeaders(kiosk_id, timestamp, nonce, base64.b64encode(signature).decode())


def verify(
    public_key: Ed25519PublicKey,
    signature_b64: str,
    method: str,
    path: str,
    timestamp: int,
    nonce: str,
    body: bytes,
) -> bool:
    """True when the signature is good; False for a bad or malformed one (never raises)."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):
        return False
    try:
        public_key.verify(signature, canonical(method, path, timestamp, nonce, body))
    except InvalidSignature:
        return False
    return True


def public_key_from_raw(raw_b64: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its 32 raw bytes (as a kiosk is registered)."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(raw_b64, validate=True))


def public_key_to_raw(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
