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

A tap with a choice (ARCHITECTURE.md, "The tap with a choice") is three calls the attendant
(kiosk.attendant) makes while the card stays on the reader: `check_card` (read, prove, verify
offline), `entitlements` (what this card may take here now: the server's answer, or the signed
offline policy's), and `take` (a fresh proof, then authorize, dispense, capture or void for the
chosen slot, exactly as `serve_card` does for a kiosk without a screen).

The words for the resident are msgids of the kiosk's catalogue (kiosk.screen.words), kept in a
result as phrases (msgid and parameters) and said in the resident's language by the screen;
`TapResult.message` is the same words in English, for the log.
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
from cardsvc.verify import CardRole, verify_tap
from kiosk.board import BoardDriver, BoardError, DispenseOutcome, DispenseResult
from kiosk.choices import Entitlements, Source, entitlements_from_json
from kiosk.client import ServerClient
from kiosk.errors import ServerProblemError, ServerUnavailableError
from kiosk.journal import TERMINAL, Journal, Txn, TxnState
from kiosk.offline import OfflineMode, OfflineSync
from kiosk.screen.words import N_, Phrase, phrase

log = logging.getLogger(__name__)

# The server's answer to a capture or void of an authorization it has no record of.
AUTHORIZATION_UNKNOWN = "authorization_unknown"


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


def english(words: list[Phrase]) -> str:
    """Phrases in English (the msgids themselves), for the log."""
    return " ".join(
        msgid.format(**{k: english([v]) if isinstance(v, tuple) else v for k, v in p.items()})
        if p
        else msgid
        for msgid, p in words
    )


@dataclass
class TapResult:
    outcome: TapOutcome
    words: list[Phrase]
    steps: list[Step] = field(default_factory=list)
    txn_id: int | None = None
    reason: str | None = None
    remaining: dict[str, int] = field(default_factory=dict)
    stock_left: int | None = None
    card_guid: str | None = None
    next_allowed_on: dt.date | None = None
    slot: int | None = None
    product: dict[str, Any] | None = None
    offline: bool = False

    @property
    def message(self) -> str:
        return english(self.words)

    @property
    def total_ms(self) -> float:
        return sum(s.ms for s in self.steps)


NOT_CHARGED = phrase(N_("Nothing was taken from your allowance."))
ASK_AT_STATION = phrase(N_("Please ask at a service station."))

REFUSAL_WORDS = {
    "limit_reached": N_("You have received this period's free allowance for this item."),
    "card_revoked": N_("This card has been reported lost or is no longer valid."),
    "card_unknown": N_("This card is not registered."),
    "not_eligible": N_("This item is not available with this card."),
    "slot_unknown": N_("This item is not offered at this machine."),
}
NOT_ALLOWED_NOW = N_("This item cannot be given with this card now.")
MORE_FROM = N_("You can take more from {date}.")

OFFLINE_REFUSAL_WORDS = {
    "offline_limit_reached": N_(
        "The service cannot be reached right now, and this machine has given what it may give "
        "this card without it today. Please try again later."
    ),
}
UNREACHABLE_WORDS = N_(
    "The service cannot be reached right now. Please try again in a few minutes."
)

OUTCOME_WORDS = {
    DispenseOutcome.EMPTY: N_("Sorry, this item has run out."),
    DispenseOutcome.JAMMED: N_("Sorry, the machine jammed."),
    DispenseOutcome.MOTOR_FAULT: N_("Sorry, the machine has a fault."),
    DispenseOutcome.NO_DROP: N_("Sorry, the item did not drop."),
}
NOTHING_DISPENSED = N_("Sorry, nothing was dispensed.")
BOARD_SILENT = N_(
    "The machine did not answer. If no item came out, nothing will be taken from your allowance."
)
CARD_PULLED = N_("The card was taken away too soon. Please hold it on the reader and try again.")
CARD_UNREADABLE = N_("This card could not be read. Please try again.")
CARD_NOT_ACCEPTED = N_("This card was not accepted: {why}.")
TAKE_ITEM = N_("Please take {name} from the tray.")
YOUR_ITEM = N_("your item")
SERVED_OFFLINE = N_(
    "Served offline: it counts towards your allowance when the machine is back in touch with "
    "the service."
)
REQUEST_REFUSED = N_("The request was refused.")

