"""The kiosk journal: its state machine, persistence across reopen, and what it forgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiosk.journal import TERMINAL, TRANSITIONS, Journal, JournalError, TxnState


def test_every_state_has_its_transitions_and_terminal_states_have_none() -> None:
    assert set(TRANSITIONS) == set(TxnState)
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()


def test_happy_path_is_written_step_by_step(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        txn = journal.begin(3, "key-1", {"proof": {"card_guid": "00" * 16}, "slot": 3})
        assert txn.state is TxnState.AUTHORIZING
        journal.advance(txn.id, TxnState.AUTHORIZED, authorization_id="auth-9")
        journal.advance(txn.id, TxnState.DISPENSING)
        journal.advance(txn.id, TxnState.DISPENSED, outcome="ok")
        done = journal.advance(txn.id, TxnState.CAPTURED)
        assert done.authorization_id == "auth-9"
        assert done.outcome == "ok"
        assert [s for _, s, _ in journal.steps(txn.id)] == [
            TxnState.AUTHORIZING,
            TxnState.AUTHORIZED,
            TxnState.DISPENSING,
            TxnState.DISPENSED,
            TxnState.CAPTURED,
        ]


def test_settled_transaction_forgets_the_card_proof(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        txn = journal.begin(1, "key-1", {"proof": {"card_guid": "ab" * 16}, "slot": 1})
        assert journal.get(txn.id).request is not None
        journal.advance(txn.id, TxnState.REFUSED, detail="limit_reached")
        assert journal.get(txn.id).request is None
    assert b"abababab" not in (tmp_path / "j.sqlite3").read_bytes()


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], TxnState.DISPENSING),  # never dispense before the server authorized
        ([TxnState.AUTHORIZED, TxnState.DISPENSING], TxnState.CAPTURED),  # never charge unseen
        ([TxnState.AUTHORIZED, TxnState.DISPENSING, TxnState.NOT_DISPENSED], TxnState.CAPTURED),
        ([TxnState.REFUSED], TxnState.AUTHORIZED),
    ],
)
def test_illegal_transitions_are_refused(
    tmp_path: Path, path: list[TxnState], illegal: TxnState
) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        txn = journal.begin(1, "key-1", {"slot": 1})
        for state in path:
            journal.advance(
                txn.id, state, authorization_id="a" if state is TxnState.AUTHORIZED else None
            )
        with pytest.raises(JournalError):
            journal.advance(txn.id, illegal)


def test_open_transactions_and_counter_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        assert journal.next_counter() == 1
        assert journal.next_counter() == 2
        a = journal.begin(1, "key-a", {"slot": 1})
        b = journal.begin(2, "key-b", {"slot": 2})
        journal.advance(b.id, TxnState.REFUSED)
    with Journal(path) as journal:
        assert journal.next_counter() == 3
        assert [t.id for t in journal.open_transactions()] == [a.id]


def test_new_journals_start_transaction_ids_at_different_points(tmp_path: Path) -> None:
    firsts = set()
    for i in range(4):
        with Journal(tmp_path / f"j{i}.sqlite3") as journal:
            firsts.add(journal.begin(1, "k", {"slot": 1}).id)
    assert len(firsts) == 4
    assert all(0 < t < 2**32 for t in firsts)


def test_idempotency_keys_are_unique(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        journal.begin(1, "same", {"slot": 1})
        with pytest.raises(Exception, match="UNIQUE"):
            journal.begin(1, "same", {"slot": 1})
