"""Enrolment, search (masked, scoped, audited) and card revocation, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from server import services
from server.store.models import AuditEntry
from tests.fixtures.database import ServerWorld
from tests.test_server_openapi import check_answer

PERSON = {
    "name": "Li Na",
    "sex": "F",
    "birth_date": "1995-03-08",
    "phone": "13800138000",
    "id_number": "110101199503081234",
    "region": "C01-T01-V001",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_enrol_then_find_by_id_number_masked_and_audited(server_world: ServerWorld) -> None:
    w = server_world
    enrolled = w.client.post("/api/v1/residents", json=PERSON, headers=bearer(w.token))
    check_answer("POST", "/api/v1/residents", enrolled)
    assert enrolled.status_code == 201
    assert enrolled.get_json()["id_number"] == "*" * 14 + "1234"
    again = w.client.post(
        "/api/v1/residents",
        json={**PERSON, "id_number": "1101 0119 9503 081234"},
        headers=bearer(w.token),
    )
    assert again.status_code == 409 and again.get_json()["code"] == "resident_exists"

    with w.sessionmaker() as session:
        reads_before = session.scalar(
            select(func.count()).where(AuditEntry.action == "resident.read")
        )
    found = w.client.get("/api/v1/residents?id_number=110101199503081234", headers=bearer(w.token))
    check_answer("GET", "/api/v1/residents", found)
    [person] = found.get_json()["items"]
    assert person["name"] == "Li Na" and person["birth_date"] == "1995-03-08"
    assert person["id_number"].endswith("1234") and "110101" not in person["id_number"]
    with w.sessionmaker() as session:
        reads_after = session.scalar(
            select(func.count()).where(AuditEntry.action == "resident.read")
        )
    assert reads_after == (reads_before or 0) + 1


def test_search_is_safe_and_scoped(server_world: ServerWorld) -> None:
    w = server_world
    w.client.post("/api/v1/residents", json=PERSON, headers=bearer(w.token))
    for hostile in ("' OR 1=1 --", "%", "_", "'; DROP TABLE residents; --"):
        response = w.client.get(
            "/api/v1/residents", query_string={"id_number": hostile}, headers=bearer(w.token)
        )
        assert response.status_code == 200 and response.get_json()["items"] == []
        assert (
            w.client.get(
                "/api/v1/residents", query_string={"region": hostile}, headers=bearer(w.token)
            ).status_code
            == 404
        )
    with w.sessionmaker() as session:
        outsider = services.create_user(
            session, w.ctx, "hill-staff", "station_staff", region_code="C01-T02"
        )
        insider = services.create_user(
            session, w.ctx, "river-staff", "station_staff", region_code="C01-T01"
        )
    assert (
        w.client.get(
            "/api/v1/residents?id_number=110101199503081234", headers=bearer(outsider)
        ).get_json()["items"]
        == []
    )
    assert (
        w.client.get("/api/v1/residents?region=C01-T01", headers=bearer(outsider)).status_code
        == 403
    )
    listed = w.client.get(
        "/api/v1/residents?region=C01-T01&limit=1", headers=bearer(insider)
    ).get_json()
    assert len(listed["items"]) == 1 and listed["next_after"] == listed["items"][0]["resident_id"]
    rest = w.client.get(
        f"/api/v1/residents?region=C01-T01&after={listed['next_after']}", headers=bearer(insider)
    ).get_json()
    assert {p["name"] for p in listed["items"] + rest["items"]} == {"Demo Resident", "Li Na"}
    refused = w.client.post(
        "/api/v1/residents",
        json={**PERSON, "id_number": "X1234567", "region": "C01-T01"},
        headers=bearer(outsider),
    )
    assert refused.status_code == 403
    assert w.client.get("/api/v1/residents", headers=bearer(insider)).status_code == 400


def test_enrolment_validation(server_world: ServerWorld) -> None:
    w = server_world
    for change in (
        {"sex": "X"},
        {"birth_date": "1995-13-45"},
        {"id_number": "12"},
        {"phone": "call me"},
        {"name": ""},
        {"region": 5},
    ):
        response = w.client.post(
            "/api/v1/residents", json={**PERSON, **change}, headers=bearer(w.token)
        )
        assert response.status_code == 400, change
    assert (
        w.client.post(
            "/api/v1/residents", json={**PERSON, "region": "NOWHERE"}, headers=bearer(w.token)
        ).status_code
        == 404
    )


def test_revoked_card_is_refused_and_listed(server_world: ServerWorld) -> None:
    w = server_world
    guid = w.card.guid.hex()
    path = f"/api/v1/cards/{guid}/revoke"
    revoked = w.client.post(path, json={"reason": "lost"}, headers=bearer(w.token))
    check_answer("POST", path, revoked)
    assert revoked.get_json() == {"card_guid": guid, "status": "revoked"}
    assert w.client.post(path, json={"reason": "lost"}, headers=bearer(w.token)).status_code == 200
    assert w.authorize().get_json()["reason"] == "card_revoked"
    listed = "/api/v1/revocations?since=0"
    delta = w.client.get(listed, headers=w.kiosk.headers("GET", listed, b"", w.clock)).get_json()
    assert [entry["card_guid"] for entry in delta["added"]] == [guid]
    assert (
        w.client.post(
            "/api/v1/cards/" + "0" * 32 + "/revoke", json={"reason": "x"}, headers=bearer(w.token)
        ).status_code
        == 404
    )
    assert (
        w.client.post(
            "/api/v1/cards/zz/revoke", json={"reason": "x"}, headers=bearer(w.token)
        ).status_code
        == 404
    )
