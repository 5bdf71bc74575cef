"""Maintenance mode: a technician's staff card and PIN, then the slots, refills, test dispenses
and faults, on the kiosk's own screen.

Entry: a card whose certificate carries the staff policy (cardsvc.verify.STAFF_CARD_POLICY,
checked offline by kiosk.tap.Kiosk.check_card like any card) is sent here by the attendant. The
technician types the PIN on the screen; the card checks it (PIV VERIFY: the kiosk never knows
the PIN, and the card counts the tries and blocks itself after three wrong ones).

The maintenance screen shows each slot's product (the signed configuration), the board's stock
and capacity, the door and the board's fault bits, and offers per slot:
- refill: the board's count set to the slot's capacity through the driver (SET_STOCK on
  onecard-v1; a board whose driver cannot set its stock is said so, and nothing changes), and a
  stock event for the server (POST /api/v1/stock-events, signed by the kiosk, with the staff
  card's proof and certificate, so the server records who refilled what and when), kept in the
  kiosk's outbox before it is sent (kiosk.stock_outbox): a server that cannot be reached gets
  it later from the kiosk's chores, and the screen says so;
- test dispense: the motor and the drop sensor tried on one item, with a board transaction id
  from the journal's sequence (so it never collides with a resident's), charged to nobody (no
  authorization exists), and reported as a stock event;
- clear faults: the board restarted (RESET: on onecard-v1 fault bits stay until a restart).
Finishing, taking the card away or the timeout ends maintenance; the next card is a resident's.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cardsvc.errors import CardError, InvalidPinError, PinBlockedError
from kiosk.board import BoardDriver, BoardError
from kiosk.config_sync import SlotConfig
from kiosk.journal import Journal
from kiosk.screen.words import N_, phrase
from kiosk.session import Screen, ScreenSession
from kiosk.stock_outbox import PENDING, SENT
from kiosk.tap import CheckedCard

log = logging.getLogger(__name__)

POLL_S = 0.1

REFILLED = N_("Slot {slot} refilled: {count} items, recorded at the server.")
REFILLED_QUEUED = N_(
    "Slot {slot} refilled: {count} items, recorded on this kiosk; it will be sent when the "
    "server can be reached."
)
REFILLED_REFUSED = N_(
    "Slot {slot} refilled: {count} items; the server refused the record ({code}), which is "
    "kept on this kiosk."
)
TEST_QUEUED = N_(
    "The test dispense is recorded on this kiosk; it will be sent when the server can be reached."
)
TEST_REFUSED = N_(
    "The server refused the test dispense's record ({code}); it is kept on this kiosk."
)
CANNOT_SET_STOCK = N_("This board cannot set its stock: slot {slot} was not changed.")
TESTED = N_("Test dispense from slot {slot}: {outcome}. Nobody was charged.")
CLEARED = N_("Faults cleared: the board restarted.")
CANNOT_CLEAR = N_("This board cannot clear its faults from here.")
BOARD_SILENT = N_("The board did not answer: {error}")
PIN_SHAPE = N_("The PIN has 6 to 8 digits.")
OUTCOMES = {
    "ok": N_("ok"),
    "empty": N_("empty"),
    "jammed": N_("jammed"),
    "motor_fault": N_("motor_fault"),
    "no_drop": N_("no_drop"),
}


def test_txn_ids(journal: Journal) -> Callable[[], int]:
    """Board transaction ids for test dispenses, taken from the journal's own sequence (the
    next id it would give a transaction, then skipped), so they stay above every id the board
    has seen and below every later resident's."""

    def next_id() -> int:
        taken = journal.continue_txn_ids_above(0)
        journal.continue_txn_ids_above(taken)
        return taken

    return next_id


class StockEvents(Protocol):
    """Where stock events go (kiosk.stock_outbox.StockOutbox): `record` keeps the event, tries
    to send it, and returns its state (sent, pending or rejected) and the server's code if
    it refused it."""

    def record(self, event: dict[str, Any]) -> tuple[str, str | None]: ...


