"""Encryption of residents' personal fields at rest, and the keyed hash of ID numbers.

Each field is AES-256-GCM with a fresh 96-bit nonce and the field's name as associated data, so a
ciphertext cannot be moved to another column unnoticed. Stored form: version (1 byte, 0x01) |
nonce (12) | ciphertext+tag. The ID-number hash is HMAC-SHA256 under a subkey derived from the
field key with HKDF, so one configured secret serves both and neither reveals the other.

Masked ID numbers (what a masked view shows: the first six and last four characters, or the last
four) are found through keyed hashes of those parts *together with* something else (the first
six, or the date of birth), never of the last four alone: four digits have 10,000 values, and a
hash of them would be a lookup table for anyone holding it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12


class FieldCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the field key must be 32 bytes")
        self._aead = AESGCM(_derive(key, b"onecard field encryption v1"))
        self._hash_key = _derive(key, b"onecard id-number hash v1")

    def encrypt(self, field: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, value.encode(), field.encode())

    def decrypt(self, field: str, blob: bytes) -> str:
        if blob[:1] != _VERSION:
            raise ValueError(f"unknown field encryption version {blob[:1].hex()}")
        nonce, ciphertext = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        return self._aead.decrypt(nonce, ciphertext, field.encode()).decode()

    def encrypt_date(self, field: str, value: dt.date) -> bytes:
        return self.encrypt(field, value.isoformat())

    def decrypt_date(self, field: str, blob: bytes) -> dt.date:
        return dt.date.fromisoformat(self.decrypt(field, blob))

    def id_number_hash(self, id_number: str) -> bytes:
        return hmac.new(
            self._hash_key, normalise_id_number(id_number).encode(), hashlib.sha256
        ).digest()

    def blind_index(self, field: str, value: str) -> bytes:
        """A keyed hash of a field's normalised value (spaces and dashes dropped, case folded),
        for exact search of an encrypted field; the field's name keeps two fields apart."""
        folded = re.sub(r"[\s-]", "", value).casefold()
        return hmac.new(self._hash_key, f"{field}\x00{folded}".encode(), hashlib.sha256).digest()

    def id_prefix_index(self, first6: str, last4: str) -> bytes:
        """The keyed hash of an ID number's first six and last four characters (a masked
        number as other systems print it: `110105********1234`)."""
        return self.blind_index("id_number_prefix", f"{first6.upper()}*{last4.upper()}")

    def id_birth_index(self, birth_date: dt.date, last4: str) -> bytes:
        """The keyed hash of a person's date of birth and the last four characters of their ID
        number (what the person can tell, with what a masked view shows)."""
        return self.blind_index("id_number_birth", f"{birth_date.isoformat()}*{last4.upper()}")


def id_number_parts(id_number: str) -> tuple[str, str] | None:
    """The first six and last four characters of a normalised ID number; None when it is too
    short to have both apart (fewer than 10)."""
    number = normalise_id_number(id_number)
    return (number[:6], number[-4:]) if len(number) >= 10 else None


def normalise_id_number(id_number: str) -> str:
    """Upper case, no spaces or dashes: the same person's number always hashes the same."""
    return re.sub(r"[\s-]", "", id_number).upper()


def mask_id_number(last4: str) -> str:
    return "*" * 14 + last4


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
