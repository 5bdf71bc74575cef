"""The attendant: one card presence at a kiosk with a screen, from the tap to "take your card".

It moves the screen session (kiosk.session) through the tap with a choice: CHECKING (the card is
read, proves itself, is verified offline, and the kiosk asks what it may take) -> CHOOSING (every
product of the kiosk by category, with stock and what is left) -> DISPENSING (a fresh proof,
authorize, motor and drop sensor, capture or void: kiosk.tap.Kiosk.take, the journal's
exactly-once path unchanged) -> TAKE_ITEM, or REFUSED, or FAULT -> REMOVE_CARD -> IDLE.

Faults are said as they are: an empty slot offers the other products of its category (back to
CHOOSING, without the empty one); a jam or a missed drop says the resident was not charged; a
server that cannot be reached either lets the offline policy answer (the choice says so) or asks
to try later; a card pulled while choosing ends the session (nothing was begun), a card pulled
while dispensing does not stop the dispense (it was authorized: the item falls and is charged,
and the screen says to take it).

A staff card goes to maintenance (kiosk.maintenance) instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol

from cardsvc.errors import PcscdUnavailableError
from cardsvc.verify import CardRole
from kiosk.board import BoardDriver, BoardError
from kiosk.choices import Entitlements, Source, menu, same_category
from kiosk.config_sync import SlotConfig
from kiosk.screen.words import N_, phrase
from kiosk.session import Screen, ScreenSession
from kiosk.tap import CheckedCard, Kiosk, TapOutcome, TapResult

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting screen looks at the reader and the clock
RESULT_MIN_S = 4.0  # a result stays this long even when the card has already left
STOCK_FRESH_S = 30.0

RAN_OUT = N_("Sorry, this item has run out. Nothing was taken from your allowance.")
CHOOSE_ANOTHER = N_("Please choose another item of the same kind.")
NOT_READY = N_("This machine is not ready yet. Please try again later.")
CARD_PULLED_WHILE_CHOOSING = N_(
    "The card was taken away. Nothing was dispensed and nothing was taken from your allowance."
)


class Reader(Protocol):
    def wait_for_removal(self, timeout: float | None = 5.0) -> bool: ...


class StaffDesk(Protocol):
    """What the attendant needs of maintenance mode (kiosk.maintenance.Maintenance)."""

    def serve(
        self, card: CheckedCard, connection: Any, card_present: Callable[[], bool]
    ) -> None: ...


class StockBook:
    """The board's stock per slot as the kiosk last knew it: read from the board when older
    than STOCK_FRESH_S, and kept up to date by every dispense result (so a tap does not wait
    for a stock exchange on the serial line)."""

    def __init__(self, board: BoardDriver, clock: Callable[[], float] = time.monotonic) -> None:
        self._board = board
        self._clock = clock
        self._stock: dict[int, int] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def get(self) -> dict[int, int]:
        with self._lock:
            if self._clock() - self._read_at > STOCK_FRESH_S:
                try:
                    self._stock = dict(self._board.stock())
                    self._read_at = self._clock()
                except BoardError as exc:
                    log.warning("stock not read: %s", exc)
            return dict(self._stock)

    def set(self, slot: int, count: int | None) -> None:
        if count is None:
            return
        with self._lock:
            self._stock[slot] = count

    def forget(self) -> None:
        with self._lock:
            self._read_at = float("-inf")


class Attendant:
    def __init__(
        self,
        kiosk: Kiosk,
        session: ScreenSession,
        reader: Reader,
        slots: Callable[[], Mapping[int, SlotConfig]],
        stock: StockBook,
        *,
        maintenance: StaffDesk | None = None,
        report: Callable[[TapResult], None] = lambda r: None,
        result_min_s: float = RESULT_MIN_S,
        stop: threading.Event | None = None,
    ) -> None:
        self.kiosk = kiosk
        self.session = session
        self.reader = reader
        self.slots = slots
        self.stock = stock
        self.maintenance = maintenance
        self.report = report
        self.result_min_s = result_min_s
        self.stop = stop or threading.Event()
        self._seen_ms = 0

    # ----------------------------------------------------------------- the idle screen

    def idle(self, **notice: Any) -> None:
        """IDLE, showing what the kiosk offers (products and whether in stock; nothing else)."""
        slots, stock = self.slots(), self.stock.get()
        offers = [
            {"slot": n, "sku": s.sku, "name": s.name, "category": s.category,
             "in_stock": stock.get(n, 1) > 0}
            for n, s in sorted(slots.items())
        ]  # fmt: skip
        view = self.session.snapshot().view
        if self.session.screen is Screen.IDLE and not notice:
            if offers == view.get("offers"):
                return
            # New offers (configuration, stock): a recovery notice stays until the next card.
            notice = {k: view[k] for k in ("recovered", "still_open") if k in view}
        self.session.go(Screen.IDLE, offers=offers, **notice)

    def recovering(self, recover: Callable[[], list[Any]]) -> None:
        """Settle what a crash left open, saying so on the screen."""
        if not self.kiosk.journal.open_transactions():
            recover()
            return
        self.session.go(Screen.RECOVERING)
        done = recover()
        still_open = len(self.kiosk.journal.open_transactions())
        self.idle(recovered=len(done), still_open=still_open)

    # ----------------------------------------------------------------- one card presence

    def serve_presence(self, connection: Any) -> bool:
        """Serve the card on the reader from the first step to its removal. True when the card
        has left the reader, False when `stop` came first."""
        try:
            return self._serve(connection)
        except PcscdUnavailableError:
            self.session.go(Screen.IDLE)
            raise

    def _serve(self, connection: Any) -> bool:
        s = self.session
        self._seen_ms = int(time.time() * 1000)  # the card seen: the screen's latency starts here
        s.go(Screen.CHECKING, step="read card", seen_ms=self._seen_ms)
        checked = self.kiosk.check_card(connection, on_step=lambda n: s.update(step=n))
        if isinstance(checked, TapResult):
            self.report(checked)
            if checked.outcome is TapOutcome.CARD_REMOVED:
                return self._show(Screen.FAULT, kind="card_pulled", words=checked.words)
            return self._show(
                Screen.REFUSED, reason=checked.reason, words=checked.words, next_allowed_on=None
            )
        if checked.role is CardRole.STAFF:
            if self.maintenance is None:
                return self._show(Screen.REFUSED, reason="staff_card", words=[])
            self.maintenance.serve(checked, connection, self._card_present)
            return self._remove_card()
        s.update(step="entitlements")
        entitled = self.kiosk.entitlements(checked)
        if entitled.source is Source.UNREACHABLE:
            return self._show(Screen.FAULT, kind="server_unreachable", words=[])
        if not entitled.accepted:
            return self._show(Screen.REFUSED, reason=entitled.reason, words=[])
        if not self.slots():
            return self._show(Screen.FAULT, kind="not_ready", words=[phrase(NOT_READY)])
        return self._choose(checked, entitled)

    def _choose(self, card: CheckedCard, entitled: Entitlements) -> bool:
        s = self.session
        exclude: set[int] = set()
        notice: list[Any] = []
        while True:
            slots = self.slots()
            s.go(
                Screen.CHOOSING,
                categories=[_category_view(c) for c in menu(slots, self.stock.get(), entitled, exclude=frozenset(exclude))],
                offline=entitled.source is Source.OFFLINE,
                notice=notice,
                seen_ms=self._seen_ms,
            )  # fmt: skip
            action = self._wait_for_choice(slots)
            if action == "removed":
                return self._show(
                    Screen.FAULT, kind="card_pulled", words=[phrase(CARD_PULLED_WHILE_CHOOSING)]
                )
            if action is None:
                return self._remove_card()  # cancelled, or the time ran out
            slot = int(action)
            product = slots[slot]
            s.go(Screen.DISPENSING, slot=slot, sku=product.sku, name=product.name, step="start")
            result = self.kiosk.take(card, slot, on_step=lambda n: s.update(step=n))
            self.report(result)
            self.stock.set(slot, result.stock_left)
            if result.outcome is TapOutcome.NOT_DISPENSED and result.reason == "empty":
                self.stock.set(slot, 0)
                if same_category(slots, self.stock.get(), slot):
                    exclude.add(slot)
                    notice = [phrase(RAN_OUT), phrase(CHOOSE_ANOTHER)]
                    continue
            return self._result(result, product)

    def _result(self, result: TapResult, product: SlotConfig) -> bool:
        common = {"words": result.words, "name": product.name, "sku": product.sku}
        if result.outcome is TapOutcome.DISPENSED:
            left = result.remaining.get(product.category)
            return self._show(
                Screen.TAKE_ITEM,
                left=left,
                category=product.category,
                offline=result.offline,
                **common,
            )
        if result.outcome is TapOutcome.REFUSED:
            return self._show(
                Screen.REFUSED,
                reason=result.reason,
                next_allowed_on=result.next_allowed_on,
                **common,
            )
        if result.outcome is TapOutcome.CARD_REMOVED:
            return self._show(Screen.FAULT, kind="card_pulled", **common)
        kind = result.reason or "unsettled"
        if kind.startswith("offline_") or kind == "server_unavailable":
            kind = "server_unreachable"
        return self._show(Screen.FAULT, kind=kind, **common)

    # ----------------------------------------------------------------- waiting

    def _card_present(self) -> bool:
        return not self.reader.wait_for_removal(timeout=0)

    def _wait_for_choice(self, slots: Mapping[int, SlotConfig]) -> int | str | None:
        """The chosen slot; "removed" when the card left; None for cancel or timeout."""
        s = self.session
        while not self.stop.is_set():
            action = s.next_action(POLL_S)
            if action is not None:
                kind = action.get("action")
                if kind == "cancel":
                    return None
                if kind == "choose":
                    slot = action.get("slot")
                    if isinstance(slot, int) and slot in slots:
                        return slot
            if not self._card_present():
                return "removed"
            if s.expired():
                return None
        return None

    def _show(self, screen: Screen, **view: Any) -> bool:
        """A result screen: shown at least `result_min_s`; then IDLE if the card has left,
        else until its timeout, then REMOVE_CARD."""
        s = self.session
        s.go(screen, **view)
        shown = time.monotonic()
        while not self.stop.is_set():
            if self.stop.wait(POLL_S):
                break
            if time.monotonic() - shown >= self.result_min_s and not self._card_present():
                self.idle()
                return True
            if s.expired():
                return self._remove_card()
        return False

    def _remove_card(self) -> bool:
        s = self.session
        s.go(Screen.REMOVE_CARD, reminder=False)
        while not self.stop.is_set():
            if self.reader.wait_for_removal(timeout=POLL_S * 2):
                self.idle()
                return True
            if s.expired():
                s.go(Screen.REMOVE_CARD, reminder=True)  # the reminder, said again
        return False


def _category_view(c: Any) -> dict[str, Any]:
    allowance = asdict(c.allowance)
    return {
        "category": c.category,
        "left": allowance["left"],
        "allowed": allowance["allowed"],
        "reason": allowance["reason"],
        "next_allowed_on": allowance["next_allowed_on"],
        "offers": [
            {
                "slot": o.slot,
                "sku": o.sku,
                "name": o.name,
                "units": o.units,
                "stock": o.stock,
                "in_stock": o.in_stock,
                "may_take": o.may_take,
            }
            for o in c.offers
        ],
    }
