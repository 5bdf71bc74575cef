"""The kiosk hot path after its speed-ups keeps its guarantees, on SQLite and PostgreSQL.

Authorize, capture and void no longer look an Idempotency-Key up before running (a retry is
recognised when its answer cannot be stored, or when the operation refuses it), read with Core
statements, and cache parsed kiosk keys. These tests pin what must not change: a retry gets the
first answer and changes nothing, its nonce is spent, a reused key for another request is
refused, metrics count each decision once, and a re-keyed or disabled kiosk is refused at once.
"""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select, update

from tests.fixtures.database import ServerWorld, TestKiosk


def test_authorize_retry_answers_the_first_answer_and_spends_its_nonce(
    server_world: ServerWorld,
) -> None:
    w = server_world
    body = {"proof": w.kiosk.tap(w.card, w.clock), "slot": 1, "quantity": 1}
    first = w.post("/api/v1/authorizations", body, idempotency_key="tap-1")
    nonce = secrets.token_hex(16)
    retry = w.post("/api/v1/authorizations", body, idempotency_key="tap-1", nonce=nonce)
    assert retry.status_code == 200 and retry.get_json() == first.get_json()
    assert first.get_json()["approved"]
    # The retry ran and was rolled back, but its nonce stays spent.
    again = w.post("/api/v1/authorizations", body, idempotency_key="tap-1", nonce=nonce)
    assert again.status_code == 401 and again.get_json()["code"] == "nonce_replayed"
    # One unit reserved in all; the tap's counter was advanced once.
    assert w.authorize().get_json()["remaining"] == {"condoms": 1}
    metrics = w.client.get("/metrics").get_data(as_text=True)
    assert 'onecard_authorizations_total{outcome="approved"} 2' in metrics
    assert "counter_replayed" not in metrics


def test_capture_and_void_retries_after_the_state_moved(server_world: ServerWorld) -> None:
    w = server_world
    a = w.authorize().get_json()["authorization_id"]
    captured = w.capture(a, idempotency_key="settle-1")
    assert w.capture(a, idempotency_key="settle-1").get_json() == captured.get_json()
    # The same key on another path is another request.
    assert w.void(a, idempotency_key="settle-1").get_json()["code"] == "idempotency_key_reused"
    b = w.authorize().get_json()["authorization_id"]
    voided = w.void(b, idempotency_key="settle-2")
    assert voided.get_json() == {"status": "voided", "remaining": {"condoms": 2}}
    assert w.void(b, idempotency_key="settle-2").get_json() == voided.get_json()


def test_another_kiosks_authorization_stays_unknown(server_world: ServerWorld) -> None:
    w = server_world
    a = w.authorize().get_json()["authorization_id"]
    other = w.add_kiosk("K-0002")
    for settle in (w.capture, w.void):
        response = settle(a, kiosk=other)
        assert response.status_code == 404
        assert response.get_json()["code"] == "authorization_unknown"
    assert w.capture("not-hex").get_json()["code"] == "authorization_unknown"
    assert w.capture("ab" * 16).get_json()["code"] == "authorization_unknown"
    # Untouched: its own kiosk still captures it.
    assert w.capture(a).get_json()["status"] == "captured"


def test_a_re_keyed_or_disabled_kiosk_is_refused_at_once(server_world: ServerWorld) -> None:
    from server.store.models import Kiosk

    w = server_world
    assert w.authorize().status_code == 200  # the old key is parsed and cached
    replacement = TestKiosk(w.kiosk.id)
    with w.sessionmaker() as session:
        session.execute(
            update(Kiosk)
            .where(Kiosk.id == w.kiosk.id)
            .values(public_key=replacement.public_key_b64)
        )
        session.commit()
    assert w.authorize().get_json()["code"] == "signature_invalid"
    assert w.authorize(kiosk=replacement).status_code == 200
    with w.sessionmaker() as session:
        session.execute(update(Kiosk).values(enabled=False))
        session.commit()
    assert w.authorize(kiosk=replacement).get_json()["code"] == "kiosk_disabled"


def test_run_idempotent_without_look_up_replays_when_the_retry_is_refused(
    server_world: ServerWorld,
) -> None:
    """A retry whose operation now fails (the state moved on) still gets the first answer."""
    from server import services
    from server.errors import Conflict
    from server.store.models import IdempotencyRecord

    w = server_world
    calls = []

    def first() -> tuple[int, dict[str, object]]:
        calls.append("first")
        return 200, {"done": 1}

    def refused() -> tuple[int, dict[str, object]]:
        calls.append("refused")
        raise Conflict("already done", code="already_done")

    with w.sessionmaker() as session:
        answer = services.run_idempotent(session, w.ctx, "t", "k", "h", first, look_first=False)
        assert (answer.status, answer.body, answer.replayed) == (200, {"done": 1}, False)
        again = services.run_idempotent(session, w.ctx, "t", "k", "h", refused, look_first=False)
        assert (again.body, again.replayed, again.committed) == ({"done": 1}, True, False)
        with pytest.raises(Conflict):  # nothing stored under this key: the refusal stands
            services.run_idempotent(session, w.ctx, "t", "k2", "h", refused, look_first=False)
        assert (
            session.scalar(select(IdempotencyRecord.key).where(IdempotencyRecord.key == "k2"))
            is None
        )
    assert calls == ["first", "refused", "refused"]
