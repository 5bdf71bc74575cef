"""Offline mode as a unit: the signed caps, the offline journal states, the sync that applies
each tap once, and what the journal forgets.

A virtual PIV card in process (cardsvc.vcard) is tapped through the kiosk's real code; the
server and the board are in-process fakes. The same paths run through HTTP, pcscd and a pty in
tests/test_kiosk_offline_integration.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cardsvc.apdu import split_response
from cardsvc.ca import CardCA
from cardsvc.piv import PivSession
from cardsvc.provision import provision_card
from cardsvc.vcard import VirtualPivCard
from kiosk.board import DispenseOutcome, DispenseResult
from kiosk.client import Authorization
from kiosk.config_sync import OfflineRules, SignedConfig, canonical_json, verify_config
from kiosk.errors import ServerProblemError, ServerUnavailableError
from kiosk.journal import Journal, JournalError, TxnState
from kiosk.offline import OfflineMode, Reason, decide
from kiosk.tap import Kiosk, TapOutcome

KIOSK_ID = "K-1"
NOW = 1_800_000_000.0
SERVER_KEY = Ed25519PrivateKey.generate()


def signed_config(
    *,
    issued_at: float = NOW,
    units_per_day: int = 1,
    max_hours: float = 24,
    kiosk_id: str = KIOSK_ID,
) -> dict[str, Any]:
    body = {
        "kiosk_id": kiosk_id,
        "issued_at": dt.datetime.fromtimestamp(issued_at, dt.UTC).isoformat(),
        "slots": [
            {
                "slot": 1,
                "sku": "C-1",
                "name": "Condoms",
                "category": "condoms",
                "units": 1,
                "stock": 5,
            },
        ],
        "offline": {"units_per_card_per_day": units_per_day, "max_offline_hours": max_hours},
        "revocation": {"version": 1},
    }
    signature = SERVER_KEY.sign(canonical_json(body))
    return {**body, "signature": base64.b64encode(signature).decode()}


def config_of(doc: dict[str, Any]) -> SignedConfig:
    return verify_config(doc, SERVER_KEY.public_key())


class InProcessConnection:
    def __init__(self, card: VirtualPivCard) -> None:
        self.card = card
        self.supports_extended = True

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return split_response(self.card.process(apdu))


class FakeServer:
    """Authorize, capture, void and sync with the server's rules for offline taps: a tap
    (kiosk, counter) is applied once; a repeated Idempotency-Key gets the first answer."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[tuple[str, str]] = []
        self.by_counter: dict[int, dict[str, Any]] = {}  # counter -> authorization
        self.answers: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self.lose_next_sync_answer = False
        self.refuse_sync: ServerProblemError | None = None
        self.last_contact: float | None = None
        self.synced: list[list[dict[str, Any]]] = []  # the items of every POST /sync

    def _up(self) -> None:
        if self.down:
            raise ServerUnavailableError("down")

    def authorize(self, proof: dict[str, Any], slot: int, key: str) -> Authorization:
        self._up()
        self.calls.append(("authorize", key))
        auth = self.by_counter.setdefault(
            proof["counter"], {"id": f"auth-{proof['counter']}", "status": "reserved"}
        )
        return Authorization(True, auth["id"], None, None, {"condoms": 2}, None, None)

    def _settle(self, kind: str, auth_id: str, key: str, to: str) -> dict[str, Any]:
        self._up()
        self.calls.append((kind, key))
        auth = next(a for a in self.by_counter.values() if a["id"] == auth_id)
        if auth["status"] == "reserved":
            auth["status"] = to
        if auth["status"] != to:
            raise ServerProblemError(409, f"authorization_{auth['status']}", "settled", {})
        return {"status": to}

    def capture(self, auth_id: str, board_txn: int, key: str) -> dict[str, Any]:
        return self._settle("capture", auth_id, key, "captured")

    def void(self, auth_id: str, reason: str, key: str) -> dict[str, Any]:
        return self._settle("void", auth_id, key, "voided")

    def sync(self, transactions: list[dict[str, Any]], key: str) -> dict[str, Any]:
        self._up()
        self.calls.append(("sync", key))
        self.synced.append(transactions)
        body = canonical_json(transactions)
        if key in self.answers:
            first_body, answer = self.answers[key]
            if first_body != body:
                raise ServerProblemError(422, "idempotency_key_reused", "other body", {})
            return answer
        if self.refuse_sync is not None:
            raise self.refuse_sync
        results = []
        for item in transactions:
            counter = item["proof"]["counter"]
            if counter in self.by_counter:
                results.append(
                    {
                        "txn_id": item["txn_id"],
                        "status": "duplicate",
                        "authorization_id": self.by_counter[counter]["id"],
                    }
                )
                continue
            status = "captured" if item["outcome"] == "ok" else "voided"
            self.by_counter[counter] = {"id": f"off-{counter}", "status": status, "offline": True}
            results.append(
                {
                    "txn_id": item["txn_id"],
                    "status": "applied",
                    "authorization_id": f"off-{counter}",
                    "charged": 1 if status == "captured" else 0,
                    "flags": [],
                }
            )
        answer = {"results": results}
        self.answers[key] = (body, answer)
        if self.lose_next_sync_answer:
            self.lose_next_sync_answer = False
            raise ServerUnavailableError("the answer was lost on the way back")
        return answer

    def charged(self) -> int:
        return sum(1 for a in self.by_counter.values() if a["status"] == "captured")


