"""Backup and restore (issue 13, part 3), on SQLite and PostgreSQL: a busy server (settled,
open and refused authorizations, an exam record, audit rows) is backed up with `onecard server
backup`, wiped (database and key files), restored with `onecard server restore`; then the audit
chain verifies, every authorization and exam row is back as it was, the key files are back, and
the kiosk settles its open transactions (one dropped, one jammed) against the restored server
over HTTP with its own journal and client. The container itself: a wrong passphrase, a flipped
byte, a truncated file and a file whose member does not match the manifest are each refused."""

from __future__ import annotations

import base64
import logging
import secrets
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kiosk.board import DispenseOutcome
from kiosk.client import ServerClient
from kiosk.journal import Journal, TxnState
from kiosk.tap import Kiosk
from server import services
from server.app import create_app
from server.cli import main as server_cli
from server.store import backup as backups
from server.store.audit import verify_chain
from server.store.db import db
from tests.fixtures.database import ServerWorld, TestKiosk
from tests.fixtures.serving import serve_app
from tests.test_kiosk_recovery import FakeBoard

PASSPHRASE = "correct horse battery staple"


def _rows(sessionmaker: Any, table: str) -> list[tuple[Any, ...]]:
    with sessionmaker() as session:
        return [tuple(row) for row in session.execute(text(f"SELECT * FROM {table} ORDER BY id"))]


