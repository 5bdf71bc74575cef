"""The kiosk's outbox of stock events: a technician's refills and test dispenses, kept until the
server has recorded them (POST /api/v1/stock-events), so none is lost to a server that cannot
be reached.

Each event is written to the table `stock_outbox` of the journal's SQLite file (its own table
and connection; WAL, synchronous=FULL) with an idempotency key of its own *before* it is sent.
Every send of that event, by the maintenance screen at once or by the kiosk's background chores
later (`send_pending`, a kiosk.telemetry Chore), uses that same key, so the server records it
once however often it is sent (the server's idempotency records outlive the bound it puts on a
queued event's age: server.services.stock).

States: `pending` (to send, oldest first) -> `sent` (the server recorded it; the staff card's
proof and certificate are then erased, the server's event id kept) or `rejected` (the server
refused the event itself, a 4xx other than 429: resending the same bytes would be refused again;
kept, with the server's problem code, for the technician and the logs).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kiosk.errors import ServerProblemError, ServerUnavailableError

log = logging.getLogger(__name__)

SEND_EVERY_S = 30.0  # the chore's period while events wait
PENDING = "pending"
SENT = "sent"
REJECTED = "rejected"
SECRET_FIELDS = ("staff_proof", "staff_certificate")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stock_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    event TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    server_event_id INTEGER,
    sent_ms INTEGER
);
CREATE INDEX IF NOT EXISTS ix_stock_outbox_state ON stock_outbox(state, id);
"""


class StockServer(Protocol):
    def stock_event(self, event: dict[str, Any], idempotency_key: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class OutboxEvent:
    id: int
    idempotency_key: str
    state: str
    event: dict[str, Any]
    attempts: int
    last_error: str | None
    server_event_id: int | None


def _retryable(exc: ServerProblemError) -> bool:
    """The server's own refusal that another try may change: overload or its own failure."""
    return exc.status == 429 or exc.status >= 500


class StockOutbox:
    """Thread-safe: the maintenance screen and the chores' thread send through one lock, so an
    event is never in flight twice from this kiosk at once (the key would make it harmless)."""

    def __init__(
        self, path: Path | str, server: StockServer, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.server = server
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the connection
        self._sending = threading.Lock()  # one sender at a time
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # erased proofs leave no free pages
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StockOutbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writing and reading

    def add(self, event: dict[str, Any]) -> OutboxEvent:
        """Keep `event` (committed before this returns) with a new idempotency key."""
        key = uuid.uuid4().hex
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO stock_outbox(idempotency_key, state, event, created_ms) "
                "VALUES (?, ?, ?, ?)",
                (key, PENDING, json.dumps(event, separators=(",", ":")), self._now_ms()),
            )
            row_id = int(cursor.lastrowid or 0)
        return self.get(row_id)

    def get(self, row_id: int) -> OutboxEvent:
        with self._lock:
            row = self._db.execute(
                "SELECT id, idempotency_key, state, event, attempts, last_error, server_event_id "
                "FROM stock_outbox WHERE id = ?",
                (row_id,),
            ).fetchone()
        if row is None:
            raise KeyError(row_id)
        return _event(row)

    def in_state(self, *states: str) -> list[OutboxEvent]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, idempotency_key, state, event, attempts, last_error, server_event_id "
                f"FROM stock_outbox WHERE state IN ({marks}) ORDER BY id",
                states,
            ).fetchall()
        return [_event(row) for row in rows]

    # ----------------------------------------------------------------- sending

    def record(self, event: dict[str, Any]) -> tuple[str, str | None]:
        """Keep the event, then send what waits (oldest first, this one last). Returns the
        event's state (SENT: the server recorded it now; PENDING: it waits for the server;
        REJECTED: the server refused it) and the server's problem code when refused."""
        row = self.add(event)
        self.send_pending(wait=False)  # a send already under way (the chores) carries it on
        now = self.get(row.id)
        return now.state, now.last_error if now.state == REJECTED else None

    def send_pending(self, *, wait: bool = True) -> int:
        """Send the waiting events in the order they were kept, until the server cannot be
        reached; returns how many the server recorded now. The kiosk's chores call this.
        `wait=False`: nothing is sent when another thread is sending already."""
        if not self._sending.acquire(blocking=wait):
            return 0
        sent = 0
        try:
            for row in self.in_state(PENDING):
                try:
                    answer = self.server.stock_event(row.event, row.idempotency_key)
                except ServerUnavailableError as exc:
                    self._attempted(row.id, PENDING, str(exc))
                    break  # the next ones would wait for the same server
                except ServerProblemError as exc:
                    if _retryable(exc):
                        self._attempted(row.id, PENDING, exc.code)
                        break
                    log.warning("stock event %s refused by the server: %s", row.id, exc)
                    self._attempted(row.id, REJECTED, exc.code)
                    continue
                self._sent(row, answer)
                sent += 1
        finally:
            self._sending.release()
        return sent

    def _attempted(self, row_id: int, state: str, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE stock_outbox SET state = ?, attempts = attempts + 1, last_error = ? "
                "WHERE id = ?",
                (state, error[:500], row_id),
            )

    def _sent(self, row: OutboxEvent, answer: dict[str, Any]) -> None:
        kept = {k: v for k, v in row.event.items() if k not in SECRET_FIELDS}
        event_id = answer.get("event_id")
        with self._lock:
            self._db.execute(
                "UPDATE stock_outbox SET state = ?, attempts = attempts + 1, last_error = NULL, "
                "event = ?, server_event_id = ?, sent_ms = ? WHERE id = ?",
                (
                    SENT,
                    json.dumps(kept, separators=(",", ":")),
                    event_id if isinstance(event_id, int) else None,
                    self._now_ms(),
                    row.id,
                ),
            )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _event(row: tuple[Any, ...]) -> OutboxEvent:
    return OutboxEvent(
        id=row[0],
        idempotency_key=row[1],
        state=row[2],
        event=json.loads(row[3]),
        attempts=row[4],
        last_error=row[5],
        server_event_id=row[6],
    )