class FakeBoard:
    def __init__(self) -> None:
        self.dispensed: list[int] = []
        self.outcome = DispenseOutcome.OK
        self.remembered: dict[int, DispenseOutcome] = {}

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        self.dispensed.append(txn_id)
        self.remembered[txn_id] = self.outcome
        return DispenseResult(txn_id, slot, self.outcome, 4)

    def query(self, txn_id: int) -> DispenseResult | None:
        outcome = self.remembered.get(txn_id)
        return None if outcome is None else DispenseResult(txn_id, 1, outcome, 4)


class Clock:
    def __init__(self, now: float = NOW + 60) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CardCA:
    return CardCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def card(tmp_path: Path, ca: CardCA) -> InProcessConnection:
    connection = InProcessConnection(VirtualPivCard(tmp_path / "card.json"))
    provision_card(PivSession(connection), ca)
    return connection


class Rig:
    def __init__(self, tmp_path: Path, ca: CardCA, config: dict[str, Any] | None) -> None:
        self.path = tmp_path / "journal.sqlite3"
        self.ca = ca
        self.server = FakeServer()
        self.board = FakeBoard()
        self.clock = Clock()
        self.config = config_of(config) if config is not None else None
        self.journal = Journal(self.path, clock=self.clock)
        self.kiosk = self.make_kiosk(self.journal)

    def make_kiosk(self, journal: Journal) -> Kiosk:
        return Kiosk(
            kiosk_id=KIOSK_ID,
            journal=journal,
            server=self.server,  # type: ignore[arg-type]
            board=self.board,  # type: ignore[arg-type]
            ca_certificate_der=self.ca.certificate_der,
            clock=self.clock,
            offline=OfflineMode(
                journal, lambda: self.config, lambda: self.server.last_contact, clock=self.clock
            ),
        )

    def restart(self) -> None:
        """A new kiosk process on the same journal file."""
        self.journal.close()
        self.journal = Journal(self.path, clock=self.clock)
        self.kiosk = self.make_kiosk(self.journal)


@pytest.fixture
def rig(tmp_path: Path, ca: CardCA) -> Rig:
    return Rig(tmp_path, ca, signed_config())


# --------------------------------------------------------------------------- the rules, pure

RULES = OfflineRules(units_per_card_per_day=2, max_offline_hours=24)


