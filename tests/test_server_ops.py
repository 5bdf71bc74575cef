"""Operations: open reservations with their age, and the Prometheus /metrics endpoint."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from server.http import framework
from server.store.models import SeenNonce
from tests.fixtures.database import ServerWorld


def test_open_reservations_are_listed_oldest_first_with_their_age(
    server_world: ServerWorld,
) -> None:
    w = server_world
    auth = {"Authorization": f"Bearer {w.token}"}
    first = w.authorize().get_json()["authorization_id"]
    w.clock.advance(60)
    second = w.authorize().get_json()["authorization_id"]
    settled = w.authorize().get_json()["authorization_id"]
    w.capture(settled)
    w.clock.advance(3600)
    page = w.client.get("/api/v1/reservations", headers=auth).get_json()
    assert [item["authorization_id"] for item in page["items"]] == [first, second]
    assert [item["age_seconds"] for item in page["items"]] == [3660, 3600]
    assert page["items"][0]["kiosk_id"] == "K-0001"
    assert page["next_after"] is None
    one = w.client.get("/api/v1/reservations?limit=1", headers=auth).get_json()
    assert [i["authorization_id"] for i in one["items"]] == [first] and one["next_after"] == first
    rest = w.client.get(f"/api/v1/reservations?limit=1&after={first}", headers=auth).get_json()
    assert [i["authorization_id"] for i in rest["items"]] == [second]
    # Nothing is released by waiting: the units stay reserved until settled.
    assert w.authorize().get_json()["reason"] == "limit_reached"
    assert w.client.get("/api/v1/reservations").status_code == 401


def test_metrics(server_world: ServerWorld) -> None:
    w = server_world
    w.authorize()
    w.clock.advance(120)
    w.authorize(slot=9)
    w.client.post("/api/v1/authorizations", data=b"{")
    text = w.client.get("/metrics").get_data(as_text=True)
    assert 'onecard_authorizations_total{outcome="approved"} 1' in text
    assert 'onecard_authorizations_total{outcome="slot_unknown"} 1' in text
    assert re.search(
        r'onecard_http_requests_total\{endpoint="/api/v1/authorizations",method="POST",status="401"\} 1',
        text,
    )
    assert "onecard_open_reservations 1" in text
    assert "onecard_oldest_reservation_age_seconds 120" in text
    assert re.search(
        r'onecard_http_request_duration_seconds_count\{endpoint="/api/v1/authorizations"\} 3', text
    )
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r"^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$", line), line


def test_staff_see_only_their_own_area(server_world: ServerWorld) -> None:
    import base64

    from server import services
    from tests.fixtures.database import TestCard

    w = server_world
    with w.sessionmaker() as session:
        inside = services.create_user(
            session, w.ctx, "riverside", "technician", region_code="C01-T01"
        )
        outside = services.create_user(session, w.ctx, "hill", "technician", region_code="C01-T02")
    resident = w.new_resident()  # lives in C01-T01-V001, under C01-T01

    def register(token: str):  # type: ignore[no-untyped-def]
        card = TestCard(w.ca)
        body = {
            "resident_id": resident,
            "certificate": base64.b64encode(card.certificate_der).decode(),
        }
        return w.client.post(
            "/api/v1/cards", json=body, headers={"Authorization": f"Bearer {token}"}
        )

    refused = register(outside)
    assert refused.status_code == 403 and refused.get_json()["code"] == "out_of_scope"
    assert register(inside).status_code == 201


def test_nonces_are_pruned_in_passing(server_world: ServerWorld, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    w = server_world
    monkeypatch.setattr(framework, "NONCE_PRUNE_EVERY", 1)
    w.authorize()
    w.clock.advance(3600)
    assert w.post("/api/v1/authorizations", b"{").status_code == 400  # an error answer prunes too
    assert w.authorize().status_code == 200
    with w.sessionmaker() as session:
        assert (
            session.scalar(select(func.count()).select_from(SeenNonce)) == 2
        )  # the old one is gone