def _wipe(database_url: str, sqlite_file: Path | None, key_files: list[Path]) -> None:
    if sqlite_file is not None:
        for path in sqlite_file.parent.glob(sqlite_file.name + "*"):
            if not path.name.endswith(".key"):
                path.unlink()
    else:
        from server.store.db import make_engine

        engine = make_engine(database_url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    for path in key_files:
        path.unlink()


def _open_transaction(
    journal: Journal, client: ServerClient, w: ServerWorld, last: TxnState, outcome: str | None
) -> tuple[int, str]:
    """A tap authorized at the server for real, then the kiosk 'crashed' at `last`."""
    key = secrets.token_hex(8)
    proof = w.kiosk.tap(w.card, w.clock)
    txn = journal.begin(1, key, {"proof": proof, "slot": 1})
    answer = client.authorize(proof, 1, key)
    assert answer.approved and answer.authorization_id
    journal.advance(txn.id, TxnState.AUTHORIZED, authorization_id=answer.authorization_id)
    if last is TxnState.AUTHORIZED:
        return txn.id, answer.authorization_id
    journal.advance(txn.id, TxnState.DISPENSING)
    if last is TxnState.DISPENSED:
        journal.advance(txn.id, TxnState.DISPENSED, outcome=outcome)
    return txn.id, answer.authorization_id


def test_backup_wipe_restore_and_the_kiosk_settles(
    server_world: ServerWorld,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = server_world
    w.clock.follow_real_time()  # the kiosk's own client signs with the real clock
    environment = {
        **w.environment(tmp_path / "card-ca.pem"),
        "ONECARD_BACKUP_PASSPHRASE": PASSPHRASE,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    # --- a busy server: settled, open and refused authorizations, an exam, audit rows -----------
    journal = Journal(tmp_path / "kiosk" / "journal.sqlite3")
    with serve_app(w.app) as url, ServerClient(url, w.kiosk.id, w.kiosk.key) as client:
        settled = client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
        assert settled.authorization_id is not None
        client.capture(settled.authorization_id, 1, secrets.token_hex(8))
        dropped, dropped_auth = _open_transaction(journal, client, w, TxnState.DISPENSED, "ok")
        jammed, jammed_auth = _open_transaction(journal, client, w, TxnState.DISPENSING, None)
        refused = client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
        assert refused.reason == "limit_reached"  # 3 a month: one captured, two reserved
    desk = TestKiosk("ST-0001")
    with w.sessionmaker() as session:
        services.add_station(session, w.ctx, desk.id, desk.public_key_b64)
    exam = w.post(
        "/api/v1/exams/records",
        {"proof": desk.tap(w.card, w.clock), "programme": "reproductive_health_check"},
        kiosk=desk,
    )
    assert exam.status_code == 201, exam.get_json()
    before = {t: _rows(w.sessionmaker, t) for t in ("authorizations", "exam_records", "audit_log")}
    assert len(before["authorizations"]) >= 3 and len(before["exam_records"]) == 1
    assert len(before["audit_log"]) > 3
    with w.sessionmaker() as session:
        assert verify_chain(session) is None

    sqlite_file = (
        Path(database_url.removeprefix("sqlite:///")) if database_url.startswith("sqlite") else None
    )
    key_dir, prefix = (
        (sqlite_file.parent, sqlite_file.name + ".")
        if sqlite_file
        else (tmp_path / "server-data", "")
    )
    key_files = [key_dir / f"{prefix}{n}" for n in ("server-signing.key", "card-master.key")]
    keys_before = {path: path.read_bytes() for path in key_files}

    # --- backup --------------------------------------------------------------------------------
    (tmp_path / "backups").mkdir()
    assert server_cli(["backup", "--out", str(tmp_path / "backups")]) == 0
    (backup_file,) = (tmp_path / "backups").glob("onecard-*.backup")
    assert backup_file.stat().st_mode & 0o777 == 0o600
    sealed = backup_file.read_bytes()
    for secret in keys_before.values():  # nothing readable without the passphrase
        assert secret.strip() not in sealed
    assert b"alembic_version" not in sealed and b"manifest" not in sealed
    capsys.readouterr()

    # --- wipe: the database and the key files are gone -----------------------------------------
    w.close()
    _wipe(database_url, sqlite_file, key_files)
    assert not any(path.exists() for path in key_files)

    # --- restore -------------------------------------------------------------------------------
    assert server_cli(["restore", str(backup_file)]) == 0
    said = capsys.readouterr().out
    assert "audit log: the chain is intact" in said
    assert {path: path.read_bytes() for path in key_files} == keys_before
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in key_files)

    restored = create_app(
        {**environment, "ONECARD_CARD_CA_DER": w.ca.der}  # the same server, started again
    )
    sessionmaker = db.bound(restored).sessionmaker
    try:
        after = {t: _rows(sessionmaker, t) for t in before}
        assert after == before
        with sessionmaker() as session:
            assert verify_chain(session) is None

        # --- the kiosk settles its open transactions against the restored server --------------
        board = FakeBoard({jammed: DispenseOutcome.JAMMED})
        with serve_app(restored) as url, ServerClient(url, w.kiosk.id, w.kiosk.key) as client:
            kiosk = Kiosk(
                kiosk_id=w.kiosk.id,
                journal=journal,
                server=client,
                board=board,  # type: ignore[arg-type]
                ca_certificate_der=w.ca.der,
            )
            assert sorted(kiosk.recover()) == sorted(
                [(dropped, TxnState.CAPTURED), (jammed, TxnState.VOIDED)]
            )
        assert journal.open_transactions() == [] and board.dispensed == []
        with sessionmaker() as session:
            status = dict(
                session.execute(
                    text("SELECT id, status FROM authorizations WHERE id IN (:a, :b)"),
                    {"a": dropped_auth, "b": jammed_auth},
                ).all()
            )
            assert status == {dropped_auth: "captured", jammed_auth: "voided"}
            assert verify_chain(session) is None
    finally:
        db.dispose(restored)
        journal.close()


def test_a_kiosk_settles_taps_an_older_backup_never_saw(
    server_world: ServerWorld,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restored from a backup taken before three taps: the server answers 404
    authorization_unknown to their capture or void. The item that fell is charged once, through
    the offline sync (the journal still holds its proof); the jam and the tap that never reached
    the board are closed at the kiosk as voided, charging nobody; the log says so."""
    w = server_world
    w.clock.follow_real_time()
    environment = w.environment(tmp_path / "card-ca.pem")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    journal = Journal(tmp_path / "kiosk" / "journal.sqlite3")
    with serve_app(w.app) as url, ServerClient(url, w.kiosk.id, w.kiosk.key) as client:
        earlier = client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
        assert earlier.authorization_id is not None
        client.void(earlier.authorization_id, "jammed", secrets.token_hex(8))
        backup_file = tmp_path / "older.backup"
        backups.backup(backup_file, PASSPHRASE)
        # After the backup: taps whose authorizations the restored server will never have seen.
        dropped, dropped_auth = _open_transaction(journal, client, w, TxnState.DISPENSED, "ok")
        jammed, jammed_auth = _open_transaction(journal, client, w, TxnState.DISPENSING, None)
        unsent, unsent_auth = _open_transaction(journal, client, w, TxnState.AUTHORIZED, None)
    dropped_proof = journal.get(dropped).request["proof"]  # type: ignore[index]
    w.close()
    backups.restore(backup_file, PASSPHRASE)

    restored = create_app({**environment, "ONECARD_CARD_CA_DER": w.ca.der})
    sessionmaker = db.bound(restored).sessionmaker
    try:
        lost = {dropped_auth, jammed_auth, unsent_auth}
        assert not lost & {row[0] for row in _rows(sessionmaker, "authorizations")}
        board = FakeBoard({jammed: DispenseOutcome.JAMMED})
        with (
            serve_app(restored) as url,
            ServerClient(url, w.kiosk.id, w.kiosk.key) as client,
            caplog.at_level(logging.WARNING, logger="kiosk.tap"),
        ):
            kiosk = Kiosk(
                kiosk_id=w.kiosk.id,
                journal=journal,
                server=client,
                board=board,  # type: ignore[arg-type]
                ca_certificate_der=w.ca.der,
            )
            assert sorted(kiosk.recover()) == sorted(
                [(dropped, TxnState.SYNCED), (jammed, TxnState.VOIDED), (unsent, TxnState.VOIDED)]
            )
            charged = _charged(sessionmaker, w.card)
            assert kiosk.recover() == []  # again: nothing left, nothing charged twice
            resent = {"txn_id": str(dropped), "proof": dropped_proof, "slot": 1, "quantity": 1}
            answer = client.sync([{**resent, "outcome": "ok"}], secrets.token_hex(8))
            assert [r["status"] for r in answer["results"]] == ["duplicate"]
        assert journal.open_transactions() == [] and board.dispensed == []
        assert charged == _charged(sessionmaker, w.card)
        assert charged == [(dropped_proof["counter"], "captured", True, dropped)]
        for txn_id in (jammed, unsent):
            assert journal.steps(txn_id)[-1][1:] == (TxnState.VOIDED, "authorization_unknown")
        said = caplog.text
        assert f"txn {dropped}: the server has no authorization {dropped_auth}" in said
        assert "re-sent through the offline sync" in said
        assert f"txn {jammed}: the server has no authorization {jammed_auth}" in said
        assert "nothing fell (jammed), so there is nothing to charge" in said
        with sessionmaker() as session:
            assert verify_chain(session) is None
    finally:
        db.dispose(restored)
        journal.close()


def _charged(sessionmaker: Any, card: Any) -> list[tuple[Any, ...]]:
    """(tap counter, status, offline, board txn) of the card's authorizations that charge."""
    with sessionmaker() as session:
        return [
            tuple(row)
            for row in session.execute(
                text(
                    "SELECT a.proof_counter, a.status, a.offline, a.board_txn "
                    "FROM authorizations a JOIN cards c ON c.id = a.card_id "
                    "WHERE c.guid = :guid AND a.status <> 'voided' ORDER BY a.proof_counter"
                ),
                {"guid": card.guid.hex()},
            )
        ]


# --- the container -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small migrated SQLite server (development keys) configured in the environment; its
    database file."""
    from server.store.migrate import upgrade

    database = tmp_path / "server" / "onecard.db"
    database.parent.mkdir()
    upgrade(f"sqlite:///{database}")
    monkeypatch.setenv("ONECARD_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("ONECARD_PRODUCTION", "0")
    monkeypatch.delenv("ONECARD_FIELD_KEY", raising=False)
    monkeypatch.delenv(backups.PASSPHRASE_SETTING, raising=False)
    return database


@pytest.fixture
def sqlite_backup(sqlite_server: Path, tmp_path: Path) -> Path:
    """A backup of the small SQLite server, sealed with the passphrase."""
    out = tmp_path / "server.backup"
    backups.backup(out, PASSPHRASE)
    return out


def test_a_backup_sealed_to_a_recipient_key_needs_no_passphrase(
    sqlite_server: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keygen-backup-key, then backup --recipient with no passphrase anywhere (the nightly
    timer's case), the database wiped, restore --identity: back, the audit chain intact."""
    identity = tmp_path / "offsite" / "backup-key"
    assert server_cli(["keygen-backup-key", "--out", str(identity)]) == 0
    public = identity.with_name("backup-key.pub")
    assert identity.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in identity.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert server_cli(["keygen-backup-key", "--out", str(identity)]) == 1  # never overwritten
    out = tmp_path / "nightly.backup"
    assert server_cli(["backup", "--out", str(out), "--recipient", str(public)]) == 0
    before = _dump(sqlite_server)
    for path in sqlite_server.parent.glob(sqlite_server.name + "*"):
        if not path.name.endswith(".key"):
            path.unlink()
    capsys.readouterr()
    assert server_cli(["restore", str(out), "--identity", str(identity)]) == 0
    assert "audit log: the chain is intact" in capsys.readouterr().out
    assert _dump(sqlite_server) == before


def _dump(database: Path) -> list[str]:
    connection = sqlite3.connect(database)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def test_a_recipient_backup_opens_only_with_its_identity(
    sqlite_server: Path, tmp_path: Path
) -> None:
    backups.keygen_identity(tmp_path / "right")
    backups.keygen_identity(tmp_path / "wrong")
    out = tmp_path / "sealed.backup"
    backups.backup(out, backups.load_recipient(tmp_path / "right.pub"))
    with (
        pytest.raises(backups.BackupError, match="wrong key"),
        backups.opened(out, backups.load_identity(tmp_path / "wrong")),
    ):
        pass
    with pytest.raises(backups.BackupError, match="sealed to a recipient key, not a passphrase"):
        backups.restore(out, PASSPHRASE)
    with pytest.raises(backups.BackupError, match="right.pub is not a PEM key"):
        backups.load_identity(tmp_path / "right.pub")
    with backups.opened(out, backups.load_identity(tmp_path / "right")) as (_content, manifest):
        assert manifest["database"]["kind"] == "sqlite"


def test_a_passphrase_backup_is_not_opened_with_a_key(sqlite_backup: Path, tmp_path: Path) -> None:
    backups.keygen_identity(tmp_path / "key")
    with pytest.raises(backups.BackupError, match="sealed with a passphrase, not a key"):
        backups.restore(sqlite_backup, backups.load_identity(tmp_path / "key"))


def test_a_wrong_passphrase_is_refused(sqlite_backup: Path) -> None:
    with (
        pytest.raises(backups.BackupError, match="wrong passphrase"),
        backups.opened(sqlite_backup, "not the passphrase at all"),
    ):
        pass


@pytest.mark.parametrize("where", [0.5, 0.99])
def test_a_changed_byte_is_refused(sqlite_backup: Path, where: float) -> None:
    data = bytearray(sqlite_backup.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    sqlite_backup.write_bytes(bytes(data))
    with pytest.raises(backups.BackupError), backups.opened(sqlite_backup, PASSPHRASE):
        pass


def test_a_truncated_backup_is_refused(sqlite_backup: Path) -> None:
    data = sqlite_backup.read_bytes()
    sqlite_backup.write_bytes(data[: len(data) - 40])
    with pytest.raises(backups.BackupError), backups.opened(sqlite_backup, PASSPHRASE):
        pass


def test_a_member_that_differs_from_the_manifest_is_refused(
    sqlite_backup: Path, tmp_path: Path
) -> None:
    """Sealed correctly (so only the manifest check can catch it): a key file swapped."""
    with backups.opened(sqlite_backup, PASSPHRASE) as (content, manifest):
        assert set(manifest["files"]) >= {"database/onecard.sqlite3", "keys/field.key"}
        (content / "keys" / "field.key").write_text(
            base64.b64encode(secrets.token_bytes(32)).decode() + "\n"
        )
        plain = tmp_path / "tampered.tar.gz"
        with tarfile.open(plain, "w:gz") as archive:
            for path in sorted(content.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=str(path.relative_to(content)))
    with plain.open("rb") as source, sqlite_backup.open("wb") as target:
        backups.encrypt_stream(source, target, PASSPHRASE)
    with (
        pytest.raises(backups.BackupError, match="keys/field.key: its SHA-256 differs"),
        backups.opened(sqlite_backup, PASSPHRASE),
    ):
        pass


def test_restore_refuses_a_different_key_already_in_place(
    sqlite_backup: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "server" / "onecard.db.field.key"
    key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    with pytest.raises(backups.BackupError, match="holds a different ONECARD_FIELD_KEY"):
        backups.restore(sqlite_backup, PASSPHRASE)
