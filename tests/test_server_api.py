"""The server's /api/v1 contract (docs/interfaces.md), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.database import ServerWorld

PROBLEM = "application/problem+json"


def problem(response) -> dict:  # type: ignore[no-untyped-def, type-arg]
    assert response.mimetype == PROBLEM, response.get_data(as_text=True)
    doc = response.get_json(force=True)
    assert doc["status"] == response.status_code
    assert doc["type"] == f"/problems/{doc['code']}"
    assert doc["title"] and doc["detail"]
    return doc


def test_health(server_world: ServerWorld) -> None:
    response = server_world.client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_authorize_capture_until_the_monthly_limit(server_world: ServerWorld) -> None:
    w = server_world
    for left in (2, 1, 0):
        response = w.authorize()
        assert response.status_code == 200
        doc = response.get_json()
        assert doc["approved"] is True, doc
        assert doc["product"] == {
            "sku": "CONDOM-STD-1",
            "name": "Condom, standard",
            "category": "condoms",
        }
        assert doc["remaining"] == {"condoms": left}
        captured = w.capture(doc["authorization_id"])
        assert captured.status_code == 200
        assert captured.get_json() == {"status": "captured", "remaining": {"condoms": left}}
    refused = w.authorize().get_json()
    assert refused == {
        "approved": False,
        "reason": "limit_reached",
        "message": "limit of 3 condoms per month reached",
        "remaining": {"condoms": 0},
        "next_allowed_on": "2026-12-01",
    }


def test_void_releases_the_unit(server_world: ServerWorld) -> None:
    w = server_world
    first = w.authorize().get_json()
    assert first["remaining"] == {"condoms": 2}
    assert w.void(first["authorization_id"]).get_json() == {
        "status": "voided",
        "remaining": {"condoms": 3},
    }
    second = w.authorize().get_json()
    assert second["approved"] and second["remaining"] == {"condoms": 2}


def test_reserved_units_count_against_the_limit(server_world: ServerWorld) -> None:
    w = server_world
    for _ in range(3):
        assert w.authorize().get_json()["approved"]
    assert w.authorize().get_json()["reason"] == "limit_reached"


def test_quantity_is_charged_in_full(server_world: ServerWorld) -> None:
    w = server_world
    assert w.authorize(quantity=2).get_json()["remaining"] == {"condoms": 1}
    refused = w.authorize(quantity=2).get_json()
    assert refused["approved"] is False and refused["reason"] == "limit_reached"
    assert refused["remaining"] == {"condoms": 1}


def test_capture_and_void_are_idempotent_and_exclusive(server_world: ServerWorld) -> None:
    w = server_world
    a = w.authorize().get_json()["authorization_id"]
    assert w.capture(a).status_code == 200
    again = w.capture(a)  # a new key: the state, not the key, makes it idempotent
    assert again.status_code == 200 and again.get_json()["status"] == "captured"
    assert problem(w.void(a))["code"] == "authorization_captured"
    b = w.authorize().get_json()["authorization_id"]
    assert w.void(b).status_code == 200
    assert w.void(b).get_json() == {"status": "voided", "remaining": {"condoms": 2}}
    assert problem(w.capture(b))["code"] == "authorization_voided"
    # Two captured-or-voided settle to one charge: one captured unit, one released.
    assert w.authorize().get_json()["remaining"] == {"condoms": 1}


def test_idempotency_key_returns_the_first_answer(server_world: ServerWorld) -> None:
    w = server_world
    proof = w.kiosk.tap(w.card, w.clock)
    body = {"proof": proof, "slot": 1, "quantity": 1}
    first = w.post("/api/v1/authorizations", body, idempotency_key="tap-1")
    retry = w.post("/api/v1/authorizations", body, idempotency_key="tap-1")  # new nonce, same key
    assert first.status_code == retry.status_code == 200
    assert retry.get_json() == first.get_json()
    assert first.get_json()["approved"]
    # Only one unit was reserved.
    assert w.authorize().get_json()["remaining"] == {"condoms": 1}
    # The same key for a different request is refused, not silently answered.
    other = w.post("/api/v1/authorizations", {**body, "quantity": 2}, idempotency_key="tap-1")
    assert other.status_code == 422
    assert problem(other)["code"] == "idempotency_key_reused"


def test_capture_retry_with_the_same_key(server_world: ServerWorld) -> None:
    w = server_world
    a = w.authorize().get_json()["authorization_id"]
    first = w.capture(a, idempotency_key="cap-1")
    second = w.capture(a, idempotency_key="cap-1")
    assert (
        first.get_json() == second.get_json() == {"status": "captured", "remaining": {"condoms": 2}}
    )


def test_replayed_tap_is_refused(server_world: ServerWorld) -> None:
    w = server_world
    proof = w.kiosk.tap(w.card, w.clock)
    body = {"proof": proof, "slot": 1, "quantity": 1}
    assert w.post("/api/v1/authorizations", body).get_json()["approved"]
    replay = w.post("/api/v1/authorizations", body)  # a new idempotency key: a second tap
    assert replay.status_code == 200
    assert replay.get_json()["reason"] == "counter_replayed"
    # An older counter is refused too.
    older = w.card.prove(w.kiosk.id, 0, int(w.clock() * 1000))
    assert (
        w.post("/api/v1/authorizations", {**body, "proof": older}).get_json()["reason"]
        == "counter_replayed"
    )


def test_stale_tap_is_refused(server_world: ServerWorld) -> None:
    w = server_world
    w.kiosk.counter += 1
    stale = w.card.prove(w.kiosk.id, w.kiosk.counter, int((w.clock() - 301) * 1000))
    doc = w.post("/api/v1/authorizations", {"proof": stale, "slot": 1}).get_json()
    assert doc["approved"] is False and doc["reason"] == "proof_stale"


def test_a_copied_card_without_its_key_is_refused(server_world: ServerWorld) -> None:
    from tests.fixtures.database import TestCard

    w = server_world
    clone = TestCard(w.ca, guid=w.card.guid)  # same GUID, another key
    doc = w.authorize(clone).get_json()
    assert doc == {**doc, "approved": False, "reason": "proof_invalid"}


def test_unknown_card_and_unknown_slot(server_world: ServerWorld) -> None:
    from tests.fixtures.database import TestCard

    w = server_world
    assert w.authorize(TestCard(w.ca)).get_json()["reason"] == "card_unknown"
    assert w.authorize(slot=9).get_json()["reason"] == "slot_unknown"


def test_replaced_card_is_refused_and_the_allowance_follows_the_person(
    server_world: ServerWorld,
) -> None:
    w = server_world
    old = w.card
    assert w.authorize(old).get_json()["approved"]
    new = w.issue_card(w.seed.resident_id)
    assert w.authorize(old).get_json()["reason"] == "card_revoked"
    assert w.authorize(new).get_json()["remaining"] == {"condoms": 1}


def test_each_person_has_their_own_allowance(server_world: ServerWorld) -> None:
    w = server_world
    other = w.issue_card(w.new_resident())
    for _ in range(3):
        assert w.authorize().get_json()["approved"]
    assert w.authorize(other).get_json()["remaining"] == {"condoms": 2}


def test_a_new_month_brings_a_new_allowance(server_world: ServerWorld) -> None:
    w = server_world
    for _ in range(3):
        w.capture(w.authorize().get_json()["authorization_id"])
    assert w.authorize().get_json()["next_allowed_on"] == "2026-12-01"
    # 2026-11-30T16:00Z is 2026-12-01 00:00 in Asia/Shanghai: a new month there.
    w.clock.now = 1_796_054_400.0
    assert w.authorize().get_json()["remaining"] == {"condoms": 2}


# --- kiosk request authentication -----------------------------------------------------------


def test_unsigned_request_is_401(server_world: ServerWorld) -> None:
    response = server_world.client.post("/api/v1/authorizations", json={"proof": {}, "slot": 1})
    assert response.status_code == 401
    assert problem(response)["code"] == "signature_missing"


def test_wrongly_signed_request_is_401(server_world: ServerWorld) -> None:
    from tests.fixtures.database import TestKiosk

    w = server_world
    impostor = TestKiosk(w.kiosk.id)  # right id, wrong key
    response = w.authorize(kiosk=impostor)
    assert response.status_code == 401
    assert problem(response)["code"] == "signature_invalid"


def test_tampered_body_is_401(server_world: ServerWorld) -> None:
    w = server_world
    raw = json.dumps({"proof": w.kiosk.tap(w.card, w.clock), "slot": 1}).encode()
    headers = w.kiosk.headers("POST", "/api/v1/authorizations", raw, w.clock, idempotency_key="x")
    response = w.client.post(
        "/api/v1/authorizations", data=raw.replace(b'"slot": 1', b'"slot": 2'), headers=headers
    )
    assert problem(response)["code"] == "signature_invalid"


def test_replayed_nonce_is_401(server_world: ServerWorld) -> None:
    w = server_world
    nonce = "ab" * 16
    assert w.authorize(nonce=nonce).status_code == 200
    response = w.authorize(nonce=nonce)
    assert response.status_code == 401
    assert problem(response)["code"] == "nonce_replayed"


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_timestamp_is_401(server_world: ServerWorld, offset: int) -> None:
    w = server_world
    response = w.authorize(timestamp=int(w.clock()) + offset)
    assert response.status_code == 401
    assert problem(response)["code"] == "timestamp_stale"


def test_timestamp_within_the_window_is_accepted(server_world: ServerWorld) -> None:
    w = server_world
    assert w.authorize(timestamp=int(w.clock()) - 299).status_code == 200


def test_unknown_and_disabled_kiosks_are_401(server_world: ServerWorld) -> None:
    from sqlalchemy import update

    from server.store.models import Kiosk
    from tests.fixtures.database import TestKiosk

    w = server_world
    assert problem(w.authorize(kiosk=TestKiosk("K-9999")))["code"] == "kiosk_unknown"
    with w.sessionmaker() as session:
        session.execute(update(Kiosk).values(enabled=False))
        session.commit()
    assert problem(w.authorize())["code"] == "kiosk_disabled"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Timestamp": "soon"}, "timestamp_invalid"),
        ({"X-Nonce": "not-hex-at-all-not-hex-at-all-00"}, "nonce_invalid"),
        ({"X-Nonce": "abcd"}, "nonce_invalid"),
        ({"X-Signature": "!!!"}, "signature_invalid"),
    ],
)
def test_malformed_signature_headers_are_401(
    server_world: ServerWorld, headers: dict, code: str
) -> None:  # type: ignore[type-arg]
    w = server_world
    raw = b"{}"
    signed = w.kiosk.headers("POST", "/api/v1/authorizations", raw, w.clock, idempotency_key="k")
    response = w.client.post("/api/v1/authorizations", data=raw, headers={**signed, **headers})
    assert response.status_code == 401
    assert problem(response)["code"] == code


def test_a_kiosk_cannot_act_for_another(server_world: ServerWorld) -> None:
    w = server_world
    other = w.add_kiosk("K-0002")
    # A proof made for K-0001, sent by K-0002.
    proof = w.kiosk.tap(w.card, w.clock)
    response = w.post("/api/v1/authorizations", {"proof": proof, "slot": 1}, kiosk=other)
    assert response.status_code == 403
    assert problem(response)["code"] == "kiosk_mismatch"
    # K-0002 cannot settle K-0001's authorization, nor learn that it exists.
    a = w.authorize().get_json()["authorization_id"]
    assert problem(w.capture(a, kiosk=other))["code"] == "authorization_unknown"
    assert problem(w.void(a, kiosk=other))["code"] == "authorization_unknown"
    assert w.capture(a).status_code == 200


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b"", b'{"proof": '])
def test_invalid_json_is_400(server_world: ServerWorld, raw: bytes) -> None:
    response = server_world.post("/api/v1/authorizations", raw)
    assert response.status_code == 400
    assert problem(response)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([1, 2], "invalid_request"),
        ({"slot": 1}, "field_missing"),
        ({"proof": "x", "slot": 1}, "field_invalid"),
        ({"proof": {}, "slot": 1}, "proof_malformed"),
        ({"proof": {"kiosk_id": "K-0001"}, "slot": "1"}, "field_invalid"),
        ({"proof": {}, "slot": True}, "field_invalid"),
        ({"proof": {}, "slot": 1, "quantity": 0}, "field_invalid"),
        ({"proof": {}, "slot": 1, "quantity": -5}, "field_invalid"),
        ({"proof": {}, "slot": 1, "quantity": 10**30}, "field_invalid"),
        ({"proof": {}, "slot": 1, "quantity": 1.5}, "field_invalid"),
    ],
)
def test_invalid_authorize_bodies_are_400(
    server_world: ServerWorld, body: object, code: str
) -> None:
    response = server_world.post("/api/v1/authorizations", json.dumps(body).encode())
    assert response.status_code == 400
    assert problem(response)["code"] == code


def test_malformed_proof_fields_are_400(server_world: ServerWorld) -> None:
    w = server_world
    good = w.kiosk.tap(w.card, w.clock)
    for broken in (
        {**good, "nonce": "zz" * 16},
        {**good, "card_guid": "00"},
        {**good, "counter": -1},
        {**good, "counter": "1"},
        {**good, "signature": "***"},
        {k: v for k, v in good.items() if k != "time_ms"},
    ):
        response = w.post("/api/v1/authorizations", {"proof": broken, "slot": 1})
        assert response.status_code == 400, broken
        assert problem(response)["code"] == "proof_malformed"


def test_missing_idempotency_key_is_400(server_world: ServerWorld) -> None:
    response = server_world.authorize(idempotency_key=None)
    assert response.status_code == 400
    assert problem(response)["code"] == "idempotency_key_missing"


def test_oversized_body_is_413(server_world: ServerWorld) -> None:
    response = server_world.post("/api/v1/authorizations", b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413
    assert problem(response)["code"] == "body_too_large"


def test_unknown_path_and_wrong_method_are_problems(server_world: ServerWorld) -> None:
    client = server_world.client
    assert problem(client.get("/api/v1/nothing"))["code"] == "not_found"
    assert problem(client.get("/api/v1/authorizations"))["code"] == "method_not_allowed"


def test_unknown_authorization_is_404(server_world: ServerWorld) -> None:
    w = server_world
    for authorization_id in ("0" * 32, "not-an-id", "'; DROP TABLE cards; --"):
        response = w.capture(authorization_id)
        assert response.status_code == 404
        assert problem(response)["code"] == "authorization_unknown"


def test_void_needs_a_reason(server_world: ServerWorld) -> None:
    w = server_world
    a = w.authorize().get_json()["authorization_id"]
    response = w.post(f"/api/v1/authorizations/{a}/void", {"reason": 5})
    assert problem(response)["code"] == "field_invalid"


def test_nul_in_any_text_is_refused_and_the_reservation_stays(server_world: ServerWorld) -> None:
    # PostgreSQL cannot store U+0000 in text; the fuzz test once found a 500 here.
    w = server_world
    a = w.authorize().get_json()["authorization_id"]
    response = w.post(f"/api/v1/authorizations/{a}/void", {"reason": "jam\x00med"})
    assert response.status_code == 400
    assert problem(response)["code"] == "text_invalid"
    assert w.void(a).get_json()["status"] == "voided"  # nothing partial was written


def test_nul_in_a_query_is_refused(server_world: ServerWorld) -> None:
    response = server_world.client.get(
        "/api/v1/residents?region=ab%00cd", headers={"Authorization": "Bearer x"}
    )
    assert response.status_code == 400
    assert problem(response)["code"] == "text_invalid"


# --- card registration (technician) ------------------------------------------------------------


def test_card_registration_needs_a_technician_token(server_world: ServerWorld) -> None:
    w = server_world
    from tests.fixtures.database import TestCard

    card = TestCard(w.ca)
    import base64

    body = {
        "resident_id": w.seed.resident_id,
        "certificate": base64.b64encode(card.certificate_der).decode(),
    }
    assert problem(w.client.post("/api/v1/cards", json=body))["code"] == "token_missing"
    bad = w.client.post("/api/v1/cards", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and problem(bad)["code"] == "token_invalid"
    with w.sessionmaker() as session:
        from server import services

        auditor = services.create_user(session, w.ctx, "aud", "auditor")
    forbidden = w.client.post(
        "/api/v1/cards", json=body, headers={"Authorization": f"Bearer {auditor}"}
    )
    assert forbidden.status_code == 403 and problem(forbidden)["code"] == "role_required"


def test_card_registration_checks_the_certificate(server_world: ServerWorld) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.fixtures.database import CityCA, TestCard

    w = server_world
    auth = {"Authorization": f"Bearer {w.token}"}
    rogue = TestCard(CityCA())  # a certificate from another CA
    response = w.client.post(
        "/api/v1/cards",
        json={
            "resident_id": w.seed.resident_id,
            "certificate": base64.b64encode(rogue.certificate_der).decode(),
        },
        headers=auth,
    )
    assert response.status_code == 422
    assert problem(response)["code"] == "certificate_invalid"
    garbage = w.client.post(
        "/api/v1/cards",
        json={"resident_id": w.seed.resident_id, "certificate": "AAAA"},
        headers=auth,
    )
    assert problem(garbage)["code"] == "certificate_invalid"
    duplicate = w.client.post(
        "/api/v1/cards",
        json={
            "resident_id": w.seed.resident_id,
            "certificate": base64.b64encode(w.card.certificate_der).decode(),
        },
        headers=auth,
    )
    assert duplicate.status_code == 409 and problem(duplicate)["code"] == "card_exists"
    key = ec.generate_private_key(ec.SECP256R1())
    fresh = w.ca.issue(b"\x01" * 16, key.public_key())
    unknown = w.client.post(
        "/api/v1/cards",
        json={"resident_id": 999_999, "certificate": base64.b64encode(fresh).decode()},
        headers=auth,
    )
    assert unknown.status_code == 404 and problem(unknown)["code"] == "resident_unknown"


def test_a_failed_request_still_spends_its_nonce(server_world: ServerWorld) -> None:
    w = server_world
    nonce = "cd" * 16
    assert w.post("/api/v1/authorizations", b"{", nonce=nonce).status_code == 400
    assert problem(w.authorize(nonce=nonce))["code"] == "nonce_replayed"
    # And one answered from the idempotency store.
    proof = w.kiosk.tap(w.card, w.clock)
    body = {"proof": proof, "slot": 1}
    assert w.post("/api/v1/authorizations", body, idempotency_key="k").status_code == 200
    assert (
        w.post("/api/v1/authorizations", body, idempotency_key="k", nonce="ef" * 16).status_code
        == 200
    )
    assert problem(w.post("/api/v1/authorizations", body, idempotency_key="k", nonce="ef" * 16))[
        "code"
    ] == ("nonce_replayed")
    # And one refused by a service (another kiosk's proof).
    other = w.add_kiosk("K-0002")
    stolen = {"proof": w.kiosk.tap(w.card, w.clock), "slot": 1}
    assert w.post("/api/v1/authorizations", stolen, kiosk=other, nonce="12" * 16).status_code == 403
    assert problem(w.post("/api/v1/authorizations", stolen, kiosk=other, nonce="12" * 16))[
        "code"
    ] == ("nonce_replayed")