# Why a card failed verification, as the resident is told (cardsvc.errors.VerificationFailure).
VERIFICATION_WORDS = {
    "expired": N_("the card has expired"),
    "not_yet_valid": N_("the card is not valid yet"),
    "revoked": N_("the card has been reported lost"),
    "untrusted_issuer": N_("the card was not issued by the city"),
}
CARD_NOT_GENUINE = N_("the card could not prove it is genuine")


@dataclass
class CheckedCard:
    """A card on the reader that proved itself and passed offline verification."""

    guid: bytes
    role: CardRole
    proof: dict[str, Any]
    certificate_der: bytes = field(repr=False)
    piv: PivSession = field(repr=False)
    steps: list[Step] = field(default_factory=list)  # read, prove, verify, entitlements

    @property
    def guid_hex(self) -> str:
        return self.guid.hex()


class _Timer:
    def __init__(self, on_step: Callable[[str], object] | None = None) -> None:
        self.steps: list[Step] = []
        self._on_step = on_step

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        if self._on_step is not None:
            self._on_step(name)  # the screen shows the step as it starts
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
        """Serve one tap of a card that is on the reader now, from `slot` (a kiosk without a
        screen, where every tap takes the same product)."""
        self.serving.set()
        try:
            timer = _Timer()
            checked = self.check_card(connection, timer)
            if isinstance(checked, TapResult):
                return checked
            result = self._transact(checked.proof, slot, timer)
            result.card_guid = checked.guid_hex
            return result
        finally:
            self.serving.clear()

    def check_card(
        self,
        connection: Any,
        timer: _Timer | None = None,
        on_step: Callable[[str], object] | None = None,
    ) -> CheckedCard | TapResult:
        """Read the card, have it prove itself, verify it offline. A TapResult when refused."""
        timer = timer or _Timer(on_step)
        try:
            with timer.step("read card", "SELECT PIV, GET DATA CHUID and 9E certificate"):
                piv = PivSession(connection)
                card = read_card(piv)
            challenge, signature = self._prove(piv, card.guid, timer)
        except CardRemovedError:
            return TapResult(
                TapOutcome.CARD_REMOVED,
                [phrase(CARD_PULLED), NOT_CHARGED],
                timer.steps,
                reason="card_removed",
            )
        except CardVerificationError as exc:
            return self._rejected(exc, timer)
        except CardError as exc:
            log.info("card could not be read: %s", exc)
            return TapResult(
                TapOutcome.CARD_REJECTED,
                [phrase(CARD_UNREADABLE)],
                timer.steps,
                reason="card_unreadable",
            )
        guid_hex = card.guid.hex()
        try:
            with timer.step("verify offline", "chain to city card CA, validity, signature"):
                verified = verify_tap(
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
        return CheckedCard(
            card.guid,
            verified.role,
            challenge.to_json(signature),
            card.certificate_der,
            piv,
            timer.steps,
        )

    def _prove(self, piv: PivSession, guid: bytes, timer: _Timer) -> tuple[TapChallenge, bytes]:
        challenge = TapChallenge(
            kiosk_id=self.kiosk_id,
            counter=self.journal.next_counter(),
            time_ms=int(self._clock() * 1000),
            nonce=os.urandom(16),
            card_guid=guid,
        )
        with timer.step("card proves", "GENERAL AUTHENTICATE, 9E key, fresh challenge"):
            return challenge, prove(piv, challenge)

    def entitlements(self, card: CheckedCard, timer: _Timer | None = None) -> Entitlements:
        """What this card may take here now, per category: the server's answer; the signed
        offline policy's when the server cannot be reached (kiosk.offline)."""
        if timer is None:
            timer = _Timer()
            timer.steps = card.steps  # the tap's steps so far: the log shows them all
        try:
            with timer.step("entitlements", "what this card may take here now"):
                answer = self.server.entitlements(card.proof, str(uuid.uuid4()))
        except ServerUnavailableError:
            if self.offline is not None:
                return self.offline.entitlements(card.guid_hex)
            return Entitlements(Source.UNREACHABLE, False, "server_unavailable")
        except ServerProblemError as exc:
            if exc.status >= 500:
                return Entitlements(Source.UNREACHABLE, False, "server_unavailable")
            return Entitlements(Source.SERVER, False, exc.code)
        return entitlements_from_json(answer)

    def take(
        self, card: CheckedCard, slot: int, on_step: Callable[[str], object] | None = None
    ) -> TapResult:
        """The resident chose `slot`: a fresh proof from the card (it is still on the reader),
        then authorize, dispense, capture or void exactly as `serve_card`."""
        self.serving.set()
        try:
            timer = _Timer(on_step)
            try:
                challenge, signature = self._prove(card.piv, card.guid, timer)
            except CardRemovedError:
                return TapResult(
                    TapOutcome.CARD_REMOVED,
                    [phrase(CARD_PULLED), NOT_CHARGED],
                    timer.steps,
                    reason="card_removed",
                    slot=slot,
                )
            except CardError as exc:
                log.info("card failed its second proof: %s", exc)
                return TapResult(
                    TapOutcome.CARD_REJECTED,
                    [phrase(CARD_UNREADABLE)],
                    timer.steps,
                    reason="card_unreadable",
                    slot=slot,
                )
            result = self._transact(challenge.to_json(signature), slot, timer)
            result.card_guid = card.guid_hex
            result.slot = slot
            result.steps = [*card.steps, *result.steps]
            return result
        finally:
            self.serving.clear()

    def _rejected(self, exc: CardVerificationError, timer: _Timer) -> TapResult:
        reason = str(getattr(exc, "reason", "") or "card_rejected")
        why = VERIFICATION_WORDS.get(reason, CARD_NOT_GENUINE)
        return TapResult(
            TapOutcome.CARD_REJECTED,
            [phrase(CARD_NOT_ACCEPTED, why=phrase(why)), ASK_AT_STATION],
            timer.steps,
            reason=reason,
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
                log.info("request refused: %s", exc.detail)
                return TapResult(
                    TapOutcome.REFUSED,
                    [phrase(REQUEST_REFUSED), NOT_CHARGED],
                    timer.steps,
                    txn.id,
                    reason=exc.code,
                )
            if isinstance(exc, ServerUnavailableError) and self.offline is not None:
                return self._serve_offline(txn, proof, slot, timer)
            # The server may or may not have reserved: recovery resends with the same key.
            return TapResult(
                TapOutcome.UNSETTLED,
                [phrase(UNREACHABLE_WORDS), NOT_CHARGED],
                timer.steps,
                txn.id,
                reason="server_unavailable",
            )
        next_on = dt.date.fromisoformat(auth.next_allowed_on) if auth.next_allowed_on else None
        if not auth.approved:
            self.journal.advance(txn.id, TxnState.REFUSED, detail=auth.reason)
            words = [phrase(REFUSAL_WORDS.get(auth.reason or "", NOT_ALLOWED_NOW))]
            if next_on:
                words.append(phrase(MORE_FROM, date=next_on))
            return TapResult(
                TapOutcome.REFUSED,
                words,
                timer.steps,
                txn.id,
                reason=auth.reason,
                remaining=auth.remaining,
                next_allowed_on=next_on,
            )
        assert auth.authorization_id is not None
        self.journal.advance(txn.id, TxnState.AUTHORIZED, authorization_id=auth.authorization_id)
        self.journal.advance(txn.id, TxnState.DISPENSING)
        try:
            with timer.step("dispense", f"board slot {slot}, drop sensor"):
                outcome = self.board.dispense(slot, txn.id)
        except BoardError as exc:
            log.warning("board: %s", exc)
            return TapResult(
                TapOutcome.UNSETTLED,
                [phrase(BOARD_SILENT)],
                timer.steps,
                txn.id,
                reason="board_silent",
            )
        with timer.step("settle", "capture" if outcome.outcome is DispenseOutcome.OK else "void"):
            settled = self._settle(self.journal.get(txn.id), outcome)
        remaining = auth.remaining
        if settled is not None and isinstance(settled.get("remaining"), dict):
            remaining = settled["remaining"]
        return self._outcome(outcome, timer, txn.id, auth.product, remaining)

    def _outcome(
        self,
        outcome: DispenseResult,
        timer: _Timer,
        txn_id: int,
        product: dict[str, Any] | None,
        remaining: dict[str, int],
        *,
        offline: bool = False,
    ) -> TapResult:
        if outcome.outcome is DispenseOutcome.OK:
            name = (product or {}).get("name")
            words = [phrase(TAKE_ITEM, name=name or phrase(YOUR_ITEM))]
            if offline:
                words.append(phrase(SERVED_OFFLINE))
            return TapResult(
                TapOutcome.DISPENSED,
                words,
                timer.steps,
                txn_id,
                reason="offline" if offline else None,
                remaining=remaining,
                stock_left=outcome.remaining,
                product=product,
                offline=offline,
            )
        return TapResult(
            TapOutcome.NOT_DISPENSED,
            [phrase(OUTCOME_WORDS.get(outcome.outcome, NOTHING_DISPENSED)), NOT_CHARGED],
            timer.steps,
            txn_id,
            reason=str(outcome.outcome),
            remaining=remaining,
            stock_left=outcome.remaining,
            product=product,
            offline=offline,
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
                [phrase(words or UNREACHABLE_WORDS), NOT_CHARGED],
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
            log.warning("board: %s", exc)
            return TapResult(
                TapOutcome.UNSETTLED,
                [phrase(BOARD_SILENT)],
                timer.steps,
                txn.id,
                reason="board_silent",
            )
        dropped = outcome.outcome is DispenseOutcome.OK
        self.journal.advance(
            txn.id,
            TxnState.OFFLINE_DISPENSED if dropped else TxnState.OFFLINE_NOT_DISPENSED,
            outcome=str(outcome.outcome),
        )
        name = self.offline.product_name(slot)
        product = {"name": name} if name else None
        return self._outcome(outcome, timer, txn.id, product, {}, offline=True)

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
        except (ServerUnavailableError, ServerProblemError) as exc:
            if _authorization_lost(exc):
                self._server_lost_authorization(txn, dropped=dropped)
            return None  # stays DISPENSED / NOT_DISPENSED; recover() settles it later
        return doc

    def _server_lost_authorization(self, txn: Txn, *, dropped: bool) -> Txn:
        """The server answered `authorization_unknown`: it has no record of this authorization,
        because it was restored from a backup older than the tap (docs/backup.md). The journal
        still holds the card's signed proof. An item that fell is queued for the offline sync
        (kiosk.offline), which charges it once per tap counter and flags it as the server
        decides; when nothing fell there is nothing to charge, and the transaction is closed
        here as voided."""
        if dropped:
            log.warning(
                "txn %d: the server has no authorization %s (restored from an older backup?); "
                "the item fell, so the dispense is re-sent through the offline sync to be "
                "charged once",
                txn.id,
                txn.authorization_id,
            )
            return self.journal.advance(
                txn.id, TxnState.OFFLINE_DISPENSED, detail=AUTHORIZATION_UNKNOWN
            )
        log.warning(
            "txn %d: the server has no authorization %s (restored from an older backup?); "
            "nothing fell (%s), so there is nothing to charge: closed here as voided",
            txn.id,
            txn.authorization_id,
            txn.outcome or "not dispensed",
        )
        return self.journal.advance(txn.id, TxnState.VOIDED, detail=AUTHORIZATION_UNKNOWN)

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
            try:
                self.server.void(
                    txn.authorization_id, "kiosk_restart", txn.idempotency_key + ":void"
                )
            except ServerProblemError as exc:
                if not _authorization_lost(exc):
                    raise
                return self._server_lost_authorization(txn, dropped=False).state
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


def _authorization_lost(exc: Exception) -> bool:
    return isinstance(exc, ServerProblemError) and exc.code == AUTHORIZATION_UNKNOWN