@pytest.mark.parametrize(
    ("rules", "slot_units", "used", "now", "contact", "approved", "reason", "remaining"),
    [
        (RULES, 1, 0, NOW, NOW - 3600, True, None, 1),
        (RULES, 1, 1, NOW, NOW - 3600, True, None, 0),
        (RULES, 1, 2, NOW, NOW - 3600, False, Reason.LIMIT_REACHED, 0),
        (RULES, 3, 0, NOW, NOW - 3600, False, Reason.LIMIT_REACHED, 2),  # a pack worth 3 units
        (RULES, 1, 0, NOW, NOW - 24 * 3600, True, None, 1),  # exactly at the limit
        (RULES, 1, 0, NOW, NOW - 24 * 3600 - 1, False, Reason.TOO_LONG, 0),
        (RULES, 1, 0, NOW, NOW + 60, False, Reason.TOO_LONG, 0),  # clock went back
        (RULES, None, 0, NOW, NOW, False, Reason.SLOT_UNKNOWN, 0),
        (None, 1, 0, NOW, NOW, False, Reason.NO_CONFIG, 0),
        (RULES, 1, 0, NOW, None, False, Reason.NO_CONFIG, 0),
    ],
)
def test_offline_rules(
    rules: OfflineRules | None,
    slot_units: int | None,
    used: int,
    now: float,
    contact: float | None,
    approved: bool,
    reason: str | None,
    remaining: int,
) -> None:
    decision = decide(rules, slot_units, used_units=used, now_s=now, last_contact_s=contact)
    assert (decision.approved, decision.reason, decision.remaining) == (
        approved,
        reason,
        remaining,
    )


# --------------------------------------------------------------------------- journal states


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([TxnState.OFFLINE_APPROVED], TxnState.OFFLINE_DISPENSED),  # DISPENSING first
        ([TxnState.OFFLINE_APPROVED], TxnState.CAPTURED),  # nothing reserved to capture
        (
            [TxnState.OFFLINE_APPROVED, TxnState.OFFLINE_DISPENSING, TxnState.OFFLINE_DISPENSED],
            TxnState.SYNCED,  # never synced without its batch key written first
        ),
        ([TxnState.AUTHORIZED], TxnState.OFFLINE_DISPENSING),  # online stays online
    ],
)
def test_illegal_offline_transitions_are_refused(
    tmp_path: Path, path: list[TxnState], illegal: TxnState
) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        txn = journal.begin(1, "key-1", {"slot": 1})
        for state in path:
            journal.advance(txn.id, state, authorization_id="a")
        with pytest.raises(JournalError):
            journal.advance(txn.id, illegal)


# --------------------------------------------------------------------------- taps offline


def test_server_down_approves_within_the_allowance_and_refuses_over_it(
    rig: Rig, card: InProcessConnection
) -> None:
    rig.server.down = True
    first = rig.kiosk.serve_card(card, 1)
    assert first.outcome is TapOutcome.DISPENSED, first.message
    assert first.reason == "offline"
    assert "Condoms" in first.message
    assert rig.journal.get(first.txn_id or 0).state is TxnState.OFFLINE_DISPENSED
    second = rig.kiosk.serve_card(card, 1)
    assert second.outcome is TapOutcome.REFUSED
    assert second.reason == Reason.LIMIT_REACHED
    assert rig.board.dispensed == [first.txn_id]  # the motor turned once
    # The refused tap waits, proof kept, for the server: it may have reserved.
    assert rig.journal.get(second.txn_id or 0).state is TxnState.AUTHORIZING


def test_the_allowance_window_is_24_hours(rig: Rig, card: InProcessConnection) -> None:
    rig.config = config_of(signed_config(max_hours=48))
    rig.server.down = True
    assert rig.kiosk.serve_card(card, 1).outcome is TapOutcome.DISPENSED
    rig.clock.now += 23 * 3600
    assert rig.kiosk.serve_card(card, 1).outcome is TapOutcome.REFUSED
    rig.clock.now += 3600 + 1
    assert rig.kiosk.serve_card(card, 1).outcome is TapOutcome.DISPENSED


def test_nothing_fell_does_not_use_the_allowance(rig: Rig, card: InProcessConnection) -> None:
    rig.server.down = True
    rig.board.outcome = DispenseOutcome.EMPTY
    empty = rig.kiosk.serve_card(card, 1)
    assert empty.outcome is TapOutcome.NOT_DISPENSED
    assert rig.journal.get(empty.txn_id or 0).state is TxnState.OFFLINE_NOT_DISPENSED
    rig.board.outcome = DispenseOutcome.OK
    assert rig.kiosk.serve_card(card, 1).outcome is TapOutcome.DISPENSED


