"""Fleet state and alerts end to end, on SQLite and PostgreSQL: a kiosk's heartbeats (the
kiosk's own `kiosk.telemetry.collect` over a board, signed and posted to the server's API)
become the fleet's state; `alerts.run_once` opens alerts and tells the responsible technician
by e-mail through a real SMTP server (aiosmtpd) and by an HMAC-signed POST to a real HTTP
receiver, once per alert until it clears; acknowledge, resolve, history and scope; telemetry
retention."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from kiosk.board import BoardStatus
from kiosk.board.factory import open_board
from kiosk.telemetry import collect
from server import services
from server.cli import main
from server.errors import NotFound
from server.services import alerts, fleet
from server.services.notify import Notifier, NotifySettings, verify_signature
from server.store.models import AlertDelivery, KioskEvent, StaffUser
from tests.fixtures.database import ServerWorld

SECRET = "gateway-shared-secret"


class Board:
    """A board as the kiosk's driver sees it: stock per slot and a status."""

    def __init__(self) -> None:
        self.slots = {1: 10}
        self.door_open = False
        self.temperature_c = 20.0
        self.faults: frozenset[str] = frozenset()

    def stock(self) -> dict[int, int]:
        return dict(self.slots)

    def status(self) -> BoardStatus:
        return BoardStatus(self.door_open, self.temperature_c, self.faults, None, 1, 100)


@dataclass
class Mailbox:
    messages: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            (envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default))
        )
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    with socket.socket() as probe:  # aiosmtpd checks its port by connecting: it needs a number
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@dataclass
class Gateway:
    """The city's SMS gateway as a real HTTP server: checks each signature, keeps each body."""

    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    fail_next: int = 0

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        if not verify_signature(
            SECRET,
            request.headers.get("X-OneCard-Timestamp", ""),
            body,
            request.headers.get("X-OneCard-Signature", ""),
            now=dt.datetime.now(dt.UTC).timestamp(),
        ):
            self.refused += 1
            return Response("bad signature", status=401)(environ, start_response)
        if self.fail_next:
            self.fail_next -= 1
            return Response("busy", status=503)(environ, start_response)
        self.received.append(json.loads(body))
        return Response("{}", status=202)(environ, start_response)