class Maintenance:
    def __init__(
        self,
        session: ScreenSession,
        board: BoardDriver,
        stock_events: StockEvents,
        slots: Callable[[], Mapping[int, SlotConfig]],
        next_board_txn_id: Callable[[], int],
        *,
        on_stock: Callable[[int, int | None], None] = lambda slot, count: None,
    ) -> None:
        self.session = session
        self.board = board
        self.stock_events = stock_events
        self.slots = slots
        self.next_board_txn_id = next_board_txn_id
        self.on_stock = on_stock  # the attendant's stock book follows the board

    def serve(self, card: CheckedCard, connection: Any, card_present: Callable[[], bool]) -> None:
        """From the PIN to the end of maintenance (the attendant then asks for the card)."""
        del connection  # the card's session is card.piv
        if not self._pin(card, card_present):
            return
        notice: list[Any] = []
        while True:
            self.session.go(Screen.MAINTENANCE, notice=notice, **self._board_view())
            action = self._wait(card_present)
            if action is None or action.get("action") == "finish":
                return
            slot = action.get("slot")
            kind = action.get("action")
            if kind == "clear_faults":
                notice = [self._clear_faults()]
            elif isinstance(slot, int) and slot in self._slot_numbers():
                if kind == "refill":
                    notice = [self._refill(card, slot)]
                elif kind == "test_dispense":
                    notice = self._test_dispense(card, slot)

    # ----------------------------------------------------------------- the PIN

    def _pin(self, card: CheckedCard, card_present: Callable[[], bool]) -> bool:
        self.session.go(Screen.STAFF_PIN, tries=None)
        while True:
            action = self._wait(card_present)
            if action is None or action.get("action") != "pin":
                return False
            pin = str(action.get("pin", ""))
            if not (6 <= len(pin) <= 8 and pin.isdigit()):
                self.session.go(Screen.STAFF_PIN, tries=None, notice=[phrase(PIN_SHAPE)])
                continue  # not sent to the card: it would count a try for a typing slip
            try:
                card.piv.verify_pin(pin)
            except InvalidPinError as exc:
                if exc.attempts_remaining == 0:
                    self.session.go(Screen.REFUSED, reason="pin_blocked")
                    return False
                self.session.go(Screen.STAFF_PIN, tries=exc.attempts_remaining)
                continue
            except PinBlockedError:
                self.session.go(Screen.REFUSED, reason="pin_blocked")
                return False
            except CardError as exc:
                log.info("PIN not checked: %s", exc)
                return False
            log.info("maintenance by staff card %s", card.guid_hex)
            return True

    def _wait(self, card_present: Callable[[], bool]) -> dict[str, Any] | None:
        """The next action; None for cancel, the card taken away, or the timeout."""
        while True:
            action = self.session.next_action(POLL_S)
            if action is not None:
                if action.get("action") == "cancel":
                    return None
                return action
            if self.session.expired() or not card_present():
                return None

    # ----------------------------------------------------------------- the board

    def _slot_numbers(self) -> set[int]:
        return set(self.slots())

    def _board_view(self) -> dict[str, Any]:
        slots = self.slots()
        view: dict[str, Any] = {"slots": [], "door_open": None, "faults": []}
        try:
            capacity = dict(self.board.info().slots)
            stock = dict(self.board.stock())
            status = getattr(self.board, "status", None)
            if callable(status):
                s = status()
                view["door_open"] = s.door_open
                view["faults"] = sorted(s.faults)
        except BoardError as exc:
            view["board_error"] = str(exc)
            capacity, stock = {}, {}
        for number in sorted(set(slots) | set(stock)):
            config = slots.get(number)
            view["slots"].append(
                {
                    "slot": number,
                    "sku": config.sku if config else "",
                    "name": config.name if config else "",
                    "stock": stock.get(number),
                    "capacity": capacity.get(number),
                }
            )
        return view

    def _refill(self, card: CheckedCard, slot: int) -> Any:
        set_stock = getattr(self.board, "set_stock", None)
        if not callable(set_stock):
            return phrase(CANNOT_SET_STOCK, slot=slot)
        try:
            before = self.board.stock().get(slot)
            capacity = self.board.info().slots.get(slot, 0)
            after = dict(set_stock(slot, capacity)).get(slot, capacity)
        except BoardError as exc:
            return phrase(BOARD_SILENT, error=str(exc))
        self.on_stock(slot, after)
        state, code = self._record(card, "refill", slot, before, after)
        if state == SENT:
            return phrase(REFILLED, slot=slot, count=after)
        if state == PENDING:
            return phrase(REFILLED_QUEUED, slot=slot, count=after)
        return phrase(REFILLED_REFUSED, slot=slot, count=after, code=code or "")

    def _test_dispense(self, card: CheckedCard, slot: int) -> list[Any]:
        try:
            before = self.board.stock().get(slot)
            result = self.board.dispense(slot, self.next_board_txn_id())
        except BoardError as exc:
            return [phrase(BOARD_SILENT, error=str(exc))]
        self.on_stock(slot, result.remaining)
        outcome = str(result.outcome)
        said = [phrase(TESTED, slot=slot, outcome=phrase(OUTCOMES.get(outcome, outcome)))]
        if result.dispensed:
            state, code = self._record(card, "test_dispense", slot, before, result.remaining)
            if state == PENDING:
                said.append(phrase(TEST_QUEUED))
            elif state != SENT:
                said.append(phrase(TEST_REFUSED, code=code or ""))
        return said

    def _clear_faults(self) -> Any:
        reset = getattr(self.board, "reset", None)
        if not callable(reset):
            return phrase(CANNOT_CLEAR)
        try:
            reset()
        except BoardError as exc:
            return phrase(BOARD_SILENT, error=str(exc))
        return phrase(CLEARED)

    def _record(
        self, card: CheckedCard, kind: str, slot: int, before: int | None, after: int | None
    ) -> tuple[str, str | None]:
        """A stock event, kept on the kiosk and sent (now or by the chores later): its state
        and the server's refusal code if any. `at_ms` is the event's own time, by which the
        server judges the staff card's tap however late the event arrives."""
        config = self.slots().get(slot)
        event = {
            "kind": kind,
            "slot": slot,
            "sku": config.sku if config else None,
            "count_before": before,
            "count_after": after,
            "at_ms": int(time.time() * 1000),
            "staff_proof": card.proof,
            "staff_certificate": base64.b64encode(card.certificate_der).decode(),
        }
        state, code = self.stock_events.record(event)
        if state != SENT:
            log.warning("stock event %s at the server: %s", state, code or "not yet sent")
        return state, code