@pytest.mark.parametrize(
    ("config", "contact_age_h"),
    [
        (None, 0),  # never had a trusted configuration
        (signed_config(issued_at=NOW - 30 * 3600), 30),  # offline longer than allowed
    ],
)
def test_no_offline_approval_without_signed_rules_or_after_too_long(
    tmp_path: Path,
    ca: CardCA,
    card: InProcessConnection,
    config: dict[str, Any] | None,
    contact_age_h: float,
) -> None:
    rig = Rig(tmp_path, ca, config)
    rig.server.down = True
    rig.server.last_contact = NOW - contact_age_h * 3600
    result = rig.kiosk.serve_card(card, 1)
    assert result.outcome is TapOutcome.UNSETTLED
    assert "cannot be reached" in result.message
    assert rig.board.dispensed == []


def test_a_recent_answer_of_the_server_counts_as_contact(
    tmp_path: Path, ca: CardCA, card: InProcessConnection
) -> None:
    rig = Rig(tmp_path, ca, signed_config(issued_at=NOW - 30 * 3600))
    rig.server.last_contact = NOW  # e.g. a heartbeat answered a minute before the outage
    rig.server.down = True
    assert rig.kiosk.serve_card(card, 1).outcome is TapOutcome.DISPENSED


# --------------------------------------------------------------------------- sync


def test_sync_applies_each_tap_once_and_forgets_the_proofs(
    rig: Rig, card: InProcessConnection
) -> None:
    rig.server.down = True
    served = rig.kiosk.serve_card(card, 1)
    refused = rig.kiosk.serve_card(card, 1)
    assert rig.kiosk.recover() == []  # still down: everything stays queued
    rig.server.down = False
    done = dict(rig.kiosk.recover())
    assert done[served.txn_id or 0] is TxnState.SYNCED
    assert done[refused.txn_id or 0] is TxnState.VOIDED  # re-asked, then released
    assert rig.server.charged() == 1
    assert [kind for kind, _ in rig.server.calls].count("sync") == 1
    synced = rig.journal.get(served.txn_id or 0)
    assert synced.request is None and synced.batch_key is None
    assert synced.authorization_id == f"off-{served_counter(rig, served.txn_id or 0)}"
    calls = len(rig.server.calls)
    assert rig.kiosk.recover() == []
    assert len(rig.server.calls) == calls  # nothing is sent twice


def served_counter(rig: Rig, txn_id: int) -> int:
    counters = [c for c, a in rig.server.by_counter.items() if a.get("offline")]
    assert len(counters) == 1
    return counters[0]


def test_a_restart_after_the_post_resends_the_same_batch_and_counts_once(
    rig: Rig, card: InProcessConnection
) -> None:
    rig.server.down = True
    served = rig.kiosk.serve_card(card, 1)
    rig.server.down = False
    rig.server.lose_next_sync_answer = True  # applied at the server, the answer never came
    assert rig.kiosk.recover() == []
    txn = rig.journal.get(served.txn_id or 0)
    assert txn.state is TxnState.SYNCING
    rig.restart()
    assert rig.kiosk.recover() == [(txn.id, TxnState.SYNCED)]
    syncs = [key for kind, key in rig.server.calls if kind == "sync"]
    assert syncs == [txn.batch_key, txn.batch_key]  # the same key, the same body
    assert rig.server.charged() == 1


def test_a_reservation_whose_answer_was_lost_is_settled_by_the_sync(
    rig: Rig, card: InProcessConnection
) -> None:
    class LosesAuthorizeAnswer(FakeServer):
        def authorize(self, proof: dict[str, Any], slot: int, key: str) -> Authorization:
            super().authorize(proof, slot, key)  # the server reserved...
            raise ServerUnavailableError("...but the answer timed out")

    rig.server = LosesAuthorizeAnswer()
    rig.kiosk = rig.make_kiosk(rig.journal)
    served = rig.kiosk.serve_card(card, 1)
    assert served.outcome is TapOutcome.DISPENSED  # served offline
    txn = rig.journal.get(served.txn_id or 0)
    assert rig.kiosk.recover() == [(txn.id, TxnState.SYNCED)]
    assert ("capture", txn.idempotency_key + ":capture") in rig.server.calls
    assert rig.server.charged() == 1  # the reservation was captured, nothing added


