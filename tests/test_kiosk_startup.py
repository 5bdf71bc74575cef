"""At start the kiosk numbers its transactions above the highest id its board has recorded
(PROTOCOL.md 6.2), so a journal restored from an old copy never reuses one; a board silent at
start leaves the numbering alone (its driver still refuses a recorded id at the first dispense)."""

from __future__ import annotations

from pathlib import Path

from kiosk.app import continue_txn_ids_above_board
from kiosk.board import BoardTimeoutError
from kiosk.journal import Journal


class Board:
    """Only what start-up asks of a board driver (a unit-test stand-in)."""

    def __init__(self, last: int | None) -> None:
        self.last = last

    def last_txn_id(self) -> int:
        if self.last is None:
            raise BoardTimeoutError("no answer")
        return self.last


def _next_id(journal: Journal) -> int:
    return journal.begin(1, f"key-{id(journal)}-{journal.continue_txn_ids_above(0)}", {}).id


def test_new_ids_start_above_the_boards_last(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        below = journal.continue_txn_ids_above(0)
        board_last = below + 1000
        continue_txn_ids_above_board(journal, Board(board_last))  # type: ignore[arg-type]
        assert _next_id(journal) > board_last


def test_a_silent_board_leaves_the_numbering_alone(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    with Journal(tmp_path / "j.sqlite3") as journal:
        before = journal.continue_txn_ids_above(0)
        continue_txn_ids_above_board(journal, Board(None))  # type: ignore[arg-type]
        assert journal.continue_txn_ids_above(0) == before
    assert "did not say its last transaction id" in caplog.text
