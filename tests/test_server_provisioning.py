"""The server side of provisioning and of the card lifecycle (server.services.provisioning, server.api.provisioning), on SQLite and
PostgreSQL: certificates signed by the server's card CA, per-card management keys and PUKs,
renewal, and the signed, versioned revocation list as the kiosk (kiosk.revocation) takes it.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardsvc.ca import CardCA
from cardsvc.profile import Chuid
from cardsvc.provision import diversify_management_key
from cardsvc.verify import guid_from_certificate, load_certificate, verify_certificate
from kiosk.config_sync import ConfigSync
from kiosk.revocation import RevocationList, RevocationListError
from server.services.provisioning import EXTENSION_KEY, puk_for
from tests.fixtures.database import CityCA, ServerWorld
from tests.test_server_openapi import check_answer


@pytest.fixture
def world(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerWorld]:
    """A server world whose card CA key the server holds (ONECARD_CARD_CA_DIR)."""
    card_ca = CardCA.create(tmp_path / "ca", now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    ca = CityCA.__new__(CityCA)  # the fixture's issuer, with the server's CA key
    ca.key, ca.certificate, ca.name = (
        card_ca.private_key,
        card_ca.certificate,
        card_ca.certificate.subject,
    )
    monkeypatch.setenv("ONECARD_CARD_CA_DIR", str(tmp_path / "ca"))
    w = ServerWorld(database_url, tmp_path / "server-data", ca=ca)
    try:
        yield w
    finally:
        w.close()


def staff(w: ServerWorld) -> dict[str, str]:
    return {"Authorization": f"Bearer {w.token}"}


def public_key_b64() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return base64.b64encode(
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).decode()


def certify(w: ServerWorld, resident_id: int, **extra: Any) -> Any:
    return w.client.post(
        "/api/v1/cards/certificates",
        json={"resident_id": resident_id, "public_key": public_key_b64(), **extra},
        headers=staff(w),
    )


def signed_get(w: ServerWorld, path: str) -> Any:
    return w.client.get(path, headers=w.kiosk.headers("GET", path, b"", w.clock))


def server_key(w: ServerWorld) -> Ed25519PublicKey:
    raw = base64.b64decode(w.client.get("/api/v1/server-key").get_json()["public_key"])
    return Ed25519PublicKey.from_public_bytes(raw)


def test_certify_signs_a_card_and_answers_its_own_secrets(world: ServerWorld) -> None:
    w = world
    resident = w.new_resident()
    answer = certify(w, resident)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    doc = answer.get_json()
    guid = bytes.fromhex(doc["card_guid"])
    certificate = load_certificate(base64.b64decode(doc["certificate"]))
    verify_certificate(certificate, w.ca.der, now=dt.datetime.fromtimestamp(w.clock(), dt.UTC))
    assert guid_from_certificate(certificate) == guid
    chuid = Chuid.parse(base64.b64decode(doc["chuid"]))
    assert chuid.guid == guid and chuid.issuer_signature
    assert chuid.expiry.isoformat() == doc["expiry"]
    master = w.app.extensions[EXTENSION_KEY].master_key
    assert base64.b64decode(doc["management_key"]) == diversify_management_key(master, guid)
    assert doc["puk"] == puk_for(master, guid) and len(doc["puk"]) == 8
    # Not issued until it is recorded.
    assert w.client.get(f"/api/v1/cards/{guid.hex()}", headers=staff(w)).status_code == 404
    secrets = w.client.post(
        f"/api/v1/cards/{guid.hex()}/secrets", json={"purpose": "provision"}, headers=staff(w)
    ).get_json()
    assert secrets["management_key"] == doc["management_key"] and secrets["puk"] == doc["puk"]
    # Another card gets other secrets.
    other = certify(w, resident).get_json()
    assert other["management_key"] != doc["management_key"]

    recorded = w.client.post(
        "/api/v1/cards",
        json={"resident_id": resident, "certificate": doc["certificate"]},
        headers=staff(w),
    )
    assert recorded.status_code == 201
    shown = w.client.get(f"/api/v1/cards/{guid.hex()}", headers=staff(w)).get_json()
    assert shown["resident_id"] == resident and shown["status"] == "active"
    again = certify(w, resident, card_guid=guid.hex())
    assert again.status_code == 409 and again.get_json()["code"] == "card_exists"


def test_certify_refuses_bad_requests(world: ServerWorld) -> None:
    w = world
    no_token = w.client.post(
        "/api/v1/cards/certificates",
        json={"resident_id": w.seed.resident_id, "public_key": public_key_b64()},
    )
    assert no_token.status_code == 401
    bad_key = w.client.post(
        "/api/v1/cards/certificates",
        json={"resident_id": w.seed.resident_id, "public_key": base64.b64encode(b"x").decode()},
        headers=staff(w),
    )
    assert bad_key.status_code == 400 and bad_key.get_json()["field"] == "public_key"
    assert certify(w, 10**9).status_code == 404
    assert certify(w, w.seed.resident_id, card_guid="zz").status_code == 400


def test_renewal_records_a_later_certificate_for_the_same_key(world: ServerWorld) -> None:
    w = world
    guid = guid_from_certificate(load_certificate(w.card.certificate_der)).hex()
    before = w.client.get(f"/api/v1/cards/{guid}", headers=staff(w)).get_json()
    renewed = w.client.post(f"/api/v1/cards/{guid}/renew", json={}, headers=staff(w))
    assert renewed.status_code == 200, renewed.get_data(as_text=True)
    certificate = load_certificate(base64.b64decode(renewed.get_json()["certificate"]))
    assert certificate.public_key() == w.card.key.public_key()
    after = w.client.get(f"/api/v1/cards/{guid}", headers=staff(w)).get_json()
    assert after["not_after"] != before["not_after"]
    assert w.authorize().get_json()["approved"] is True  # the card's key still proves taps


def test_revocation_deltas_are_signed_versioned_and_applied_by_the_kiosk(
    world: ServerWorld, tmp_path: Path
) -> None:
    w = world
    kiosk_list = RevocationList(tmp_path / "kiosk", server_key(w))
    empty = signed_get(w, "/api/v1/revocations?since=0")
    assert empty.status_code == 200
    assert empty.get_json()["version"] == 0 and empty.get_json()["added"] == []
    kiosk_list.apply(empty.get_json())

    first_guid = guid_from_certificate(load_certificate(w.card.certificate_der))
    revoked = w.client.post(
        f"/api/v1/cards/{first_guid.hex()}/revoke", json={"reason": "stolen"}, headers=staff(w)
    )
    assert revoked.status_code == 200
    second = w.issue_card(w.seed.resident_id)
    replacement = w.issue_card(w.seed.resident_id)  # the second card becomes "replaced"
    delta = signed_get(w, "/api/v1/revocations?since=0").get_json()
    assert [e["reason"] for e in delta["added"]] == ["revoked", "replaced"]
    kiosk_list.apply(delta)
    second_guid = guid_from_certificate(load_certificate(second.certificate_der))
    assert kiosk_list.revoked() == {first_guid, second_guid}
    assert kiosk_list.version == delta["version"] == 2

    nothing_new = signed_get(w, f"/api/v1/revocations?since={kiosk_list.version}").get_json()
    assert nothing_new["added"] == [] and nothing_new["version"] == 2
    kiosk_list.apply(nothing_new)
    # The list survives a restart of the kiosk.
    assert RevocationList(tmp_path / "kiosk", server_key(w)).revoked() == kiosk_list.revoked()
    del replacement

    # A tampered delta, a delta from another key, a delta with a gap: all refused, list kept.
    forged = dict(delta, added=[])
    with pytest.raises(RevocationListError):
        kiosk_list.apply(forged)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = RevocationList(tmp_path / "other", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(RevocationListError):
        stranger.apply(delta)
    fresh = RevocationList(tmp_path / "fresh", server_key(w))
    with pytest.raises(RevocationListError):
        fresh.apply(signed_get(w, "/api/v1/revocations?since=1").get_json())
    assert kiosk_list.revoked() == {first_guid, second_guid}

    # A kiosk ahead of the server (a restored database) gets the whole list again.
    ahead = signed_get(w, "/api/v1/revocations?since=99").get_json()
    assert ahead["full"] is True and len(ahead["added"]) == 2


class WorldAsKioskServer:
    """What kiosk.config_sync and kiosk.revocation ask of the server, through the test client."""

    def __init__(self, w: ServerWorld) -> None:
        self.w = w

    def get(self, path: str) -> dict[str, Any]:
        answer = signed_get(self.w, path)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return dict(answer.get_json())

    def config(self) -> dict[str, Any]:
        return self.get("/api/v1/kiosks/me/config")

    def server_key(self) -> dict[str, Any]:
        return dict(self.w.client.get("/api/v1/server-key").get_json())


def test_the_configuration_carries_the_delta_lists_version(
    world: ServerWorld, tmp_path: Path
) -> None:
    """The configuration and the heartbeat's answer name the version the deltas answer, also
    right after a revocation no kiosk has fetched yet; so a kiosk can tell from its
    configuration that its copy of the list is behind."""
    w = world

    def config_version() -> Any:
        path = "/api/v1/kiosks/me/config"
        answer = signed_get(w, path)
        check_answer("GET", path, answer)
        return answer.get_json()["revocation"]

    def delta_version() -> Any:
        return signed_get(w, "/api/v1/revocations?since=0").get_json()["version"]

    assert config_version() == {"version": 0}
    first = guid_from_certificate(load_certificate(w.card.certificate_der)).hex()
    revoked = w.client.post(
        f"/api/v1/cards/{first}/revoke", json={"reason": "lost"}, headers=staff(w)
    )
    assert revoked.status_code == 200
    assert config_version() == {"version": 1}  # before any kiosk asked for the deltas
    assert delta_version() == 1

    w.issue_card(w.seed.resident_id)
    w.issue_card(w.seed.resident_id)  # replaces the card issued just before
    heartbeat = w.post("/api/v1/telemetry", {"stock": {"1": 5}})
    check_answer("POST", "/api/v1/telemetry", heartbeat)
    assert heartbeat.get_json()["revocation_version"] == "2"
    assert config_version() == {"version": 2} and delta_version() == 2

    # The kiosk's side: its configuration says version 2, its list is at 0 until refreshed.
    server = WorldAsKioskServer(w)
    config = ConfigSync(server, tmp_path / "kiosk", w.kiosk.id).refresh()
    kiosk_list = RevocationList(tmp_path / "kiosk", server_key(w))
    assert kiosk_list.version < int(config.revocation_version) == 2
    assert kiosk_list.refresh(server)
    assert kiosk_list.version == int(config.revocation_version)
    assert first in {guid.hex() for guid in kiosk_list.revoked()}


def test_revocations_need_a_signed_kiosk_request(world: ServerWorld) -> None:
    w = world
    assert w.client.get("/api/v1/revocations?since=0").status_code == 401
    assert signed_get(w, "/api/v1/revocations?since=x").status_code == 400


def test_a_heartbeat_naming_a_new_revocation_fetches_the_list_at_once(
    world: ServerWorld, tmp_path: Path
) -> None:
    """kiosk.app wires the heartbeat's answer to the revocation list: a card revoked a moment
    ago is in the kiosk's list right after the next heartbeat, not after the list's own round."""
    from kiosk.app import revocation_news

    w = world
    server = WorldAsKioskServer(w)
    kiosk_list = RevocationList(tmp_path / "kiosk", server_key(w))
    assert kiosk_list.refresh(server) and kiosk_list.version == 0
    guid = guid_from_certificate(load_certificate(w.card.certificate_der))
    revoked = w.client.post(
        f"/api/v1/cards/{guid.hex()}/revoke", json={"reason": "lost"}, headers=staff(w)
    )
    assert revoked.status_code == 200
    asked: list[str] = []

    class Chores:
        def soon(self, name: str) -> None:
            asked.append(name)

    news = revocation_news(Chores(), kiosk_list, server)  # type: ignore[arg-type]
    version = w.post("/api/v1/telemetry", {"stock": {"1": 5}}).get_json()["revocation_version"]
    news(version)
    assert kiosk_list.version == 1 and guid in kiosk_list.revoked()
    assert asked == ["config"]
    news(version)  # the same news again: nothing new to fetch, the list is kept
    assert kiosk_list.version == 1 and asked == ["config", "config"]
