"""Kiosk crash recovery, as a unit: the journal says where a transaction stopped, the board is
the witness of whether the item fell, and the server is settled with the first idempotency key.

In-process fakes of the server and the board stand in here; the same paths run for real
through HTTP and a pty in tests/test_kiosk_integration.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiosk.board import DispenseOutcome, DispenseResult
from kiosk.client import Authorization
from kiosk.errors import ServerUnavailableError
from kiosk.journal import Journal, TxnState
from kiosk.tap import Kiosk


class FakeServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.down = False
        self.answers: dict[str, Any] = {}

    def _call(self, kind: str, ident: str, key: str, answer: Any) -> Any:
        if self.down:
            raise ServerUnavailableError("down")
        self.calls.append((kind, ident, key))
        return self.answers.setdefault(key, answer)  # same key, same answer

    def authorize(self, proof: dict[str, Any], slot: int, key: str) -> Authorization:
        return self._call(
            "authorize",
            str(slot),
            key,
            Authorization(True, "auth-" + key, None, None, {"condoms": 2}, None, None),
        )

    def capture(self, auth_id: str, board_txn: int, key: str) -> dict[str, Any]:
        return self._call("capture", auth_id, key, {"status": "captured"})

    def void(self, auth_id: str, reason: str, key: str) -> dict[str, Any]:
        return self._call("void", auth_id, key, {"status": "voided"})


class FakeBoard:
    def __init__(self, remembered: dict[int, DispenseOutcome]) -> None:
        self.remembered = remembered
        self.dispensed: list[int] = []

    def query(self, txn_id: int) -> DispenseResult | None:
        outcome = self.remembered.get(txn_id)
        return None if outcome is None else DispenseResult(txn_id, 1, outcome, 4)

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        self.dispensed.append(txn_id)
        return DispenseResult(txn_id, slot, DispenseOutcome.OK, 4)


def make_kiosk(tmp_path: Path, board: FakeBoard, server: FakeServer) -> tuple[Kiosk, Journal]:
    journal = Journal(tmp_path / "journal.sqlite3")
    kiosk = Kiosk(
        kiosk_id="K-1",
        journal=journal,
        server=server,  # type: ignore[arg-type]
        board=board,  # type: ignore[arg-type]
        ca_certificate_der=b"",
    )
    return kiosk, journal


def crashed_in(journal: Journal, state: TxnState, outcome: str | None = None) -> int:
    txn = journal.begin(1, "key-1", {"proof": {"card_guid": "00" * 16}, "slot": 1})
    path = {
        TxnState.AUTHORIZING: [],
        TxnState.AUTHORIZED: [TxnState.AUTHORIZED],
        TxnState.DISPENSING: [TxnState.AUTHORIZED, TxnState.DISPENSING],
        TxnState.DISPENSED: [TxnState.AUTHORIZED, TxnState.DISPENSING, TxnState.DISPENSED],
        TxnState.NOT_DISPENSED: [TxnState.AUTHORIZED, TxnState.DISPENSING, TxnState.NOT_DISPENSED],
    }[state]
    for s in path:
        journal.advance(
            txn.id,
            s,
            authorization_id="auth-key-1" if s is TxnState.AUTHORIZED else None,
            outcome=outcome if s in (TxnState.DISPENSED, TxnState.NOT_DISPENSED) else None,
        )
    return txn.id


@pytest.mark.parametrize(
    ("board_says", "expected", "settled_with"),
    [
        (DispenseOutcome.OK, TxnState.CAPTURED, "capture"),  # it fell: charge it
        (DispenseOutcome.JAMMED, TxnState.VOIDED, "void"),  # it jammed: release it
        (None, TxnState.VOIDED, "void"),  # the board never got the command
    ],
)
def test_crash_while_dispensing_asks_the_board_then_settles(
    tmp_path: Path, board_says: DispenseOutcome | None, expected: TxnState, settled_with: str
) -> None:
    server = FakeServer()
    kiosk, journal = make_kiosk(tmp_path, FakeBoard({}), server)
    txn_id = crashed_in(journal, TxnState.DISPENSING)
    kiosk.board = FakeBoard({txn_id: board_says} if board_says else {})  # type: ignore[assignment]
    assert kiosk.recover() == [(txn_id, expected)]
    assert server.calls == [(settled_with, "auth-key-1", f"key-1:{settled_with}")]
    assert kiosk.board.dispensed == []  # type: ignore[attr-defined]  # never dispense again
    assert journal.open_transactions() == []


def test_crash_after_authorizing_voids_the_reservation(tmp_path: Path) -> None:
    server = FakeServer()
    kiosk, journal = make_kiosk(tmp_path, FakeBoard({}), server)
    txn_id = crashed_in(journal, TxnState.AUTHORIZING)
    assert kiosk.recover() == [(txn_id, TxnState.VOIDED)]
    assert [c[0] for c in server.calls] == ["authorize", "void"]
    assert server.calls[0][2] == "key-1"  # the same idempotency key as before the crash


def test_dispensed_but_unsettled_is_captured_once_the_server_is_back(tmp_path: Path) -> None:
    server = FakeServer()
    kiosk, journal = make_kiosk(tmp_path, FakeBoard({}), server)
    txn_id = crashed_in(journal, TxnState.DISPENSED, outcome="ok")
    server.down = True
    assert kiosk.recover() == []  # the server is down: still open, nothing lost
    assert [t.id for t in journal.open_transactions()] == [txn_id]
    server.down = False
    assert kiosk.recover() == [(txn_id, TxnState.CAPTURED)]
    assert kiosk.recover() == []  # and never twice
    assert server.calls == [("capture", "auth-key-1", "key-1:capture")]


def test_not_dispensed_is_voided_with_the_board_reason(tmp_path: Path) -> None:
    server = FakeServer()
    kiosk, journal = make_kiosk(tmp_path, FakeBoard({}), server)
    txn_id = crashed_in(journal, TxnState.NOT_DISPENSED, outcome="empty")
    assert kiosk.recover() == [(txn_id, TxnState.VOIDED)]
    assert server.calls == [("void", "auth-key-1", "key-1:void")]
