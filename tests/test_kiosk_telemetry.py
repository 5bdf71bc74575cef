"""The kiosk's heartbeat and its background chores, as a unit (fakes of the board and server;
tests/test_kiosk_telemetry_integration.py sends it to the real server from the real kiosk)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from kiosk.board import BoardStatus, BoardTimeoutError
from kiosk.journal import Journal
from kiosk.telemetry import Chore, Chores, Heartbeat, collect
from tests.test_kiosk_offline import config_of, signed_config


class FakeBoard:
    def __init__(self, faults: frozenset[str] = frozenset(), fail: bool = False) -> None:
        self.faults = faults
        self.fail = fail

    def stock(self) -> dict[int, int]:
        if self.fail:
            raise BoardTimeoutError("STOCK")
        return {1: 7, 2: 3}

    def status(self) -> BoardStatus:
        return BoardStatus(False, 6.5, self.faults, None, 3, 100)

    def counters(self) -> dict[str, int]:
        return {"crc_errors": 2, "retries": 5, "resyncs": 1, "frames_in": 40}


class FakeServer:
    def __init__(self, version: str = "1") -> None:
        self.sent: list[tuple[dict[str, Any], str]] = []
        self.version = version

    def telemetry(self, heartbeat: dict[str, Any], key: str) -> dict[str, Any]:
        self.sent.append((heartbeat, key))
        return {"status": "ok", "revocation_version": self.version}


def kinds(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["kind"]: e["detail"] for e in doc["events"]}


def test_a_heartbeat_carries_stock_counters_and_faults() -> None:
    doc = collect(FakeBoard(frozenset({"jam"})), known_slots=frozenset({1}))
    assert doc["stock"] == {"1": 7}  # the server knows slot 1 only
    events = kinds(doc)
    assert events["board"]["counters"] == {
        "crc_errors": 2,
        "retries": 5,
        "resyncs": 1,
        "frames_in": 40,
    }
    assert events["board"]["stock_of_unconfigured_slots"] == {"2": 3}
    assert events["board"]["temperature_c"] == 6.5
    assert events["fault"] == {"board": ["jam"]}
    assert events["door"] == {"open": False}  # first heartbeat: the door as it is


def test_the_door_is_an_event_only_when_it_changed() -> None:
    assert "door" not in kinds(collect(FakeBoard(), door_was_open=False))
    assert kinds(collect(FakeBoard(), door_was_open=True))["door"] == {"open": False}
    assert "fault" not in kinds(collect(FakeBoard()))


def test_a_board_that_does_not_answer_is_a_fault_not_a_lost_heartbeat() -> None:
    doc = collect(FakeBoard(fail=True), known_slots=frozenset({1}))
    assert doc["stock"] == {}
    events = kinds(doc)
    assert "STOCK" in events["fault"]["board_unreachable"]
    assert events["board"]["counters"]["retries"] == 5  # read without the board's lock


def heartbeat(
    tmp_path: Path, server: FakeServer, busy: bool = False, config: bool = True
) -> Heartbeat:
    signed = config_of(signed_config()) if config else None
    return Heartbeat(
        server,
        FakeBoard(),
        Journal(tmp_path / "j.sqlite3"),
        config=lambda: signed,
        last_contact=lambda: 123.0,
        busy=lambda: busy,
    )


def test_send_posts_the_kiosk_state_with_a_fresh_key_each_time(tmp_path: Path) -> None:
    server = FakeServer()
    beat = heartbeat(tmp_path, server)
    beat.send()
    beat.send()
    (first, key1), (second, key2) = server.sent
    assert key1 != key2
    assert "door" in kinds(first) and "door" not in kinds(second)
    state = kinds(first)["board"]["kiosk"]
    assert state["offline_queued"] == 0 and state["revocation_version"] == "1"
    assert state["last_contact"] == 123.0


def test_without_a_config_no_slot_is_named_in_the_stock(tmp_path: Path) -> None:
    server = FakeServer()
    heartbeat(tmp_path, server, config=False).send()
    doc, _ = server.sent[0]
    assert doc["stock"] == {}
    assert kinds(doc)["board"]["stock_of_unconfigured_slots"] == {"1": 7, "2": 3}


def test_a_heartbeat_keeps_off_the_board_while_a_card_is_served(tmp_path: Path) -> None:
    server = FakeServer()
    assert heartbeat(tmp_path, server, busy=True).send() is None
    assert server.sent == []


@pytest.mark.parametrize(("server_version", "refreshed"), [("1", []), ("2", ["2"])])
def test_a_new_revocation_version_asks_for_the_config_at_once(
    tmp_path: Path, server_version: str, refreshed: list[str]
) -> None:
    seen: list[str] = []
    beat = heartbeat(tmp_path, FakeServer(server_version))
    beat.on_revocation_version = seen.append
    beat.send()
    assert seen == refreshed


def test_chores_run_at_start_survive_failures_and_stop_on_exit() -> None:
    ran = threading.Event()
    failed = threading.Event()

    def failing() -> None:
        failed.set()
        raise RuntimeError("server gone")

    with Chores([Chore("fails", 3600, failing), Chore("works", 3600, ran.set)]) as chores:
        assert failed.wait(10) and ran.wait(10)
    assert chores.failures["fails"] == 1
    assert chores.runs["works"] == 1
    assert not chores._thread.is_alive()


def test_soon_runs_a_chore_before_its_period() -> None:
    runs: list[int] = []
    twice = threading.Event()

    def work() -> None:
        runs.append(1)
        if len(runs) == 2:
            twice.set()

    with Chores([Chore("config", 3600, work)]) as chores:
        while not runs:
            threading.Event().wait(0.01)
        chores.soon("config")
        assert twice.wait(10)
