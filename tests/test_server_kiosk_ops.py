"""Offline sync, signed kiosk configuration and telemetry, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select

from server.store.models import Authorization, KioskEvent, KioskSlot, Usage
from tests.fixtures.database import ServerWorld, TestCard


def offline(
    w: ServerWorld,
    card: TestCard | None = None,
    *,
    outcome: str = "ok",
    ago: float = 120,
    txn: str = "t",
) -> dict:  # type: ignore[type-arg]
    w.kiosk.counter += 1
    proof = (card or w.card).prove(w.kiosk.id, w.kiosk.counter, int((w.clock() - ago) * 1000))
    return {
        "txn_id": txn,
        "proof": proof,
        "slot": 1,
        "quantity": 1,
        "outcome": outcome,
        "board_txn": w.kiosk.counter,
    }


def captured_units(w: ServerWorld) -> int:
    with w.sessionmaker() as session:
        return int(session.scalar(select(func.coalesce(func.sum(Usage.captured), 0))) or 0)


def test_offline_dispenses_are_applied_exactly_once(server_world: ServerWorld) -> None:
    w = server_world
    batch = {
        "transactions": [
            offline(w, txn="a"),
            offline(w, txn="b"),
            offline(w, outcome="jammed", txn="c"),
        ]
    }
    first = w.post("/api/v1/sync", batch)
    assert first.status_code == 200
    results = first.get_json()["results"]
    assert [(r["txn_id"], r["status"], r["charged"], r["flags"]) for r in results] == [
        ("a", "applied", 1, []),
        ("b", "applied", 1, []),
        ("c", "applied", 0, []),
    ]
    # The kiosk restarts and syncs its journal again, with a new idempotency key.
    again = w.post("/api/v1/sync", batch).get_json()["results"]
    assert [r["status"] for r in again] == ["duplicate"] * 3
    assert [r["authorization_id"] for r in again] == [r["authorization_id"] for r in results]
    assert captured_units(w) == 2
    # Those taps cannot be replayed online either.
    replay = w.post(
        "/api/v1/authorizations", {"proof": batch["transactions"][0]["proof"], "slot": 1}
    )
    assert replay.get_json()["reason"] == "counter_replayed"
    assert w.authorize().get_json()["remaining"] == {"condoms": 0}


def test_an_offline_overdraft_is_recorded_and_flagged(server_world: ServerWorld) -> None:
    w = server_world
    for _ in range(3):
        w.capture(w.authorize().get_json()["authorization_id"])
    result = w.post("/api/v1/sync", {"transactions": [offline(w, ago=60)]}).get_json()["results"][0]
    assert (
        result["status"] == "applied"
        and result["flags"] == ["overdraft"]
        and result["charged"] == 1
    )
    assert captured_units(w) == 4
    with w.sessionmaker() as session:
        row = session.get(Authorization, result["authorization_id"])
        assert row is not None and row.offline and row.flags == "overdraft"


def test_unattributable_and_stale_offline_taps(server_world: ServerWorld) -> None:
    w = server_world
    stranger = TestCard(w.ca)
    old = offline(w, ago=4 * 24 * 3600, txn="old")
    unknown = offline(w, stranger, txn="stranger")
    results = w.post("/api/v1/sync", {"transactions": [old, unknown]}).get_json()["results"]
    assert results[0]["status"] == "applied" and results[0]["flags"] == ["stale"]
    assert results[1] == {
        "txn_id": "stranger",
        "counter": unknown["proof"]["counter"],
        "status": "unattributed",
        "reason": "card_unknown",
    }


def test_sync_refuses_bad_batches_whole(server_world: ServerWorld) -> None:
    w = server_world
    good = offline(w)
    for body, code in [
        ({"transactions": []}, "field_invalid"),
        ({"transactions": [{**good, "outcome": "maybe"}]}, "field_invalid"),
        ({"transactions": [{**good, "quantity": -1}]}, "field_invalid"),
        ({"transactions": [good, {**good, "proof": {"x": 1}}]}, "proof_malformed"),
    ]:
        response = w.post("/api/v1/sync", body)
        assert response.status_code == 400, body
        assert response.get_json()["code"] == code
    other = w.add_kiosk("K-0002")
    response = w.post("/api/v1/sync", {"transactions": [good]}, kiosk=other)
    assert response.status_code == 403 and response.get_json()["code"] == "kiosk_mismatch"
    assert captured_units(w) == 0


def test_kiosk_configuration_is_signed_by_the_server(server_world: ServerWorld) -> None:
    w = server_world
    w.card = w.issue_card(w.seed.resident_id)  # the first card is replaced
    headers = w.kiosk.headers("GET", "/api/v1/kiosks/me/config", b"", w.clock)
    response = w.client.get("/api/v1/kiosks/me/config", headers=headers)
    assert response.status_code == 200
    config = response.get_json()
    assert config["kiosk_id"] == "K-0001"
    assert [(s["slot"], s["sku"], s["category"]) for s in config["slots"]] == [
        (1, "CONDOM-STD-1", "condoms")
    ]
    # The replaced card is the revocation list's first entry; the configuration names only
    # the list's version.
    assert config["revocation"] == {"version": 1}
    key = base64.b64decode(w.client.get("/api/v1/server-key").get_json()["public_key"])
    signature = base64.b64decode(config.pop("signature"))
    signed = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    Ed25519PublicKey.from_public_bytes(key).verify(signature, signed)  # raises if not
    assert (
        w.client.get("/api/v1/kiosks/me/config", headers=headers).status_code == 401
    )  # nonce spent
    assert w.client.get("/api/v1/kiosks/me/config").status_code == 401


def test_telemetry_updates_stock_and_records_events(server_world: ServerWorld) -> None:
    w = server_world
    body = {
        "stock": {"1": 7},
        "events": [
            {"kind": "door", "detail": {"open": True}},
            {"kind": "fault", "detail": {"slot": 1, "what": "jammed"}},
        ],
    }
    response = w.post("/api/v1/telemetry", body)
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    with w.sessionmaker() as session:
        assert session.get(KioskSlot, ("K-0001", 1)).stock == 7  # type: ignore[union-attr]
        kinds = sorted(session.scalars(select(KioskEvent.kind)))
    assert kinds == ["door", "fault", "heartbeat"]
    unknown = w.post("/api/v1/telemetry", {"stock": {"9": 1}})
    assert unknown.status_code == 422 and unknown.get_json()["code"] == "slot_unknown"
    for bad in (
        {"stock": {"x": 1}},
        {"stock": {"1": -1}},
        {"events": [{"kind": "party"}]},
        {"stock": []},
    ):
        assert w.post("/api/v1/telemetry", bad).status_code == 400, bad


def test_captures_count_down_the_known_stock(server_world: ServerWorld) -> None:
    w = server_world
    w.post("/api/v1/telemetry", {"stock": {"1": 5}})
    a = w.authorize().get_json()["authorization_id"]
    w.capture(a)
    w.capture(a)  # a retry: counted once
    b = w.authorize().get_json()["authorization_id"]
    w.void(b)
    with w.sessionmaker() as session:
        assert session.get(KioskSlot, ("K-0001", 1)).stock == 4  # type: ignore[union-attr]
