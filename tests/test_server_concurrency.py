"""Concurrency over real HTTP: many kiosks at once never take more than the allowance.

Runs against a threaded werkzeug server on SQLite (BEGIN IMMEDIATE) and PostgreSQL (row locks).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from server.store.models import Authorization, AuthorizationStatus, Usage
from tests.fixtures.database import ServerWorld, TestKiosk

CLIENTS = 64


def _post(
    base: str, world: ServerWorld, kiosk: TestKiosk, path: str, body: dict, key: str
) -> requests.Response:  # type: ignore[type-arg]
    raw = json.dumps(body).encode()
    headers = kiosk.headers("POST", path, raw, world.clock, idempotency_key=key)
    return requests.post(base + path, data=raw, headers=headers, timeout=60)


def _together(count: int, work) -> list:  # type: ignore[no-untyped-def, type-arg]
    barrier = threading.Barrier(count)

    def run(i: int):  # type: ignore[no-untyped-def]
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_many_kiosks_at_once_get_exactly_the_allowance(
    server_world: ServerWorld, live_server: str
) -> None:
    w = server_world
    kiosks = [w.add_kiosk(f"K-{i:04d}") for i in range(100, 100 + CLIENTS)]
    proofs = [k.tap(w.card, w.clock) for k in kiosks]

    def authorize(i: int) -> dict:  # type: ignore[type-arg]
        response = _post(
            live_server,
            w,
            kiosks[i],
            "/api/v1/authorizations",
            {"proof": proofs[i], "slot": 1},
            secrets.token_hex(8),
        )
        assert response.status_code == 200, response.text
        return response.json()

    answers = _together(CLIENTS, authorize)
    outcomes = Counter("approved" if a["approved"] else a["reason"] for a in answers)
    assert outcomes == {
        "approved": w.seed.monthly_limit,
        "limit_reached": CLIENTS - w.seed.monthly_limit,
    }
    with w.sessionmaker() as session:
        reserved = session.scalar(select(func.sum(Usage.reserved)))
        rows = session.scalar(select(func.count()).select_from(Authorization))
    assert reserved == rows == w.seed.monthly_limit


def test_concurrent_retries_with_one_key_reserve_once(
    server_world: ServerWorld, live_server: str
) -> None:
    w = server_world
    proof = w.kiosk.tap(w.card, w.clock)
    body = {"proof": proof, "slot": 1}
    answers = _together(
        16,
        lambda _i: _post(
            live_server, w, w.kiosk, "/api/v1/authorizations", body, "same-key"
        ).json(),
    )
    assert all(a == answers[0] for a in answers), answers
    assert answers[0]["approved"] is True
    with w.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Authorization)) == 1


def test_concurrent_capture_and_void_settle_once(
    server_world: ServerWorld, live_server: str
) -> None:
    w = server_world
    authorization_id = w.authorize().get_json()["authorization_id"]
    base = f"/api/v1/authorizations/{authorization_id}"

    def settle(i: int) -> tuple[str, int]:
        if i % 2:
            response = _post(
                live_server, w, w.kiosk, base + "/capture", {"board_txn": i}, secrets.token_hex(8)
            )
        else:
            response = _post(
                live_server, w, w.kiosk, base + "/void", {"reason": "jammed"}, secrets.token_hex(8)
            )
        return ("capture" if i % 2 else "void"), response.status_code

    results = _together(16, settle)
    with w.sessionmaker() as session:
        authorization = session.get(Authorization, authorization_id)
        assert authorization is not None
        usage = session.scalars(select(Usage)).one()
    winner = "capture" if authorization.status is AuthorizationStatus.CAPTURED else "void"
    for action, status in results:
        assert status == (200 if action == winner else 409), results
    assert usage.reserved == 0
    assert usage.captured == (1 if winner == "capture" else 0)


def test_one_slot_is_booked_once(server_world: ServerWorld, live_server: str) -> None:
    from server import services

    w = server_world
    desk = TestKiosk("ST-0001")
    with w.sessionmaker() as session:
        services.add_station(session, w.ctx, desk.id, desk.public_key_b64)
        staff = services.create_user(session, w.ctx, "desk-staff", "station_staff")
    people = [w.new_resident() for _ in range(12)]

    def book(i: int) -> int:
        body = {
            "station_id": desk.id,
            "programme": "reproductive_health_check",
            "resident_id": people[i],
            "starts_at": "2026-11-18T14:00:00+08:00",
        }
        response = requests.post(
            live_server + "/api/v1/appointments",
            json=body,
            headers={"Authorization": f"Bearer {staff}"},
            timeout=60,
        )
        return response.status_code

    assert sorted(_together(len(people), book)) == [201] + [409] * (len(people) - 1)