@pytest.fixture
def gateway() -> Iterator[tuple[Gateway, str]]:
    receiver = Gateway()
    httpd = make_server("127.0.0.1", 0, receiver, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{httpd.server_port}/sms"
    finally:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()


def heartbeat(w: ServerWorld, board: Board, door_was_open: bool | None = None) -> None:
    document = collect(board, known_slots=frozenset({1}), door_was_open=door_was_open)
    response = w.post("/api/v1/telemetry", document)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_an_empty_jammed_kiosk_reaches_its_technician_once_by_mail_and_sms(
    server_world: ServerWorld, smtp: tuple[Mailbox, int], gateway: tuple[Gateway, str]
) -> None:
    w = server_world
    mailbox, port = smtp
    receiver, url = gateway
    notifier = Notifier(
        NotifySettings(
            smtp_host="127.0.0.1", smtp_port=port, webhook_url=url, webhook_secret=SECRET
        )
    )
    with w.sessionmaker() as session:
        fleet.set_slot_levels(session, w.kiosk.id, 1, minimum=3, capacity=20)
        fleet.set_location(session, w.kiosk.id, 31.23, 121.47)
        alerts.set_contact(session, "tech", email="tech@city.example", phone="+8613800000001")
        alerts.assign(session, w.kiosk.id, "tech")
        session.commit()

    board = Board()
    heartbeat(w, board)
    with w.sessionmaker() as session:
        assert alerts.run_once(session, w.ctx, notifier).opened == 0
        (row,) = fleet.fleet(session, w.ctx, alerts.rules(session))
        assert row.connection.value == "online" and row.state.temperature_c == 20.0
        assert row.slots[0].stock == 10 and row.latitude == 31.23

    board.slots = {1: 0}
    board.faults = frozenset({"jam"})
    board.door_open = True
    heartbeat(w, board, door_was_open=False)
    with w.sessionmaker() as session:
        summary = alerts.run_once(session, w.ctx, notifier)
        assert (summary.opened, summary.sent, summary.failed) == (2, 4, 0)
        (row,) = fleet.fleet(session, w.ctx, alerts.rules(session))
        assert row.state.door_open is True and row.state.faults == ("jam",)
        restock = fleet.restock_list([row])
        assert [(r.kiosk_id, r.slot, r.to_bring) for r in restock] == [(w.kiosk.id, 1, 20)]
    subjects = sorted(m["Subject"] for _, m in mailbox.messages)
    assert subjects == [
        f"[OneCard] fault at kiosk {w.kiosk.id} (Demo City, Demo City)",
        f"[OneCard] stock_empty at kiosk {w.kiosk.id} (Demo City, Demo City)",
    ]
    assert all(to == ["tech@city.example"] for to, _ in mailbox.messages)
    assert sorted(p["kind"] for p in receiver.received) == ["fault", "stock_empty"]
    assert receiver.refused == 0
    assert all(
        p["recipient"] == {"staff": "tech", "phone": "+8613800000001"} for p in receiver.received
    )
    # Figures only: nothing about a resident or a card.
    sent = json.dumps(receiver.received) + "".join(m.get_content() for _, m in mailbox.messages)
    assert w.card.guid.hex() not in sent and "Resident" not in sent
    assert set(receiver.received[0]) == {
        "alert_id", "kiosk_id", "place", "kind", "subject", "detail", "opened_at", "text", "recipient",
    }  # fmt: skip

    # Still empty a minute later: no second message.
    w.clock.advance(60)
    heartbeat(w, board, door_was_open=True)
    with w.sessionmaker() as session:
        again = alerts.run_once(session, w.ctx, notifier)
        assert (again.opened, again.sent) == (0, 0)
    # The door has now been open five minutes: that is news.
    w.clock.advance(240)
    heartbeat(w, board, door_was_open=True)
    with w.sessionmaker() as session:
        door = alerts.run_once(session, w.ctx, notifier)
        assert (door.opened, door.sent) == (1, 2)

    # Refilled and fixed: everything clears; a fault back within its quiet period stays quiet.
    board.slots, board.faults, board.door_open = {1: 20}, frozenset(), False
    w.clock.advance(60)
    heartbeat(w, board, door_was_open=True)
    with w.sessionmaker() as session:
        assert alerts.run_once(session, w.ctx, notifier).cleared == 3
    board.faults = frozenset({"jam"})
    w.clock.advance(60)
    heartbeat(w, board, door_was_open=False)
    with w.sessionmaker() as session:
        assert alerts.run_once(session, w.ctx, notifier).opened == 0
        history = alerts.history(session, None)
        assert [h["kind"] for h in history].count("fault") == 1
        assert all(h["cleared_at"] is not None for h in history)
        assert all(d["status"] == "sent" for h in history for d in h["deliveries"])

    # Silent for eleven minutes: offline.
    w.clock.advance(11 * 60)
    with w.sessionmaker() as session:
        offline = alerts.run_once(session, w.ctx, notifier)
        assert offline.opened == 1
        (row,) = fleet.fleet(session, w.ctx, alerts.rules(session))
        assert row.connection.value == "offline"
    assert receiver.received[-1]["kind"] == "offline"
    assert len(mailbox.messages) == 4


def test_acknowledge_resolve_scope_and_a_failed_delivery_retried(
    server_world: ServerWorld, gateway: tuple[Gateway, str]
) -> None:
    w = server_world
    receiver, url = gateway
    notifier = Notifier(NotifySettings(webhook_url=url, webhook_secret=SECRET))
    with w.sessionmaker() as session:
        alerts.set_contact(session, "tech", email=None, phone="+8613800000001")
        alerts.assign(session, w.kiosk.id, "tech")
        services.create_user(session, w.ctx, "hill", "technician", region_code="C01-T02")
        session.commit()
    board = Board()
    board.faults = frozenset({"motor_1"})
    heartbeat(w, board)
    receiver.fail_next = 1
    with w.sessionmaker() as session:
        first = alerts.run_once(session, w.ctx, notifier)
        assert (first.opened, first.sent, first.failed) == (1, 0, 1)
        delivery = session.scalar(select(AlertDelivery))
        assert delivery is not None and delivery.status == "pending" and delivery.attempts == 1
        retried = alerts.run_once(session, w.ctx, notifier)
        assert (retried.opened, retried.sent) == (0, 1)
        assert len(receiver.received) == 1

        tech = session.scalar(select(StaffUser).where(StaffUser.name == "tech"))
        hill = session.scalar(select(StaffUser).where(StaffUser.name == "hill"))
        assert tech is not None and hill is not None
        (alert,) = alerts.history(session, tech, open_only=True)
        assert alerts.history(session, hill) == []  # the city-level kiosk is not in Hill Town
        with pytest.raises(NotFound):
            alerts.acknowledge(session, w.ctx, hill, alert["id"])
        alerts.acknowledge(session, w.ctx, tech, alert["id"])
        alerts.resolve(session, w.ctx, tech, alert["id"])
        session.commit()
        (closed,) = alerts.history(session, tech)
        assert closed["resolved"] and closed["acknowledged_at"] is not None
        assert fleet.fleet(session, w.ctx, alerts.rules(session), user=hill) == []


def test_old_telemetry_is_pruned_and_the_latest_state_kept(server_world: ServerWorld) -> None:
    w = server_world
    board = Board()
    heartbeat(w, board)
    w.clock.advance(3 * 24 * 3600)
    board.temperature_c = 24.0
    heartbeat(w, board)
    with w.sessionmaker() as session:
        before = session.scalar(select(func.count()).select_from(KioskEvent))
        pruned = fleet.prune_kiosk_events(session, w.ctx.now())
        session.commit()
        after = session.scalar(select(func.count()).select_from(KioskEvent))
        assert pruned == 2 and after == before - 2  # the first heartbeat's two rows
        (row,) = fleet.fleet(session, w.ctx, alerts.rules(session))
        assert row.state.temperature_c == 24.0


def test_the_cli_sets_rules_contacts_places_and_runs_once(
    server_world: ServerWorld,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = server_world
    for name, value in w.environment(tmp_path / "ca.pem").items():
        monkeypatch.setenv(name, value)
    for name in ("ONECARD_SMTP_HOST", "ONECARD_ALERT_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    assert (
        main(["alerts", "rule", "--kind", "offline", "--threshold", "30", "--quiet-minutes", "5"])
        == 0
    )
    assert main(["alerts", "rule", "--kind", "no_dispense", "--enabled", "no"]) == 0
    assert main(["alerts", "contact", "--staff", "tech", "--email", "tech@city.example"]) == 0
    assert main(["alerts", "assign", "--kiosk", w.kiosk.id, "--staff", "tech"]) == 0
    assert main(["alerts", "locate", "--kiosk", w.kiosk.id, "--lat", "31.2", "--lon", "121.5"]) == 0
    assert (
        main(
            [
                "alerts",
                "levels",
                "--kiosk",
                w.kiosk.id,
                "--slot",
                "1",
                "--minimum",
                "3",
                "--capacity",
                "30",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["alerts", "rules"]) == 0
    rules = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert rules["offline"]["threshold"] == 30 and rules["offline"]["quiet_minutes"] == 5
    assert rules["no_dispense"]["enabled"] is False and rules["fault"]["enabled"] is True
    # Never seen: offline at once (no heartbeat at all); no channel configured, nothing sent.
    assert main(["alerts", "run-once"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["opened"], summary["sent"], summary["failed"]) == (1, 0, 0)
    with w.sessionmaker() as session:
        (row,) = fleet.fleet(session, w.ctx, alerts.rules(session))
        assert (row.latitude, row.longitude) == (31.2, 121.5)
        assert (row.slots[0].minimum, row.slots[0].capacity) == (3, 30)
        assert [h["kind"] for h in alerts.history(session, None)] == ["offline"]
    assert (
        main(
            [
                "alerts",
                "levels",
                "--kiosk",
                w.kiosk.id,
                "--slot",
                "1",
                "--minimum",
                "30",
                "--capacity",
                "30",
            ]
        )
        == 1
    )


def test_a_simulated_board_on_a_serial_line_raises_the_alerts(
    server_world: ServerWorld, board_sim_factory: Any
) -> None:
    """The board simulator on a pty, the kiosk's own driver and telemetry code, the server's
    API: an empty slot, an open door and a hot cabinet become alerts."""
    w = server_world
    sim = board_sim_factory(slots={1: 2})
    with open_board(sim.device) as board:
        heartbeat(w, board)  # type: ignore[arg-type]
        with w.sessionmaker() as session:
            assert alerts.evaluate_fleet(session, w.ctx)[0].opened == 0
            session.commit()
        for txn in (1, 2):  # the last two go out, as through taps
            assert board.dispense(1, txn).outcome.name == "OK"
        sim.command("door", open=True)
        sim.command("temperature", celsius=41.5)
        w.clock.advance(6 * 60)
        heartbeat(w, board, door_was_open=False)  # type: ignore[arg-type]
    with w.sessionmaker() as session:
        (row,) = fleet.fleet(session, w.ctx, alerts.rules(session))
        assert row.slots[0].stock == 0 and row.state.door_open and row.state.temperature_c == 41.5
        summary, _ = alerts.evaluate_fleet(session, w.ctx)
        session.commit()
        kinds = sorted(h["kind"] for h in alerts.history(session, None, open_only=True))
    # The board may also flag the heat as a fault of its own; the door has been open for less
    # than the rule's five minutes (the server first heard of it now).
    assert {"stock_empty", "temperature"} <= set(kinds) <= {"stock_empty", "temperature", "fault"}
    assert summary.opened == len(kinds)