def test_a_batch_refused_as_a_whole_is_split_and_the_bad_tap_set_aside(
    rig: Rig, card: InProcessConnection
) -> None:
    rig.config = config_of(signed_config(units_per_day=3))
    rig.server.down = True
    taps = [rig.kiosk.serve_card(card, 1).txn_id for _ in range(2)]
    rig.server.down = False
    rig.server.refuse_sync = ServerProblemError(400, "proof_malformed", "bad proof", {})
    done = rig.kiosk.recover()
    assert sorted(done) == sorted((t, TxnState.SYNC_REJECTED) for t in taps if t)
    assert len([k for kind, k in rig.server.calls if kind == "sync"]) == 3  # 1 whole + 2 alone
    assert all(rig.journal.get(t or 0).request is None for t in taps)


def test_an_unreachable_sync_keeps_everything_queued(rig: Rig, card: InProcessConnection) -> None:
    rig.server.down = True
    rig.kiosk.serve_card(card, 1)
    rig.server.refuse_sync = ServerProblemError(503, "unavailable", "busy", {})
    rig.server.down = False
    assert [s for _, s in rig.kiosk.recover()] == []
    assert rig.kiosk.offline_sync.pending() == 1


@pytest.mark.parametrize(
    ("crashed_in", "board_says", "synced_outcome"),
    [
        (TxnState.OFFLINE_APPROVED, None, "no_drop"),  # DISPENSE never sent
        (TxnState.OFFLINE_DISPENSING, DispenseOutcome.OK, "ok"),  # it fell: charge it
        (TxnState.OFFLINE_DISPENSING, None, "no_drop"),  # the board never got it
    ],
)
def test_a_crash_mid_offline_tap_asks_the_board_and_never_dispenses_again(
    rig: Rig, crashed_in: TxnState, board_says: DispenseOutcome | None, synced_outcome: str
) -> None:
    proof = {"counter": 7, "card_guid": "ab" * 16}
    txn = rig.journal.begin(1, "key-7", {"proof": proof, "slot": 1})
    rig.journal.advance(txn.id, TxnState.OFFLINE_APPROVED, card_key="k", units=1)
    if crashed_in is TxnState.OFFLINE_DISPENSING:
        rig.journal.advance(txn.id, TxnState.OFFLINE_DISPENSING)
    if board_says is not None:
        rig.board.remembered[txn.id] = board_says
    rig.restart()
    assert rig.kiosk.recover() == [(txn.id, TxnState.SYNCED)]
    assert [item["outcome"] for items in rig.server.synced for item in items] == [synced_outcome]
    assert rig.board.dispensed == []


def test_the_journal_forgets_the_card_once_synced_and_the_window_has_passed(
    rig: Rig, card: InProcessConnection
) -> None:
    rig.server.down = True
    served = rig.kiosk.serve_card(card, 1)
    guid = rig.journal.get(served.txn_id or 0).request["proof"]["card_guid"]  # type: ignore[index]
    rig.server.down = False
    rig.kiosk.recover()
    assert rig.journal.get(served.txn_id or 0).card_key is not None  # still counts today
    rig.clock.now += 24 * 3600 + 1
    rig.kiosk.recover()
    assert rig.journal.get(served.txn_id or 0).card_key is None
    for path in rig.path.parent.glob("journal.sqlite3*"):  # the WAL too, the kiosk running
        data = path.read_bytes()
        assert guid.encode() not in data and bytes.fromhex(guid) not in data, path.name


def test_the_card_key_is_not_the_guid_and_differs_between_journals(tmp_path: Path) -> None:
    guid = "ab" * 16
    keys = set()
    for name in ("a", "b"):
        with Journal(tmp_path / f"{name}.sqlite3") as journal:
            mode = OfflineMode(journal, lambda: None, lambda: None)
            assert mode.card_key(guid) == mode.card_key(guid)
            keys.add(mode.card_key(guid))
    assert len(keys) == 2 and guid not in keys


def test_the_sync_body_is_what_the_server_takes(rig: Rig, card: InProcessConnection) -> None:
    rig.server.down = True
    served = rig.kiosk.serve_card(card, 1)
    rig.server.down = False
    rig.kiosk.recover()
    (item,) = rig.server.synced[0]
    assert set(item) == {"txn_id", "proof", "slot", "quantity", "outcome", "board_txn"}
    assert item["txn_id"] == str(served.txn_id) and item["board_txn"] == served.txn_id
    assert set(item["proof"]) == {
        "kiosk_id",
        "counter",
        "time_ms",
        "nonce",
        "card_guid",
        "signature",
    }
    assert json.loads(json.dumps(item)) == item
