"""The kiosk's signed configuration: downloaded, verified, kept on disk, trusted offline.

The server answers GET /api/v1/kiosks/me/config with the kiosk's slots, the offline rules
(a small allowance per card per day, the most hours the kiosk may serve offline) and the version
of the revocation list, signed with its Ed25519 key (server/services/kiosks.py `kiosk_config`):
`signature` is base64 of the signature over the canonical JSON of the rest of the document
(sorted keys, no spaces, UTF-8). The list itself is not in the configuration: the kiosk keeps it
from the signed deltas of GET /api/v1/revocations (kiosk.revocation), whose version numbers the
configuration's `revocation.version` shares.

The server's key is the one pinned in `<data dir>/server-key.pub` (kiosk.revocation keeps that
file and checks its revocation deltas with the same key). It is written by the installer
(`kiosk.revocation.pin_server_key`), or from the kiosk's configuration (`--server-key`), or else
on first use: fetched once from GET /api/v1/server-key. After that a configuration signed by
another key is refused, whatever the server says its key is now.

The last good configuration is kept in `<data dir>/config.json` exactly as the server signed it
and verified again when it is read back, so a file changed on the kiosk's disk is not trusted.
A configuration issued before the one kept (a replayed old answer) is refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cardsvc.requestsig import canonical_json
from kiosk.errors import KioskError, ServerProblemError, ServerUnavailableError
from kiosk.revocation import SERVER_KEY_FILE, load_server_key, pin_server_key

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class ConfigError(KioskError):
    """A configuration or a server key that cannot be trusted; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class OfflineRules:
    """What the kiosk may approve alone while the server cannot be reached."""

    units_per_card_per_day: int
    max_offline_hours: float


@dataclass(frozen=True)
class SlotConfig:
    slot: int
    sku: str
    name: str
    category: str
    units: int  # category units one item counts for


@dataclass(frozen=True)
class SignedConfig:
    """A verified configuration. `document` is the server's document, signature included."""

    kiosk_id: str
    issued_at: dt.datetime
    slots: Mapping[int, SlotConfig]
    offline: OfflineRules
    # The revocation list's version when the server signed this (kiosk.revocation's `version`,
    # in decimal), kept as text: the heartbeat compares it with the server's answer.
    revocation_version: str
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> SignedConfig:
        try:
            issued_at = dt.datetime.fromisoformat(document["issued_at"])
            if issued_at.tzinfo is None:
                raise ValueError("issued_at has no time zone")
            slots = {
                int(s["slot"]): SlotConfig(
                    int(s["slot"]),
                    str(s["sku"]),
                    str(s["name"]),
                    str(s["category"]),
                    int(s["units"]),
                )
                for s in document["slots"]
            }
            offline = document["offline"]
            rules = OfflineRules(
                int(offline["units_per_card_per_day"]), float(offline["max_offline_hours"])
            )
            return cls(
                kiosk_id=str(document["kiosk_id"]),
                issued_at=issued_at,
                slots=slots,
                offline=rules,
                revocation_version=str(document["revocation"]["version"]),
                document=dict(document),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("config_malformed", f"{type(exc).__name__}: {exc}") from exc


def parse_server_key(text: str) -> Ed25519PublicKey:
    """A server key as configured or pinned: base64 of the raw 32-byte Ed25519 public key."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("server_key_malformed", str(exc)) from exc


def verify_config(document: Mapping[str, Any], server_key: Ed25519PublicKey) -> SignedConfig:
    """Check the server's signature over `document`, then parse it. Pure."""
    if not isinstance(document, Mapping) or not isinstance(document.get("signature"), str):
        raise ConfigError("config_unsigned", "the configuration carries no signature")
    body = {k: v for k, v in document.items() if k != "signature"}
    try:
        signature = base64.b64decode(document["signature"], validate=True)
        server_key.verify(signature, canonical_json(body))
    except (binascii.Error, InvalidSignature) as exc:
        raise ConfigError("config_signature_invalid", "not signed by the server's key") from exc
    return SignedConfig.parse(document)


class ConfigSource(Protocol):
    """What ConfigSync needs of kiosk.client.ServerClient."""

    def config(self) -> dict[str, Any]: ...

    def server_key(self) -> dict[str, Any]: ...


class ConfigSync:
    """The kiosk's current configuration. `refresh()` fetches a new one (from a background
    thread); `current` reads the last good one without blocking."""

    def __init__(
        self,
        server: ConfigSource,
        data_dir: Path,
        kiosk_id: str,
        *,
        server_key: str | None = None,
    ) -> None:
        self._server = server
        self._dir = Path(data_dir)
        self._kiosk_id = kiosk_id
        if server_key:  # configured: it replaces whatever was pinned
            parse_server_key(server_key)
            pin_server_key(self._dir, server_key.strip())
        self._key = load_server_key(self._dir)
        self._lock = threading.Lock()
        self._current: SignedConfig | None = self._load()

    @property
    def current(self) -> SignedConfig | None:
        return self._current

    def issued_at(self) -> float | None:
        """When the server signed the last good configuration (Unix time): a contact time
        that survives a restart and that the kiosk's disk cannot forge."""
        config = self._current
        return config.issued_at.timestamp() if config is not None else None

    def refresh(self) -> SignedConfig:
        """Fetch, verify and keep a new configuration. Raises ServerUnavailableError or
        ServerProblemError when the server cannot give one, ConfigError when it cannot be
        trusted; either way the last good configuration stays."""
        with self._lock:
            key = self._key or self._pin_on_first_use()
            config = verify_config(self._server.config(), key)
            if config.kiosk_id != self._kiosk_id:
                raise ConfigError(
                    "config_kiosk_mismatch", f"made for {config.kiosk_id}, not {self._kiosk_id}"
                )
            current = self._current
            if current is not None and config.issued_at < current.issued_at:
                raise ConfigError(
                    "config_rollback",
                    f"issued {config.issued_at.isoformat()}, before the one kept "
                    f"({current.issued_at.isoformat()})",
                )
            _write_atomically(
                self._dir / CONFIG_FILE, json.dumps(config.document, indent=1).encode()
            )
            self._current = config
            return config

    def pin_on_first_use(self) -> bool:
        """Pin the server's key if none is pinned yet. False when the server cannot be reached
        (the kiosk then has no trusted configuration and serves online only)."""
        with self._lock:
            if self._key is not None:
                return True
            try:
                self._pin_on_first_use()
            except (ServerUnavailableError, ServerProblemError, ConfigError) as exc:
                log.warning("server key not pinned yet: %s", exc)
                return False
            return True

    def _pin_on_first_use(self) -> Ed25519PublicKey:
        answer = self._server.server_key()
        if answer.get("algorithm") != "Ed25519" or not isinstance(answer.get("public_key"), str):
            raise ConfigError("server_key_malformed", f"unexpected answer {answer!r}")
        key = parse_server_key(answer["public_key"])
        pin_server_key(self._dir, answer["public_key"])
        log.warning("server key pinned on first use in %s", self._dir / SERVER_KEY_FILE)
        self._key = key
        return key

    def _load(self) -> SignedConfig | None:
        path = self._dir / CONFIG_FILE
        if self._key is None or not path.exists():
            return None
        try:
            config = verify_config(json.loads(path.read_bytes()), self._key)
        except (ConfigError, ValueError) as exc:
            log.warning("the kept configuration %s is not trusted: %s", path, exc)
            return None
        if config.kiosk_id != self._kiosk_id:
            log.warning("the kept configuration is for kiosk %s", config.kiosk_id)
            return None
        return config


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
