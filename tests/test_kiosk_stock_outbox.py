"""The kiosk's outbox of stock events (kiosk/stock_outbox.py): a refill or test dispense is kept
before it is sent, sent with its own idempotency key until the server has it, and never lost to
a server that cannot be reached; then through the real server over HTTP: the server down while a
refill is recorded, back again, and the event recorded there exactly once."""

from __future__ import annotations

import base64
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select

from kiosk.client import ServerClient
from kiosk.errors import ServerProblemError, ServerUnavailableError
from kiosk.stock_outbox import PENDING, REJECTED, SENT, StockOutbox
from kiosk.telemetry import Chore, Chores
from server.store.models import StockEvent
from tests.fixtures.database import ServerWorld
from tests.fixtures.serving import serve_app
from tests.fixtures.staff_card import StaffCard


class FlakyServer:
    """Answers as told: `down` raises ServerUnavailableError; `refuse` a problem with that
    status; otherwise records each (key, event) and answers with an event id per key."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: int | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ids: dict[str, int] = {}

    def stock_event(self, event: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        self.calls.append((idempotency_key, event))
        if self.down:
            raise ServerUnavailableError("nothing answered")
        if self.refuse is not None:
            raise ServerProblemError(self.refuse, "proof_stale", "too old", {})
        event_id = self.ids.setdefault(idempotency_key, len(self.ids) + 1)
        return {"status": "recorded", "event_id": event_id, "stock": event["count_after"]}


def refill(slot: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "refill",
        "slot": slot,
        "count_before": 3,
        "count_after": 50,
        "at_ms": 1_700_000_000_000,
        "staff_proof": {"guid": "00" * 16, "signature": "c2ln"},
        "staff_certificate": "Y2VydA==",
        **fields,
    }


def test_kept_before_it_is_sent_and_sent_in_order_with_its_own_key(tmp_path: Path) -> None:
    server = FlakyServer()
    server.down = True
    path = tmp_path / "journal.sqlite3"
    with StockOutbox(path, server) as outbox:
        assert outbox.record(refill(1)) == (PENDING, None)
        assert outbox.record(refill(2)) == (PENDING, None)
        # Down: the oldest is tried, the next one waits behind it (no pointless timeout each).
        assert [event["slot"] for _key, event in server.calls] == [1, 1]
    # Kept across a restart of the kiosk, in the journal's file.
    with StockOutbox(path, server) as outbox:
        waiting = outbox.in_state(PENDING)
        assert [(w.event["slot"], w.attempts) for w in waiting] == [(1, 2), (2, 0)]
        first_key = waiting[0].idempotency_key
        server.down = False
        assert outbox.send_pending() == 2
        assert outbox.send_pending() == 0  # nothing left: nothing sent again
        sent = outbox.in_state(SENT)
        assert [(s.event["slot"], s.server_event_id) for s in sent] == [(1, 1), (2, 2)]
        # Every try of an event carried the same key; the staff card's proof is erased once sent.
        assert {key for key, event in server.calls if event["slot"] == 1} == {first_key}
        assert all(
            "staff_proof" not in s.event and "staff_certificate" not in s.event for s in sent
        )
        assert sent[0].event["count_after"] == 50
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM stock_outbox").fetchone() == (2,)


def test_a_refused_event_is_kept_apart_and_does_not_block_the_others(tmp_path: Path) -> None:
    server = FlakyServer()
    with StockOutbox(tmp_path / "journal.sqlite3", server) as outbox:
        server.refuse = 422
        assert outbox.record(refill(1)) == (REJECTED, "proof_stale")
        server.refuse = 503  # the server's own failure: tried again later
        assert outbox.record(refill(2)) == (PENDING, None)
        server.refuse = None
        assert outbox.send_pending() == 1
        assert [r.event["slot"] for r in outbox.in_state(REJECTED)] == [1]
        assert [r.event["slot"] for r in outbox.in_state(SENT)] == [2]
        assert "staff_proof" in outbox.in_state(REJECTED)[0].event  # kept as it was


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_server_down_then_back_the_refill_arrives_exactly_once(
    server_world: ServerWorld, tmp_path: Path
) -> None:
    w = server_world
    w.clock.follow_real_time()  # the kiosk's client signs with the real clock
    staff = StaffCard(w.ca)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        ServerClient(url, w.kiosk.id, w.kiosk.key, timeout=2.0, retries=0) as client,
        StockOutbox(tmp_path / "kiosk" / "journal.sqlite3", client) as outbox,
    ):
        tapped_ms = int(w.clock() * 1000)
        event = refill(
            1,
            sku=w.seed.product_sku,
            at_ms=tapped_ms + 1000,
            staff_proof=staff.prove(w.kiosk.id, 1, tapped_ms),
            staff_certificate=base64.b64encode(staff.certificate_der).decode(),
        )
        # The server is down while the technician refills: kept, and said to wait.
        assert outbox.record(event) == (PENDING, None)
        [waiting] = outbox.in_state(PENDING)
        assert waiting.attempts == 1 and "did not answer" in (waiting.last_error or "")
        with serve_app(w.app, port=port):
            # The kiosk's chores send it once the server is back.
            sent = threading.Event()

            def send() -> None:
                outbox.send_pending()
                if outbox.in_state(SENT):
                    sent.set()

            with Chores([Chore("stock-events", 0.2, send)]):
                assert sent.wait(60), outbox.in_state(PENDING)
            [done] = outbox.in_state(SENT)
            assert done.idempotency_key == waiting.idempotency_key
            # The kiosk did not hear the answer and sends the same event again, twice: the
            # server answers from its first recording.
            again = [client.stock_event(waiting.event, waiting.idempotency_key) for _ in range(2)]
            assert {a["event_id"] for a in again} == {done.server_event_id}
    with w.sessionmaker() as session:
        rows = session.scalars(select(StockEvent)).all()
    assert [(r.kind, r.slot, r.count_after, r.staff_card_guid) for r in rows] == [
        ("refill", 1, 50, staff.guid.hex())
    ]
