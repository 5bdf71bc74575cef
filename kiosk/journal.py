"""The kiosk's local journal: every step of a transaction is written here before it is acted on.

A SQLite file on the kiosk's own disk (stdlib sqlite3, WAL, synchronous=FULL). After a crash the
kiosk reads the open transactions back and settles each one (see kiosk.tap.Kiosk.recover).

Privacy: the journal holds no personal data. While a transaction is open it keeps the signed
request it must be able to resend (card GUID, challenge, signature); once the transaction is
settled that request is erased and only the outcome stays.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
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


TERMINAL = frozenset({TxnState.REFUSED, TxnState.CAPTURED, TxnState.VOIDED})

# Which state may follow which. Anything else is a programming error, caught at once.
TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.AUTHORIZING: frozenset({TxnState.REFUSED, TxnState.AUTHORIZED, TxnState.VOIDED}),
    TxnState.AUTHORIZED: frozenset({TxnState.DISPENSING, TxnState.VOIDED}),
    TxnState.DISPENSING: frozenset({TxnState.DISPENSED, TxnState.NOT_DISPENSED}),
    TxnState.DISPENSED: frozenset({TxnState.CAPTURED}),
    TxnState.NOT_DISPENSED: frozenset({TxnState.VOIDED}),
    TxnState.REFUSED: frozenset(),
    TxnState.CAPTURED: frozenset(),
    TxnState.VOIDED: frozenset(),
}


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
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Journal:
    """The journal file. Thread-safe; every write is committed before the method returns."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._seed_txn_ids()

    def _seed_txn_ids(self) -> None:
        # A transaction id is also the board's dispense id, and a board answers a repeated id
        # with its first outcome without driving the motor. A journal that was wiped and begun
        # again must therefore not reuse ids the board may remember: start each new journal at
        # a random point of the u32 range.
        with self._write() as db:
            if db.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'txn'").fetchone() is None:
                start = secrets.randbelow(2**31)
                db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('txn', ?)", (start,))

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

    def begin(self, slot: int, idempotency_key: str, request: dict[str, Any]) -> Txn:
        """Record a new transaction in state AUTHORIZING, before the server is asked."""
        now = _now_ms()
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
    ) -> Txn:
        """Move a transaction to its next state; refuses transitions the machine does not have."""
        now = _now_ms()
        with self._write() as db:
            row = db.execute("SELECT state FROM txn WHERE id = ?", (txn_id,)).fetchone()
            if row is None:
                raise JournalError(f"no transaction {txn_id} in the journal")
            current = TxnState(row[0])
            if state not in TRANSITIONS[current]:
                raise JournalError(f"transaction {txn_id}: {current} cannot become {state}")
            sets = ["state = ?", "updated_ms = ?"]
            args: list[Any] = [state, now]
            if authorization_id is not None:
                sets.append("authorization_id = ?")
                args.append(authorization_id)
            if outcome is not None:
                sets.append("outcome = ?")
                args.append(outcome)
            if state in TERMINAL:
                sets.append("request = NULL")  # nothing about the card stays once settled
            db.execute(f"UPDATE txn SET {', '.join(sets)} WHERE id = ?", (*args, txn_id))
            db.execute(
                "INSERT INTO step(txn_id, at_ms, state, detail) VALUES (?, ?, ?, ?)",
                (txn_id, now, state, detail),
            )
        return self.get(txn_id)

    def get(self, txn_id: int) -> Txn:
        with self._lock:
            row = self._db.execute(
                "SELECT id, state, slot, idempotency_key, authorization_id, request, outcome, "
                "created_ms, updated_ms FROM txn WHERE id = ?",
                (txn_id,),
            ).fetchone()
        if row is None:
            raise JournalError(f"no transaction {txn_id} in the journal")
        return _txn(row)

    def open_transactions(self) -> list[Txn]:
        """Transactions not yet settled, oldest first: what recovery must finish."""
        placeholders = ",".join("?" for _ in TERMINAL)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, state, slot, idempotency_key, authorization_id, request, outcome, "
                f"created_ms, updated_ms FROM txn WHERE state NOT IN ({placeholders}) ORDER BY id",
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
    )
