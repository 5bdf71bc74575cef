"""One tap at the kiosk, card to motor: read, prove, verify, authorize, dispense, settle.

The transaction state machine lives in kiosk.journal (states and allowed transitions); this
module drives it. Each state is written to the journal before the kiosk acts on it, so after a
crash `Kiosk.recover()` can finish every open transaction: ask the board what became of the
dispense, then capture or void at the server with the same idempotency keys. A unit is charged
only when the board's drop sensor saw the item fall.

When the server cannot be reached at authorize time (no answer, or only its gateway's 502, 503
or 504: kiosk.client) and the kiosk has an offline mode (kiosk.offline), the kiosk approves
alone within the signed offline caps, dispenses, and queues the outcome; `recover()` posts the
queue once the server answers again.

Words for the resident are made here and nowhere else (the kiosk screen's edge).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cardsvc.errors import CardError, CardRemovedError, CardVerificationError
from cardsvc.piv import PivSession
from cardsvc.profile import TapChallenge, prove, read_card
from cardsvc.verify import verify_tap
from kiosk.board import BoardDriver, BoardError, DispenseOutcome, DispenseResult
from kiosk.client import ServerClient
from kiosk.errors import ServerProblemError, ServerUnavailableError
from kiosk.journal import TERMINAL, Journal, Txn, TxnState
from kiosk.offline import OfflineMode, OfflineSync

log = logging.getLogger(__name__)


class TapOutcome(StrEnum):
    DISPENSED = "dispensed"
    REFUSED = "refused"
    CARD_REJECTED = "card_rejected"
    CARD_REMOVED = "card_removed"
    NOT_DISPENSED = "not_dispensed"
    UNSETTLED = "unsettled"  # the item's fate or the server's answer is not known yet


@dataclass(frozen=True)
class Step:
    name: str
    ms: float
    detail: str = ""


@dataclass
class TapResult:
    outcome: TapOutcome
    message: str
    steps: list[Step] = field(default_factory=list)
    txn_id: int | None = None
    reason: str | None = None
    remaining: dict[str, int] = field(default_factory=dict)
    stock_left: int | None = None
    card_guid: str | None = None

    @property
    def total_ms(self) -> float:
        return sum(s.ms for s in self.steps)


REFUSAL_WORDS = {
    "limit_reached": "You have received this month's free allowance for this item.",
    "card_revoked": "This card has been reported lost. Please ask at a service station.",
    "card_unknown": "This card is not registered. Please ask at a service station.",
    "not_eligible": "This item is not available with this card.",
    "slot_unknown": "This item is not offered at this machine.",
}

OFFLINE_REFUSAL_WORDS = {
    "offline_limit_reached": "The service cannot be reached right now, and this machine has "
    "given what it may give this card without it today. Nothing was taken from your allowance. "
    "Please try again later.",
}
UNREACHABLE_WORDS = (
    "The service cannot be reached right now. Nothing was taken from your "
    "allowance. Please try again in a few minutes."
)

OUTCOME_WORDS = {
    DispenseOutcome.EMPTY: "Sorry, this item has run out. Nothing was taken from your allowance.",
    DispenseOutcome.JAMMED: "Sorry, the machine jammed. Nothing was taken from your allowance.",
    DispenseOutcome.MOTOR_FAULT: "Sorry, the machine has a fault. Nothing was taken from your allowance.",
    DispenseOutcome.NO_DROP: "Sorry, the item did not drop. Nothing was taken from your allowance.",
}


class _Timer:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append(Step(name, (time.perf_counter() - start) * 1000.0, detail))


class Kiosk:
    """The kiosk core: no screen, no reader loop; those call `serve_card` and `recover`."""

    def __init__(
        self,
        *,
        kiosk_id: str,
        journal: Journal,
        server: ServerClient,
        board: BoardDriver,
        ca_certificate_der: bytes,
        revoked: Callable[[], frozenset[bytes]] = frozenset,
        clock: Callable[[], float] = time.time,
        offline: OfflineMode | None = None,
    ) -> None:
        self.kiosk_id = kiosk_id
        self.journal = journal
        self.server = server
        self.board = board
        self.ca_certificate_der = ca_certificate_der
        self._revoked = revoked
        self._clock = clock
        self.offline = offline
        self.offline_sync = OfflineSync(journal, server, clock=clock)
        # Set while a card is served: background work (telemetry) keeps off the board then.
        self.serving = threading.Event()

    def serve_card(self, connection: Any, slot: int) -> TapResult:
        """Serve one tap of a card that is on the reader now."""
        self.serving.set()
        try:
            return self._serve_card(connection, slot)
        finally:
            self.serving.clear()

    def _serve_card(self, connection: Any, slot: int) -> TapResult:
        timer = _Timer()
        try:
            with timer.step("read card", "SELECT PIV, GET DATA CHUID and 9E certificate"):
                piv = PivSession(connection)
                card = read_card(piv)
            counter = self.journal.next_counter()
            challenge = TapChallenge(
                kiosk_id=self.kiosk_id,
                counter=counter,
                time_ms=int(self._clock() * 1000),
                nonce=os.urandom(16),
                card_guid=card.guid,
            )
            with timer.step("card proves", "GENERAL AUTHENTICATE, 9E key, fresh challenge"):
                signature = prove(piv, challenge)
        except CardRemovedError:
            return TapResult(
                TapOutcome.CARD_REMOVED,
                "The card was taken away too soon. Please hold it on the reader and try again. "
                "Nothing was taken from your allowance.",
                timer.steps,
            )
        except CardVerificationError as exc:
            return self._rejected(exc, timer)
        except CardError as exc:
            return TapResult(
                TapOutcome.CARD_REJECTED,
                f"This card could not be read ({exc}). Please try again or ask at a station.",
                timer.steps,
            )
        guid_hex = card.guid.hex()
        try:
            with timer.step("verify offline", "chain to city card CA, validity, signature"):
                verify_tap(
                    card.certificate_der,
                    self.ca_certificate_der,
                    challenge,
                    signature,
                    now=dt.datetime.fromtimestamp(self._clock(), dt.UTC),
                    revoked=self._revoked(),
                )
        except CardVerificationError as exc:
            result = self._rejected(exc, timer)
            result.card_guid = guid_hex
            return result
        result = self._transact(challenge.to_json(signature), slot, timer)
        result.card_guid = guid_hex
        return result

    def _rejected(self, exc: CardVerificationError, timer: _Timer) -> TapResult:
        return TapResult(
            TapOutcome.CARD_REJECTED,
            f"This card was not accepted: {exc}. Please ask at a service station.",
            timer.steps,
            reason=str(getattr(exc, "reason", "") or "card_rejected"),
        )

    def _transact(self, proof: dict[str, Any], slot: int, timer: _Timer) -> TapResult:
        txn = self.journal.begin(slot, str(uuid.uuid4()), {"proof": proof, "slot": slot})
        try:
            with timer.step("authorize", "server reserves one unit"):
                auth = self.server.authorize(proof, slot, txn.idempotency_key)
        except (ServerUnavailableError, ServerProblemError) as exc:
            if isinstance(exc, ServerProblemError) and exc.status < 500:
                # A definite refusal of the request itself: nothing was reserved.
                self.journal.advance(txn.id, TxnState.REFUSED, detail=exc.code)
                return TapResult(
                    TapOutcome.REFUSED,
                    f"The request was refused: {exc.detail}",
                    timer.steps,
                    txn.id,
                    reason=exc.code,
                )
            if isinstance(exc, ServerUnavailableError) and self.offline is not None:
                return self._serve_offline(txn, proof, slot, timer)
            # The server may or may not have reserved: recovery resends with the same key.
            return TapResult(
                TapOutcome.UNSETTLED,
                UNREACHABLE_WORDS,
                timer.steps,
                txn.id,
                reason="server_unavailable",
            )
        if not auth.approved:
            self.journal.advance(txn.id, TxnState.REFUSED, detail=auth.reason)
            words = REFUSAL_WORDS.get(auth.reason or "", auth.message or "Not allowed now.")
            if auth.next_allowed_on:
                words += f" You can take more from {auth.next_allowed_on}."
            return TapResult(
                TapOutcome.REFUSED,
                words,
                timer.steps,
                txn.id,
                reason=auth.reason,
                remaining=auth.remaining,
            )
        assert auth.authorization_id is not None
        self.journal.advance(txn.id, TxnState.AUTHORIZED, authorization_id=auth.authorization_id)
        self.journal.advance(txn.id, TxnState.DISPENSING)
        try:
            with timer.step("dispense", f"board slot {slot}, drop sensor"):
                outcome = self.board.dispense(slot, txn.id)
        except BoardError as exc:
            return TapResult(
                TapOutcome.UNSETTLED,
                "The machine did not answer. If no item came out, nothing will be taken from "
                "your allowance.",
                timer.steps,
                txn.id,
                reason=f"board: {exc}",
            )
        with timer.step("settle", "capture" if outcome.outcome is DispenseOutcome.OK else "void"):
            settled = self._settle(self.journal.get(txn.id), outcome)
        remaining = auth.remaining
        if settled is not None and isinstance(settled.get("remaining"), dict):
            remaining = settled["remaining"]
        if outcome.outcome is DispenseOutcome.OK:
            name = (auth.product or {}).get("name", "your item")
            return TapResult(
                TapOutcome.DISPENSED,
                f"Please take {name} from the tray.",
                timer.steps,
                txn.id,
                remaining=remaining,
                stock_left=outcome.remaining,
            )
        return TapResult(
            TapOutcome.NOT_DISPENSED,
            OUTCOME_WORDS.get(outcome.outcome, "Sorry, nothing was dispensed."),
            timer.steps,
            txn.id,
            reason=str(outcome.outcome),
            remaining=remaining,
            stock_left=outcome.remaining,
        )

    def _serve_offline(
        self, txn: Txn, proof: dict[str, Any], slot: int, timer: _Timer
    ) -> TapResult:
        """The server cannot be reached: approve alone within the signed caps, or refuse."""
        assert self.offline is not None
        with timer.step("offline rules", "signed caps, card's offline use in the journal"):
            decision, card_key = self.offline.decide(str(proof["card_guid"]), slot)
        if not decision.approved:
            # Stays AUTHORIZING: the authorize request may have reached the server, so
            # recover() asks again with the same key once it answers, and releases any hold.
            words = OFFLINE_REFUSAL_WORDS.get(decision.reason or "")
            return TapResult(
                TapOutcome.UNSETTLED if words is None else TapOutcome.REFUSED,
                words or UNREACHABLE_WORDS,
                timer.steps,
                txn.id,
                reason=decision.reason,
            )
        self.journal.advance(
            txn.id,
            TxnState.OFFLINE_APPROVED,
            card_key=card_key,
            units=decision.units,
            detail="approved offline",
        )
        self.journal.advance(txn.id, TxnState.OFFLINE_DISPENSING)
        try:
            with timer.step("dispense", f"board slot {slot}, drop sensor (offline)"):
                outcome = self.board.dispense(slot, txn.id)
        except BoardError as exc:
            return TapResult(
                TapOutcome.UNSETTLED,
                "The machine did not answer. If no item came out, nothing will be taken from "
                "your allowance.",
                timer.steps,
                txn.id,
                reason=f"board: {exc}",
            )
        dropped = outcome.outcome is DispenseOutcome.OK
        self.journal.advance(
            txn.id,
            TxnState.OFFLINE_DISPENSED if dropped else TxnState.OFFLINE_NOT_DISPENSED,
            outcome=str(outcome.outcome),
        )
        if dropped:
            name = self.offline.product_name(slot) or "your item"
            return TapResult(
                TapOutcome.DISPENSED,
                f"Please take {name} from the tray. (Served offline: it counts towards your "
                "allowance when the machine is back in touch with the service.)",
                timer.steps,
                txn.id,
                reason="offline",
                stock_left=outcome.remaining,
            )
        return TapResult(
            TapOutcome.NOT_DISPENSED,
            OUTCOME_WORDS.get(outcome.outcome, "Sorry, nothing was dispensed."),
            timer.steps,
            txn.id,
            reason=str(outcome.outcome),
            stock_left=outcome.remaining,
        )

    def _settle(self, txn: Txn, outcome: DispenseResult) -> dict[str, Any] | None:
        """Write the board's outcome, then capture or void. None if the server is unreachable."""
        authorization_id = txn.authorization_id
        assert authorization_id is not None
        dropped = outcome.outcome is DispenseOutcome.OK
        if txn.state is TxnState.DISPENSING:
            state = TxnState.DISPENSED if dropped else TxnState.NOT_DISPENSED
            txn = self.journal.advance(txn.id, state, outcome=str(outcome.outcome))
        try:
            if dropped:
                doc = self.server.capture(
                    authorization_id, txn.id, txn.idempotency_key + ":capture"
                )
                self.journal.advance(txn.id, TxnState.CAPTURED)
            else:
                doc = self.server.void(
                    authorization_id, str(outcome.outcome), txn.idempotency_key + ":void"
                )
                self.journal.advance(txn.id, TxnState.VOIDED)
        except (ServerUnavailableError, ServerProblemError):
            return None  # stays DISPENSED / NOT_DISPENSED; recover() settles it later
        return doc

    def recover(self) -> list[tuple[int, TxnState]]:
        """Finish every transaction a crash or an outage left open.

        Returns (txn id, final state) for each transaction it settled; those it could not settle
        yet (server or board unreachable) stay open in the journal for the next call. Offline
        transactions are finished with the board, then synced (kiosk.offline.OfflineSync)."""
        done: list[tuple[int, TxnState]] = []
        for txn in self.journal.open_transactions():
            try:
                state = self._recover_one(txn)
            except (ServerUnavailableError, BoardError):
                continue  # still unreachable (or only its gateway answers): try again later
            except ServerProblemError as exc:
                if exc.status < 500:
                    raise
                log.warning("txn %d waits for the server: %s", txn.id, exc)
                continue  # the server failed, it did not decide: try again later
            if state in TERMINAL:
                done.append((txn.id, state))
        try:
            done.extend(self.offline_sync.sync())
        except Exception:  # a sync that fails must not stop the kiosk serving online taps
            log.exception("offline sync failed; the queue stays in the journal")
        return done

    def _recover_one(self, txn: Txn) -> TxnState | None:
        if txn.state is TxnState.OFFLINE_APPROVED:
            # Journal before act: DISPENSING was never written, so the board never got it.
            return self.journal.advance(
                txn.id,
                TxnState.OFFLINE_NOT_DISPENSED,
                outcome=str(DispenseOutcome.NO_DROP),
                detail="kiosk_restart",
            ).state
        if txn.state is TxnState.OFFLINE_DISPENSING:
            found = self.board.query(txn.id)
            outcome = DispenseOutcome.NO_DROP if found is None else found.outcome
            state = (
                TxnState.OFFLINE_DISPENSED
                if outcome is DispenseOutcome.OK
                else TxnState.OFFLINE_NOT_DISPENSED
            )
            return self.journal.advance(txn.id, state, outcome=str(outcome)).state
        if txn.state is TxnState.AUTHORIZING:
            # Did the server reserve? Ask again with the same key; the resident has gone, so
            # a reservation that exists is released.
            assert txn.request is not None
            try:
                auth = self.server.authorize(
                    txn.request["proof"], txn.request["slot"], txn.idempotency_key
                )
            except ServerProblemError as exc:
                if exc.status >= 500:
                    raise  # not a decision about this request: ask again at the next recovery
                return self.journal.advance(txn.id, TxnState.REFUSED, detail=exc.code).state
            if not auth.approved or auth.authorization_id is None:
                return self.journal.advance(txn.id, TxnState.REFUSED, detail=auth.reason).state
            self.journal.advance(
                txn.id, TxnState.AUTHORIZED, authorization_id=auth.authorization_id
            )
            txn = self.journal.get(txn.id)
        if txn.state is TxnState.AUTHORIZED:
            assert txn.authorization_id is not None
            self.server.void(txn.authorization_id, "kiosk_restart", txn.idempotency_key + ":void")
            return self.journal.advance(txn.id, TxnState.VOIDED, detail="kiosk_restart").state
        if txn.state is TxnState.DISPENSING:
            # The board is the only witness of whether the item fell.
            found = self.board.query(txn.id)
            if found is None:
                found = DispenseResult(txn.id, txn.slot, DispenseOutcome.NO_DROP, None)
            self._settle(txn, found)
        elif txn.state in (TxnState.DISPENSED, TxnState.NOT_DISPENSED):
            outcome = DispenseOutcome(txn.outcome or DispenseOutcome.NO_DROP)
            self._settle(txn, DispenseResult(txn.id, txn.slot, outcome, None))
        return self.journal.get(txn.id).state
