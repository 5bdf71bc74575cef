"""The kiosk hot path's data access (server.store.ledger), on SQLite and PostgreSQL.

The ledger spends a request's nonce in the same round trip as it reads the kiosk row, before the
signature is checked; these tests pin that a request which then fails authentication leaves no
trace, that each database gets its own ledger, and how many statements an authorization and its
capture cost on PostgreSQL (the reason the ledger exists).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, update

from server.store import ledger
from server.store.models import Kiosk, SeenNonce
from tests.fixtures.database import ServerWorld, TestKiosk, _truncate_all


def _spent(w: ServerWorld, nonce: str) -> int:
    with w.sessionmaker() as session:
        return int(
            session.scalar(select(func.count()).where(SeenNonce.nonce == nonce)) or 0  # type: ignore[arg-type]
        )


def test_a_request_that_fails_authentication_does_not_spend_its_nonce(
    server_world: ServerWorld,
) -> None:
    w = server_world
    nonce = secrets.token_hex(16)
    impostor = TestKiosk(w.kiosk.id)  # the kiosk's id, another key
    forged = w.authorize(kiosk=impostor, nonce=nonce)
    assert forged.status_code == 401 and forged.get_json()["code"] == "signature_invalid"
    assert _spent(w, nonce) == 0
    # The genuine kiosk may still use that nonce, once.
    genuine = w.authorize(nonce=nonce)
    assert genuine.status_code == 200 and genuine.get_json()["approved"]
    assert _spent(w, nonce) == 1
    replay = w.authorize(nonce=nonce)
    assert replay.status_code == 401 and replay.get_json()["code"] == "nonce_replayed"


def test_a_disabled_kiosk_spends_no_nonce(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        session.execute(update(Kiosk).where(Kiosk.id == w.kiosk.id).values(enabled=False))
        session.commit()
    nonce = secrets.token_hex(16)
    refused = w.authorize(nonce=nonce)
    assert refused.status_code == 401 and refused.get_json()["code"] == "kiosk_disabled"
    assert _spent(w, nonce) == 0


def test_each_database_gets_its_ledger(server_world: ServerWorld) -> None:
    with server_world.sessionmaker() as session:
        found = ledger.ledger_for(session)
        expected = (
            ledger.PgLedger
            if session.get_bind().dialect.name == "postgresql"
            else ledger.CoreLedger
        )
        assert type(found) is expected
        assert ledger.ledger_for(session) is found  # one per session


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every SQL statement psycopg sends (SQLAlchemy's and the ledger's all pass through
    Cursor.execute), in order."""
    seen: list[str] = []
    original = psycopg.Cursor.execute

    def counted(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
        seen.append(str(query))
        return original(self, query, params, **options)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    yield seen


@pytest.fixture
def postgres_world(postgres_session_database: str, tmp_path: Path) -> Iterator[ServerWorld]:
    """A ServerWorld on PostgreSQL only (SQLite runs in-process: no round trips to count)."""
    _truncate_all(postgres_session_database)
    world = ServerWorld(postgres_session_database, tmp_path / "server-data")
    try:
        yield world
    finally:
        world.close()


@pytest.mark.postgres
def test_postgresql_authorization_and_capture_take_eight_statements(
    postgres_world: ServerWorld, statements: list[str]
) -> None:
    w = postgres_world
    # The first pair loads the rules cache; count the second.
    w.capture(w.authorize().get_json()["authorization_id"])
    statements.clear()
    answer = w.authorize().get_json()
    assert answer["approved"]
    assert w.capture(answer["authorization_id"]).status_code == 200
    calls = [
        s.split("(")[0].removeprefix("SELECT * FROM ").removeprefix("SELECT ") for s in statements
    ]
    assert calls == [
        "onecard_device_request",
        "onecard_tap_context",
        "onecard_hold",
        "onecard_reserve",
        "INSERT INTO idempotency_records ",
        "onecard_device_request",
        "onecard_settle",
        "INSERT INTO idempotency_records ",
    ]
