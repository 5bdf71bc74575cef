"""The kiosk's device identity: an Ed25519 key kept in the kiosk's data directory.

The private key never leaves the kiosk; its public half is registered at the server
(`onecard server add-kiosk --public-key ...`), which then accepts only requests it signed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cardsvc.requestsig import public_key_to_raw

KEY_FILE = "device-key.pem"


def load_or_create_device_key(data_dir: Path) -> Ed25519PrivateKey:
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """Base64 of the raw 32-byte public key, as the server registers it."""
    return public_key_to_raw(key.public_key())
