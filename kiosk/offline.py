"""Offline mode: approve a tap alone when the server cannot be reached, and sync it later.

Modelled on cashless vending's "as backup" mode (ARCHITECTURE.md, DOMAIN.md): the kiosk approves
locally within caps the server signed (kiosk.config_sync), dispenses, queues the outcome in its
journal, and posts the queue to POST /api/v1/sync when the server is back. The risk is stated:
a card may take up to the offline allowance more than its monthly allowance while the server is
away; the server charges every dispense that happened and flags the overdraft.

The rules (`decide`, pure):

* only with a verified configuration, and only while the last contact with the server
  (the later of the signed configuration's `issued_at` and the last answer this process got)
  is within `max_offline_hours`;
* only for a slot the configuration names;
* at most `units_per_card_per_day` units per card in any 24 hours (a rolling window: it does not
  depend on the kiosk's time zone, and midnight does not reset it), counted in the journal by a
  keyed hash of the card GUID. Taps where nothing fell do not count.

Sync (`OfflineSync`): queued transactions are put in a batch whose idempotency key is written to
the journal first (SYNCING); the batch is posted with that key until the server answers, so a
restart resends the same batch and the server answers it once. Each answered transaction becomes
SYNCED and its proof is erased. A tap the server had already reserved online (the authorize
request arrived but its answer was lost) comes back `duplicate`: that reservation is captured or
voided with the transaction's own keys. A batch the server refuses as a whole is split, and a
tap refused alone becomes SYNC_REJECTED (kept in the journal, reported by telemetry).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kiosk.choices import CategoryAllowance, Entitlements, Source
from kiosk.config_sync import OfflineRules, SignedConfig
from kiosk.errors import ServerProblemError, ServerUnavailableError
from kiosk.journal import OFFLINE_QUEUED, Journal, Txn, TxnState

log = logging.getLogger(__name__)

WINDOW_S = 24 * 3600
BATCH_SIZE = 100  # the server takes up to 500
CARD_KEY_SECRET = "offline-card-key"


class Reason:
    """Why the kiosk would not approve offline (stable codes, shown as words by kiosk.tap)."""

    NO_CONFIG = "offline_no_config"
    TOO_LONG = "offline_too_long"
    SLOT_UNKNOWN = "offline_slot_unknown"
    LIMIT_REACHED = "offline_limit_reached"


@dataclass(frozen=True)
class OfflineDecision:
    approved: bool
    reason: str | None
    units: int  # what this tap takes
    remaining: int  # units the card may still take offline here in the window, after this tap


def decide(
    rules: OfflineRules | None,
    slot_units: int | None,
    *,
    used_units: int,
    now_s: float,
    last_contact_s: float | None,
) -> OfflineDecision:
    """The offline rules, pure: values in, decision out."""
    if rules is None or last_contact_s is None:
        return OfflineDecision(False, Reason.NO_CONFIG, 0, 0)
    if not 0 <= now_s - last_contact_s <= rules.max_offline_hours * 3600:
        # Also refused when the clock went back before the last contact: it cannot be trusted.
        return OfflineDecision(False, Reason.TOO_LONG, 0, 0)
    if slot_units is None:
        return OfflineDecision(False, Reason.SLOT_UNKNOWN, 0, 0)
    left = max(0, rules.units_per_card_per_day - used_units)
    if slot_units > left:
        return OfflineDecision(False, Reason.LIMIT_REACHED, slot_units, left)
    return OfflineDecision(True, None, slot_units, left - slot_units)


class OfflineMode:
    """Decides offline taps against the current signed configuration and the journal."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], SignedConfig | None],
        last_contact: Callable[[], float | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self._config = config
        self._last_contact = last_contact
        self._clock = clock
        self._secret = journal.secret(CARD_KEY_SECRET)

    def card_key(self, card_guid_hex: str) -> str:
        """The card as the journal counts it: HMAC of the GUID with this journal's secret, so
        the journal alone does not say which card it was, nor link it to another kiosk."""
        return hmac.new(self._secret, bytes.fromhex(card_guid_hex), hashlib.sha256).hexdigest()

    def decide(self, card_guid_hex: str, slot: int) -> tuple[OfflineDecision, str]:
        """(decision, card key) for one tap; the caller journals an approval before dispensing.
        One tap at a time: the kiosk's reader loop serves one card after another."""
        config = self._config()
        now = self._clock()
        key = self.card_key(card_guid_hex)
        contacts = [c for c in (self._last_contact(), _issued(config)) if c is not None]
        slot_config = config.slots.get(slot) if config is not None else None
        decision = decide(
            config.offline if config is not None else None,
            slot_config.units if slot_config is not None else None,
            used_units=self.journal.offline_units_since(key, int((now - WINDOW_S) * 1000)),
            now_s=now,
            last_contact_s=max(contacts) if contacts else None,
        )
        return decision, key

    def entitlements(self, card_guid_hex: str) -> Entitlements:
        """What the card may take here offline, per category of the configuration's slots: the
        same rules as `decide` (one category unit is the smallest product of the category), so
        the choice shown is the choice `decide` approves."""
        config = self._config()
        if config is None:
            return Entitlements(Source.UNREACHABLE, False, Reason.NO_CONFIG)
        smallest: dict[str, int] = {}
        for slot in config.slots.values():
            smallest[slot.category] = min(slot.units, smallest.get(slot.category, slot.units))
        now = self._clock()
        used = self.journal.offline_units_since(
            self.card_key(card_guid_hex), int((now - WINDOW_S) * 1000)
        )
        contacts = [c for c in (self._last_contact(), _issued(config)) if c is not None]
        categories = {}
        for category, units in smallest.items():
            d = decide(
                config.offline,
                units,
                used_units=used,
                now_s=now,
                last_contact_s=max(contacts) if contacts else None,
            )
            if d.reason in (Reason.NO_CONFIG, Reason.TOO_LONG):
                return Entitlements(Source.UNREACHABLE, False, d.reason)
            left = d.remaining + d.units if d.approved else d.remaining
            categories[category] = CategoryAllowance(category, left, d.approved, d.reason)
        return Entitlements(Source.OFFLINE, True, None, categories)

    def product_name(self, slot: int) -> str | None:
        config = self._config()
        slot_config = config.slots.get(slot) if config is not None else None
        return slot_config.name if slot_config is not None else None


def _issued(config: SignedConfig | None) -> float | None:
    return config.issued_at.timestamp() if config is not None else None


class SyncServer(Protocol):
    """What OfflineSync needs of kiosk.client.ServerClient."""

    def sync(self, transactions: list[dict[str, Any]], idempotency_key: str) -> dict[str, Any]: ...

    def capture(
        self, authorization_id: str, board_txn: int, idempotency_key: str
    ) -> dict[str, Any]: ...

    def void(self, authorization_id: str, reason: str, idempotency_key: str) -> dict[str, Any]: ...


# Answers that say "not now" rather than "never": the batch is sent again later as it is.
_TRANSIENT = frozenset({401, 408, 425, 429})


class OfflineSync:
    """Posts the journal's queued offline transactions, each applied once at the server."""

    def __init__(
        self,
        journal: Journal,
        server: SyncServer,
        *,
        batch_size: int = BATCH_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.server = server
        self._batch_size = batch_size
        self._clock = clock
        self._lock = threading.Lock()

    def pending(self) -> int:
        """Offline transactions not yet answered by the server."""
        return len(self.journal.in_state(*OFFLINE_QUEUED, TxnState.SYNCING))

    def sync(self) -> list[tuple[int, TxnState]]:
        """Send what is queued, batch after batch, until done or the server stops answering.
        Returns (txn id, final state) of each transaction settled. Never raises for an
        unreachable server: the queue waits for the next call."""
        if not self._lock.acquire(blocking=False):
            return []  # another thread is syncing the same queue
        done: list[tuple[int, TxnState]] = []
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    break
                try:
                    settled = self._post(batch)
                except ServerUnavailableError as exc:
                    log.info("offline sync waits: %s", exc)
                    break
                except ServerProblemError as exc:
                    log.warning("offline sync waits: %s", exc)
                    break
                if settled is None:
                    continue  # the batch was split: send its parts
                done.extend(settled)
                if not settled:
                    log.warning("offline sync: the server answered none of batch %s", batch)
                    break
            forgotten = self.journal.forget_card_keys(int((self._clock() - WINDOW_S) * 1000))
            if done or forgotten:
                self.journal.checkpoint()
        finally:
            self._lock.release()
        return done

    def _next_batch(self) -> list[Txn]:
        syncing = self.journal.in_state(TxnState.SYNCING)
        if syncing:  # a batch already written: resend it exactly as it was
            key = syncing[0].batch_key
            return [t for t in syncing if t.batch_key == key]
        queued = self.journal.in_state(*OFFLINE_QUEUED, limit=self._batch_size)
        if not queued:
            return []
        self.journal.start_batch([t.id for t in queued], uuid.uuid4().hex)
        return [self.journal.get(t.id) for t in queued]

    def _post(self, batch: list[Txn]) -> list[tuple[int, TxnState]] | None:
        key = batch[0].batch_key
        assert key is not None
        try:
            answer = self.server.sync([_item(t) for t in batch], key)
        except ServerProblemError as exc:
            if exc.status >= 500 or exc.status in _TRANSIENT:
                raise
            # Refused as a whole: nothing of it was applied. Find the tap it is about.
            if len(batch) > 1:
                log.warning("offline sync: batch refused (%s); sending its taps one by one", exc)
                for txn in batch:
                    self.journal.rebatch([txn.id], uuid.uuid4().hex)
                return None
            log.error("offline sync: the server refused txn %d: %s", batch[0].id, exc)
            state = self.journal.advance(batch[0].id, TxnState.SYNC_REJECTED, detail=exc.code)
            return [(batch[0].id, state.state)]
        results = {
            str(r.get("txn_id")): r for r in answer.get("results", []) if isinstance(r, dict)
        }
        settled = []
        for txn in batch:
            result = results.get(str(txn.id))
            if result is None:
                continue
            settled.append((txn.id, self._settle(txn, result)))
        return settled

    def _settle(self, txn: Txn, result: dict[str, Any]) -> TxnState:
        status = str(result.get("status"))
        detail = status
        authorization_id = result.get("authorization_id")
        if status == "applied" and result.get("flags"):
            detail += ":" + ",".join(str(f) for f in result["flags"])
        elif status == "unattributed":
            detail += f":{result.get('reason')}"
        elif status == "duplicate" and isinstance(authorization_id, str):
            # The server already had this tap: an online reservation whose answer never came
            # back, or this very transaction synced before. Settle that authorization with the
            # board's outcome; capture and void answer the same when it is settled already.
            try:
                if txn.outcome == "ok":
                    self.server.capture(authorization_id, txn.id, txn.idempotency_key + ":capture")
                else:
                    self.server.void(
                        authorization_id, txn.outcome or "no_drop", txn.idempotency_key + ":void"
                    )
            except ServerProblemError as exc:
                if exc.status >= 500 or exc.status in _TRANSIENT:
                    raise
                detail += f":{exc.code}"  # settled the other way already; the server says how
                log.error("offline txn %d: duplicate settled otherwise: %s", txn.id, exc)
        return self.journal.advance(
            txn.id,
            TxnState.SYNCED,
            authorization_id=authorization_id if isinstance(authorization_id, str) else None,
            detail=detail,
        ).state


def _item(txn: Txn) -> dict[str, Any]:
    assert txn.request is not None, f"txn {txn.id} lost its proof before it was synced"
    return {
        "txn_id": str(txn.id),
        "proof": txn.request["proof"],
        "slot": txn.slot,
        "quantity": 1,
        "outcome": txn.outcome or "no_drop",
        "board_txn": txn.id,
    }
