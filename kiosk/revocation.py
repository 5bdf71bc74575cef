"""The kiosk's copy of the city's card revocation list, kept so an offline kiosk still refuses
revoked cards (issue 3; server side: server.provisioning).

The kiosk asks `GET /api/v1/revocations?since=<version it holds>` and gets the entries added
since, signed by the server's Ed25519 key (over the canonical JSON of the answer without its
`signature`: sorted keys, no spaces, as kiosk configurations are signed). A delta whose signature
does not verify with the pinned server key, or that does not continue the version held, is
refused and the list on disk is left as it was. The list lives in `<data dir>/revocations.json`,
rewritten atomically (temporary file, fsync, rename), so a power cut leaves the old or the new list.

The server key is pinned in `<data dir>/server-key.pub` (base64 of the raw Ed25519 key) when the
kiosk is installed (`pin_server_key`); this module never trusts a key it fetched by itself.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cardsvc.requestsig import canonical_json
from kiosk.errors import KioskError, ServerProblemError, ServerUnavailableError

log = logging.getLogger(__name__)

LIST_FILE = "revocations.json"
SERVER_KEY_FILE = "server-key.pub"
REFRESH_EVERY_S = 60.0


class RevocationListError(KioskError):
    """A revocation delta was refused (bad signature, a gap in the versions, malformed)."""


class SignedGetter(Protocol):
    def get(self, path: str) -> dict[str, Any]: ...


def pin_server_key(data_dir: Path, public_key_b64: str) -> Path:
    """Keep the server's public key (from `/api/v1/server-key`, checked by the installer)."""
    raw = base64.b64decode(public_key_b64, validate=True)
    Ed25519PublicKey.from_public_bytes(raw)  # refuses anything that is not a key
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SERVER_KEY_FILE
    path.write_text(base64.b64encode(raw).decode() + "\n")
    return path


def load_server_key(data_dir: Path) -> Ed25519PublicKey | None:
    path = data_dir / SERVER_KEY_FILE
    if not path.exists():
        return None
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(path.read_text().strip()))


def open_revocation_list(data_dir: Path) -> RevocationList | None:
    """The kiosk's list, or None (with a warning) when no server key was pinned: such a kiosk
    leaves revocation to the server, and refuses revoked cards only while online."""
    key = load_server_key(Path(data_dir))
    if key is None:
        log.warning("no server key pinned in %s: revoked cards are refused online only", data_dir)
        return None
    return RevocationList(Path(data_dir), key)


class RevocationList:
    """The revoked card GUIDs this kiosk knows of, and the version they are at."""

    def __init__(self, data_dir: Path, server_key: Ed25519PublicKey) -> None:
        self.path = Path(data_dir) / LIST_FILE
        self._server_key = server_key
        self._lock = threading.Lock()
        self.version = 0
        self._revoked: frozenset[bytes] = frozenset()
        if self.path.exists():
            doc = json.loads(self.path.read_text())
            self.version = int(doc["version"])
            self._revoked = frozenset(bytes.fromhex(g) for g in doc["revoked"])

    def revoked(self) -> frozenset[bytes]:
        """The GUIDs to refuse (what kiosk.tap.Kiosk takes as `revoked`)."""
        return self._revoked

    def apply(self, delta: dict[str, Any]) -> int:
        """Check and apply one signed delta; returns how many GUIDs it added."""
        try:
            signature = base64.b64decode(delta["signature"], validate=True)
            body = {k: v for k, v in delta.items() if k != "signature"}
            self._server_key.verify(signature, canonical_json(body))
        except (KeyError, ValueError, TypeError, InvalidSignature) as exc:
            raise RevocationListError(
                f"the revocation list is not signed by the server: {exc!r}"
            ) from None
        try:
            full = bool(body["full"])
            since = int(body["since"])
            version = int(body["version"])
            added = [bytes.fromhex(entry["card_guid"]) for entry in body["added"]]
        except (KeyError, ValueError, TypeError) as exc:
            raise RevocationListError(f"malformed revocation delta: {exc!r}") from None
        with self._lock:
            if not full and since != self.version:
                raise RevocationListError(
                    f"the delta starts at version {since}, this kiosk holds {self.version}"
                )
            base = frozenset() if full else self._revoked
            revoked = base | frozenset(added)
            self._save(version, revoked)
            self._revoked, self.version = revoked, version
            return len(added)

    def refresh(self, server: SignedGetter) -> bool:
        """Fetch and apply what is new. False (and the list kept) when the server cannot be
        reached or its answer is refused: the kiosk serves on with the list it has."""
        try:
            delta = server.get(f"/api/v1/revocations?since={self.version}")
            self.apply(delta)
        except (ServerUnavailableError, ServerProblemError, RevocationListError) as exc:
            log.warning("revocation list not refreshed (kept version %s): %s", self.version, exc)
            return False
        return True

    def refresh_every(
        self, server: SignedGetter, stop: threading.Event, every: float = REFRESH_EVERY_S
    ) -> threading.Thread:
        """Refresh now and then every `every` seconds, in a daemon thread, until `stop`."""

        def loop() -> None:
            while True:
                self.refresh(server)
                if stop.wait(every):
                    return

        thread = threading.Thread(target=loop, name="revocation-refresh", daemon=True)
        thread.start()
        return thread

    def _save(self, version: int, revoked: frozenset[bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        doc = {"version": version, "revoked": sorted(g.hex() for g in revoked)}
        with open(tmp, "w") as handle:
            json.dump(doc, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
