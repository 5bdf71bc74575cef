"""The kiosk's local journal: every step of a transaction is written here before it is acted on.

A SQLite file on the kiosk's own disk (stdlib sqlite3, WAL, synchronous=FULL). After a crash the
kiosk reads the open transactions back and settles each one (see kiosk.tap.Kiosk.recover).

Privacy: the journal holds no personal data. While a transaction is open it keeps the signed
request it must be able to resend (card GUID, challenge, signature); once the transaction is
settled that request is erased and only the outcome stays. A transaction the kiosk approved
offline also keeps a keyed hash of the card GUID (`card_key`, HMAC with a secret of this journal)
to count the card's offline allowance; it is erased once the transaction is synced and the
allowance window has passed (`Journal.forget_card_keys`).

Offline transactions (kiosk.offline): AUTHORIZING -> OFFLINE_APPROVED -> OFFLINE_DISPENSING ->
OFFLINE_DISPENSED | OFFLINE_NOT_DISPENSED -> SYNCING -> SYNCED. SYNCING means the transaction is
in a batch whose idempotency key is written here (`batch_key`) before the batch is posted, so a
restart resends the same batch with the same key and the server answers it once.

A DISPENSED transaction whose authorization the server no longer knows (it was restored
from a backup older than the tap) joins that queue as OFFLINE_DISPENSED: the item fell, so
the dispense is charged once through the sync, which is exactly-once per tap counter.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class TxnState(StrEnum):
    """States of one kiosk transaction. Terminal states end in a settled server record."""

    AUTHORIZING = "authorizing"  # request about to go to the server
    REFUSED = "refused"  # server said no; nothing reserved (terminal)
    AUTHORIZED = "authorized"  # units reserved at the server
    DISPENSING = "dispensing"  # DISPENSE about to go to the board
    DISPENSED = "dispensed"  # the drop sensor saw the item fall
    NOT_DISPENSED = "not_dispensed"  # the board reported no drop (empty, jam, fault, ...)
    CAPTURED = "captured"  # server charged the unit (terminal)
    VOIDED = "voided"  # server released the unit (terminal)
    # Offline: the server could not be reached and the kiosk approved within its signed caps.
    OFFLINE_APPROVED = "offline_approved"  # approved by the kiosk alone; nothing reserved
    OFFLINE_DISPENSING = "offline_dispensing"  # DISPENSE about to go to the board
    OFFLINE_DISPENSED = "offline_dispensed"  # the item fell: queued for the server
    OFFLINE_NOT_DISPENSED = "offline_not_dispensed"  # nothing fell: queued too (spends the tap)
    SYNCING = "syncing"  # in a batch, its idempotency key written, sent until answered
    SYNCED = "synced"  # the server applied it, exactly once (terminal)
    SYNC_REJECTED = "sync_rejected"  # the server refused the tap itself, alone (terminal)


TERMINAL = frozenset(
    {
        TxnState.REFUSED,
        TxnState.CAPTURED,
        TxnState.VOIDED,
        TxnState.SYNCED,
        TxnState.SYNC_REJECTED,
    }
)
OFFLINE_QUEUED = frozenset({TxnState.OFFLINE_DISPENSED, TxnState.OFFLINE_NOT_DISPENSED})

# Which state may follow which. Anything else is a programming error, caught at once.
TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.AUTHORIZING: frozenset(
        {TxnState.REFUSED, TxnState.AUTHORIZED, TxnState.VOIDED, TxnState.OFFLINE_APPROVED}
    ),
    TxnState.AUTHORIZED: frozenset({TxnState.DISPENSING, TxnState.VOIDED}),
    TxnState.DISPENSING: frozenset({TxnState.DISPENSED, TxnState.NOT_DISPENSED}),
    # The server lost the authorization (restored from an older backup): the dispense
    # that happened is queued for the offline sync instead (Kiosk._server_lost_authorization).
    TxnState.DISPENSED: frozenset({TxnState.CAPTURED, TxnState.OFFLINE_DISPENSED}),
    TxnState.NOT_DISPENSED: frozenset({TxnState.VOIDED}),
    # A crash between approval and DISPENSE: the board never got it, nothing fell.
    TxnState.OFFLINE_APPROVED: frozenset(
        {TxnState.OFFLINE_DISPENSING, TxnState.OFFLINE_NOT_DISPENSED}
    ),
    TxnState.OFFLINE_DISPENSING: frozenset(
        {TxnState.OFFLINE_DISPENSED, TxnState.OFFLINE_NOT_DISPENSED}
    ),
    TxnState.OFFLINE_DISPENSED: frozenset({TxnState.SYNCING}),
    TxnState.OFFLINE_NOT_DISPENSED: frozenset({TxnState.SYNCING}),
    TxnState.SYNCING: frozenset({TxnState.SYNCED, TxnState.SYNC_REJECTED}),
    TxnState.REFUSED: frozenset(),
    TxnState.CAPTURED: frozenset(),
    TxnState.VOIDED: frozenset(),
    TxnState.SYNCED: frozenset(),
    TxnState.SYNC_REJECTED: frozenset(),
}


TXN_ID_MAX = 0xFFFFFFFF  # a transaction id is also the board's u32 txn_id


class JournalError(Exception):
    """A transition the state machine does not allow, or a transaction that does not exist."""


@dataclass(frozen=True)
class Txn:
    id: int  # also the board's transaction id (u32)
    state: TxnState
    slot: int
    idempotency_key: str
    authorization_id: str | None
    request: dict[str, Any] | None
    outcome: str | None
    created_ms: int
    updated_ms: int
    card_key: str | None = None  # offline only: keyed hash of the card GUID
    units: int | None = None  # offline only: category units the tap takes
    batch_key: str | None = None  # SYNCING: the idempotency key of its sync batch


_COLUMNS = (
    "id, state, slot, idempotency_key, authorization_id, request, outcome, created_ms, "
    "updated_ms, card_key, units, batch_key"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txn (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    slot INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    authorization_id TEXT,
    request TEXT,
    outcome TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS step (
    txn_id INTEGER NOT NULL REFERENCES txn(id),
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS counter (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secret (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
# Columns added after the first journals were written: (name, declaration).
_ADDED_COLUMNS = (("card_key", "TEXT"), ("units", "INTEGER"), ("batch_key", "TEXT"))


class Journal:
    """The journal file. Thread-safe; every write is committed before the method returns."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock  # the kiosk's clock: times written here and the offline window
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Erased proofs and card hashes are overwritten, not left in free pages.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        self._add_columns()
        self._seed_txn_ids()

    def _add_columns(self) -> None:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(txn)")}
        with self._write() as db:
            for name, declaration in _ADDED_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE txn ADD COLUMN {name} {declaration}")
            db.execute(
                "CREATE INDEX IF NOT EXISTS ix_txn_card_key ON txn(card_key) "
                "WHERE card_key IS NOT NULL"
            )

    def _seed_txn_ids(self) -> None:
        # A transaction id is also the board's dispense id, and a board answers a repeated id
        # with its first outcome without driving the motor. A journal that was wiped and begun
        # again must therefore not reuse ids the board may remember: start each new journal at
        # a random point of the u32 range.
        with self._write() as db:
            if db.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'txn'").fetchone() is None:
                start = secrets.randbelow(2**31)
                db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('txn', ?)", (start,))

    def continue_txn_ids_above(self, board_last: int) -> int:
        """Make every new transaction id greater than ``board_last``, the highest id the
        board has recorded (PROTOCOL.md 6.2; ``BoardDriver.last_txn_id()``), so a journal that
        was lost or reset never reuses an id the board remembers. Call it at start-up, before
        the first tap. Returns the next id."""
        with self._write() as db:
            (seq,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'txn'").fetchone()
            seq = max(int(seq), board_last)
            if seq >= TXN_ID_MAX:
                raise JournalError(f"transaction ids exhausted (next would be {seq + 1})")
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'txn'", (seq,))
        return seq + 1

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def next_counter(self, name: str = "tap") -> int:
        """A counter that only grows, across restarts (the kiosk's tap counter)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO counter(name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (name,),
            )
            (value,) = db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()
        return int(value)

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file and truncate it, so erased proofs do not
        linger in old page images in the WAL."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random secret kept in this journal, made on first use (the card-key HMAC key)."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO secret(name, value) VALUES (?, ?)",
                (name, secrets.token_bytes(size)),
            )
            (value,) = db.execute("SELECT value FROM secret WHERE name = ?", (name,)).fetchone()
        return bytes(value)

    def begin(self, slot: int, idempotency_key: str, request: dict[str, Any]) -> Txn:
        """Record a new transaction in state AUTHORIZING, before the server is asked."""
        now = self._now_ms()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO txn(state, slot, idempotency_key, request, created_ms, updated_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (TxnState.AUTHORIZING, slot, idempotency_key, json.dumps(request), now, now),
            )
            txn_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO step(txn_id, at_ms, state) VALUES (?, ?, ?)",
                (txn_id, now, TxnState.AUTHORIZING),
            )
        return self.get(txn_id)

    def advance(
        self,
        txn_id: int,
        state: TxnState,
        *,
        authorization_id: str | None = None,
        outcome: str | None = None,
        detail: str | None = None,
        card_key: str | None = None,
        units: int | None = None,
    ) -> Txn:
        """Move a transaction to its next state; refuses transitions the machine does not have."""
        with self._write() as db:
            self._advance_in(
                db,
                txn_id,
                state,
                authorization_id=authorization_id,
                outcome=outcome,
                detail=detail,
                card_key=card_key,
                units=units,
            )
        return self.get(txn_id)

    def _advance_in(
        self, db: sqlite3.Connection, txn_id: int, state: TxnState, **values: Any
    ) -> None:
        now = self._now_ms()
        detail = values.pop("detail", None)
        row = db.execute("SELECT state FROM txn WHERE id = ?", (txn_id,)).fetchone()
        if row is None:
            raise JournalError(f"no transaction {txn_id} in the journal")
        current = TxnState(row[0])
        if state not in TRANSITIONS[current]:
            raise JournalError(f"transaction {txn_id}: {current} cannot become {state}")
        sets = ["state = ?", "updated_ms = ?"]
        args: list[Any] = [state, now]
        for column, value in values.items():
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if state in TERMINAL:
            sets.append("request = NULL")  # nothing about the card stays once settled
            sets.append("batch_key = NULL")
        db.execute(f"UPDATE txn SET {', '.join(sets)} WHERE id = ?", (*args, txn_id))
        db.execute(
            "INSERT INTO step(txn_id, at_ms, state, detail) VALUES (?, ?, ?, ?)",
            (txn_id, now, state, detail),
        )

    # ----------------------------------------------------------------- offline transactions

    def offline_units_since(self, card_key: str, since_ms: int) -> int:
        """Units this card took offline here since `since_ms`: approved, dispensing, dispensed,
        or synced as dispensed; a tap where nothing fell does not count."""
        counted = (
            TxnState.OFFLINE_APPROVED,
            TxnState.OFFLINE_DISPENSING,
            TxnState.OFFLINE_DISPENSED,
            TxnState.SYNCING,
            TxnState.SYNCED,
            TxnState.SYNC_REJECTED,
        )
        with self._lock:
            (units,) = self._db.execute(
                "SELECT COALESCE(SUM(units), 0) FROM txn WHERE card_key = ? AND created_ms >= ? "
                f"AND state IN ({','.join('?' for _ in counted)}) "
                "AND (outcome IS NULL OR outcome = 'ok')",
                (card_key, since_ms, *counted),
            ).fetchone()
        return int(units)

    def start_batch(self, txn_ids: list[int], batch_key: str) -> None:
        """Put queued offline transactions in one batch (SYNCING) under `batch_key`, written
        before the batch is posted."""
        with self._write() as db:
            for txn_id in txn_ids:
                self._advance_in(db, txn_id, TxnState.SYNCING, batch_key=batch_key)

    def rebatch(self, txn_ids: list[int], batch_key: str) -> None:
        """Give SYNCING transactions a new batch key (a batch the server refused as a whole is
        split; nothing of a refused batch was applied)."""
        with self._write() as db:
            for txn_id in txn_ids:
                db.execute(
                    "UPDATE txn SET batch_key = ?, updated_ms = ? WHERE id = ? AND state = ?",
                    (batch_key, self._now_ms(), txn_id, TxnState.SYNCING),
                )

    def in_state(self, *states: TxnState, limit: int | None = None) -> list[Txn]:
        """Transactions in any of `states`, oldest first."""
        query = (
            f"SELECT {_COLUMNS} FROM txn WHERE state IN ({','.join('?' for _ in states)}) "
            "ORDER BY id"
        )
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(query, tuple(states)).fetchall()
        return [_txn(r) for r in rows]

    def forget_card_keys(self, before_ms: int) -> int:
        """Erase the card hash of settled transactions older than `before_ms` (the end of the
        offline allowance window). Returns how many were erased."""
        placeholders = ",".join("?" for _ in TERMINAL)
        with self._write() as db:
            cur = db.execute(
                "UPDATE txn SET card_key = NULL WHERE card_key IS NOT NULL AND created_ms < ? "
                f"AND state IN ({placeholders})",
                (before_ms, *TERMINAL),
            )
        return int(cur.rowcount)

    def get(self, txn_id: int) -> Txn:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM txn WHERE id = ?", (txn_id,)).fetchone()
        if row is None:
            raise JournalError(f"no transaction {txn_id} in the journal")
        return _txn(row)

    def open_transactions(self) -> list[Txn]:
        """Transactions not yet settled, oldest first: what recovery must finish."""
        placeholders = ",".join("?" for _ in TERMINAL)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM txn WHERE state NOT IN ({placeholders}) ORDER BY id",
                tuple(TERMINAL),
            ).fetchall()
        return [_txn(r) for r in rows]

    def steps(self, txn_id: int) -> list[tuple[int, TxnState, str | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at_ms, state, detail FROM step WHERE txn_id = ? ORDER BY rowid", (txn_id,)
            ).fetchall()
        return [(int(a), TxnState(s), d) for a, s, d in rows]


def _txn(row: tuple[Any, ...]) -> Txn:
    return Txn(
        id=int(row[0]),
        state=TxnState(row[1]),
        slot=int(row[2]),
        idempotency_key=row[3],
        authorization_id=row[4],
        request=json.loads(row[5]) if row[5] else None,
        outcome=row[6],
        created_ms=int(row[7]),
        updated_ms=int(row[8]),
        card_key=row[9],
        units=None if row[10] is None else int(row[10]),
        batch_key=row[11],
    )
