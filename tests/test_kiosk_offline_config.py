"""The signed configuration the offline rules come from: the server's key pinned on first use,
the signature checked on arrival and again when read back from disk, no rollback, no other
kiosk's configuration."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kiosk.config_sync import CONFIG_FILE, ConfigError, ConfigSync, canonical_json
from kiosk.errors import ServerUnavailableError
from kiosk.revocation import SERVER_KEY_FILE
from tests.test_kiosk_offline import KIOSK_ID, NOW, SERVER_KEY, signed_config


def b64_public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class ConfigServer:
    def __init__(self, document: dict[str, Any], key: Ed25519PrivateKey = SERVER_KEY) -> None:
        self.document = document
        self.key = key
        self.down = False
        self.key_requests = 0

    def config(self) -> dict[str, Any]:
        if self.down:
            raise ServerUnavailableError("down")
        return json.loads(json.dumps(self.document))  # as if through HTTP

    def server_key(self) -> dict[str, Any]:
        if self.down:
            raise ServerUnavailableError("down")
        self.key_requests += 1
        return {"algorithm": "Ed25519", "public_key": b64_public(self.key)}


def test_first_use_pins_the_key_and_keeps_the_config_for_offline_starts(tmp_path: Path) -> None:
    server = ConfigServer(signed_config())
    sync = ConfigSync(server, tmp_path, KIOSK_ID)
    assert sync.current is None
    config = sync.refresh()
    assert config.offline.units_per_card_per_day == 1
    assert config.slots[1].name == "Condoms"
    assert (tmp_path / SERVER_KEY_FILE).read_text().strip() == b64_public(SERVER_KEY)
    server.down = True
    again = ConfigSync(server, tmp_path, KIOSK_ID)  # a restart with the server away
    assert again.current is not None
    assert again.issued_at() == pytest.approx(NOW)
    assert server.key_requests == 1


def test_a_config_changed_on_disk_is_not_trusted(tmp_path: Path) -> None:
    ConfigSync(ConfigServer(signed_config()), tmp_path, KIOSK_ID).refresh()
    path = tmp_path / CONFIG_FILE
    doc = json.loads(path.read_text())
    doc["offline"]["units_per_card_per_day"] = 50
    path.write_text(json.dumps(doc))
    assert ConfigSync(ConfigServer(signed_config()), tmp_path, KIOSK_ID).current is None


def test_once_pinned_another_key_is_refused_and_the_last_good_config_stays(
    tmp_path: Path,
) -> None:
    server = ConfigServer(signed_config())
    sync = ConfigSync(server, tmp_path, KIOSK_ID)
    good = sync.refresh()
    impostor = Ed25519PrivateKey.generate()
    body = {k: v for k, v in signed_config(issued_at=NOW + 60).items() if k != "signature"}
    body["signature"] = base64.b64encode(impostor.sign(canonical_json(body))).decode()
    server.document, server.key = body, impostor
    with pytest.raises(ConfigError) as refused:
        sync.refresh()
    assert refused.value.reason == "config_signature_invalid"
    assert sync.current == good


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        (signed_config(issued_at=NOW - 60), "config_rollback"),
        (signed_config(issued_at=NOW + 60, kiosk_id="K-OTHER"), "config_kiosk_mismatch"),
    ],
)
def test_an_older_or_foreign_config_is_refused(
    tmp_path: Path, second: dict[str, Any], reason: str
) -> None:
    server = ConfigServer(signed_config())
    sync = ConfigSync(server, tmp_path, KIOSK_ID)
    good = sync.refresh()
    server.document = second
    with pytest.raises(ConfigError) as refused:
        sync.refresh()
    assert refused.value.reason == reason
    assert sync.current == good


def test_a_configured_key_is_used_without_asking_the_server(tmp_path: Path) -> None:
    server = ConfigServer(signed_config())
    sync = ConfigSync(server, tmp_path, KIOSK_ID, server_key=b64_public(SERVER_KEY))
    assert sync.refresh().kiosk_id == KIOSK_ID
    assert server.key_requests == 0
    wrong = ConfigSync(
        server, tmp_path / "other", KIOSK_ID, server_key=b64_public(Ed25519PrivateKey.generate())
    )
    with pytest.raises(ConfigError):
        wrong.refresh()


def test_no_key_and_no_server_means_no_config(tmp_path: Path) -> None:
    server = ConfigServer(signed_config())
    server.down = True
    sync = ConfigSync(server, tmp_path, KIOSK_ID)
    assert sync.pin_on_first_use() is False
    with pytest.raises(ServerUnavailableError):
        sync.refresh()
    assert sync.current is None


def test_the_config_names_the_revocation_lists_version_only(tmp_path: Path) -> None:
    """As the server sends it: `revocation` holds the delta list's version, no GUIDs."""
    body = {k: v for k, v in signed_config().items() if k != "signature"}
    body["revocation"] = {"version": 7}
    signature = base64.b64encode(SERVER_KEY.sign(canonical_json(body))).decode()
    sync = ConfigSync(ConfigServer({**body, "signature": signature}), tmp_path, KIOSK_ID)
    assert sync.refresh().revocation_version == "7"
    assert ConfigSync(ConfigServer(body), tmp_path, KIOSK_ID).current == sync.current
