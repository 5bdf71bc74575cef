"""Schema, migrations, encryption at rest, the audit log and the admin CLI."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from server import services
from server.app import context_of, create_app
from server.demo import prepare_demo
from server.errors import Conflict
from server.services import staff_auth
from server.store import audit
from server.store.db import db, make_engine
from server.store.migrate import downgrade, upgrade
from server.store.models import AuditEntry, Base, KioskSlot, Product, Resident, Role
from tests.fixtures.database import ServerWorld, TestKiosk


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


def test_migrations_match_the_models_and_go_both_ways(empty_database: str) -> None:
    upgrade(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade(engine, "base")
        with engine.connect() as connection:
            tables = set(connection.dialect.get_table_names(connection)) - {"alembic_version"}
        assert tables == set()
        upgrade(engine)
    finally:
        engine.dispose()


def test_personal_fields_are_encrypted_at_rest(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        row = session.execute(text("SELECT * FROM residents")).mappings().first()
        assert row is not None
        stored = b"".join(
            bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row.values()
        )
        assert b"Demo Resident" not in stored
        assert b"1994-05-17" not in stored
        resident = session.get(Resident, row["id"])
        assert resident is not None
        assert w.ctx.cipher.decrypt("name", resident.name_enc) == "Demo Resident"
        # A ciphertext moved to another field does not decrypt.
        with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
            w.ctx.cipher.decrypt("phone", resident.name_enc)


def test_an_id_number_is_enrolled_once(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        kwargs = dict(
            name="A",
            sex="F",
            birth_date=dt.date(1990, 1, 1),
            phone=None,
            region_id=w.seed.village_region_id,
        )
        services.enrol_resident(session, w.ctx, id_number="110101199001011234", **kwargs)  # type: ignore[arg-type]
        session.commit()
        with pytest.raises(Conflict):
            services.enrol_resident(session, w.ctx, id_number="1101-0119 9001011234", **kwargs)  # type: ignore[arg-type]


def test_audit_log_is_chained_and_append_only(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [e.action for e in entries][:3] == [
            "resident.enrol",
            "kiosk.register",
            "user.create",
        ]
        assert "card.issue" in [e.action for e in entries]
        assert audit.verify_chain(session) is None
        session.rollback()
        for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
            with pytest.raises(DBAPIError):
                session.execute(text(statement))
            session.rollback()
        assert audit.verify_chain(session) is None


def test_audit_chain_detects_a_changed_entry(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id).limit(1)).one()
        session.expunge(entry)
        forged = audit.entry_hash(
            entry.prev_hash, entry.at, "forger", entry.action, entry.subject, entry.detail
        )
        assert forged != entry.hash


def test_cli_init_seed_user_kiosk(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from server.cli import main

    monkeypatch.setenv("ONECARD_DATABASE_URL", database_url)
    monkeypatch.setenv("ONECARD_DATA_DIR", str(tmp_path / "data"))
    assert main(["init-db"]) == 0
    capsys.readouterr()
    assert main(["seed-demo"]) == 0
    seed = json.loads(capsys.readouterr().out)
    assert seed["category"] == "condoms" and seed["monthly_limit"] == 3 and seed["resident_id"] >= 1
    assert main(["create-user", "--role", "technician", "--name", "ann"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("oc_") and len(token) > 40
    kiosk = TestKiosk("K-0001")
    args = [
        "add-kiosk",
        "--id",
        "K-0001",
        "--public-key",
        kiosk.public_key_b64,
        "--slot",
        "1=CONDOM-STD-1",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {
        "kiosk_id": "K-0001",
        "slots": {"1": "CONDOM-STD-1"},
    }
    assert (
        main(
            [
                "add-kiosk",
                "--id",
                "K-0002",
                "--public-key",
                kiosk.public_key_b64,
                "--slot",
                "1=NOPE",
            ]
        )
        == 1
    )
    assert "sku_unknown" in capsys.readouterr().err
    bad_key = base64.b64encode(b"short").decode()
    assert main(["add-kiosk", "--id", "K-0003", "--public-key", bad_key]) == 1
    assert main(["create-user", "--role", "technician", "--name", "ann"]) == 1  # exists


def test_prepare_demo(database_url: str, tmp_path: Path) -> None:
    kiosk = TestKiosk("K-0001")
    config = {"ONECARD_DATA_DIR": str(tmp_path / "data")}
    first = prepare_demo(
        database_url=database_url,
        kiosk_id=kiosk.id,
        kiosk_public_key=kiosk.public_key_b64,
        slot=1,
        stock=10,
        config=config,
    )
    again = prepare_demo(
        database_url=database_url,
        kiosk_id=kiosk.id,
        kiosk_public_key=kiosk.public_key_b64,
        slot=1,
        stock=10,
        config=config,
    )
    assert first.limit == 3 and first.category == "condoms"
    assert again.resident_id != first.resident_id  # each run starts with a full allowance
    assert first.technician_token != again.technician_token
    assert {role for _name, role, _password in again.staff} == {r.value for r in Role}
    assert again.slots == {1: "CONDOM-STD-1", 2: "CONDOM-THIN-1", 3: "LUBE-1"}
    app = create_app({**config, "ONECARD_DATABASE_URL": database_url})
    try:
        with db.bound(app).sessionmaker() as session:
            # The kiosk offers the demo catalogue in three slots, each stocked (twice run: once).
            slots = session.execute(
                select(KioskSlot.slot, Product.sku, KioskSlot.stock)
                .join(Product, Product.id == KioskSlot.product_id)
                .where(KioskSlot.kiosk_id == kiosk.id)
                .order_by(KioskSlot.slot)
            ).all()
            assert [tuple(row) for row in slots] == [
                (1, "CONDOM-STD-1", 10),
                (2, "CONDOM-THIN-1", 10),
                (3, "LUBE-1", 10),
            ]
            for name, _role, password in again.staff:  # each demo sign-in works
                signed = staff_auth.sign_in(session, context_of(app), name, password, "127.0.0.1")
                assert signed.token is not None, (name, signed.refusal)
    finally:
        db.dispose(app)


def test_processes_sharing_a_sqlite_database_share_its_development_keys(tmp_path: Path) -> None:
    from server.config import ServerConfig

    url = f"sqlite:///{tmp_path / 'db' / 'server.sqlite3'}"
    first = ServerConfig.load(
        {"ONECARD_DATABASE_URL": url, "ONECARD_DATA_DIR": str(tmp_path / "a")}
    )
    second = ServerConfig.load(
        {"ONECARD_DATABASE_URL": url, "ONECARD_DATA_DIR": str(tmp_path / "b")}
    )
    assert first.field_key == second.field_key and len(first.field_key) == 32
    assert first.server_key == second.server_key != first.field_key
    assert (tmp_path / "db" / "server.sqlite3.field.key").stat().st_mode & 0o777 == 0o600


def test_cli_verify_audit_and_prune(
    server_world: ServerWorld,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from server.cli import main

    monkeypatch.setenv("ONECARD_DATABASE_URL", database_url)
    monkeypatch.setenv("ONECARD_FIELD_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    server_world.authorize()
    assert main(["verify-audit"]) == 0
    assert "intact" in capsys.readouterr().out
    assert main(["prune"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {
        "nonces",
        "idempotency_records",
        "kiosk_events",
        "staff_card_challenges",
    }


def test_prune_keeps_what_a_retry_may_still_need(server_world: ServerWorld) -> None:
    w = server_world
    w.authorize()
    with w.sessionmaker() as session:
        assert services.prune(session, w.ctx) == (0, 0)
        w.clock.advance(3600)
        assert services.prune(session, w.ctx) == (1, 0)  # the nonce: its timestamp is stale now
        w.clock.advance(31 * 24 * 3600)
        assert services.prune(session, w.ctx) == (0, 1)
        session.commit()
