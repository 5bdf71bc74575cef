"""The kiosk on the real stack: card through pcscd, board over a pty, server over HTTP.

Each test starts the whole platform (onecard.platform) in its own directory and breaks one joint:
a card pulled mid-command, a forged card, an empty slot, the server gone between dispense and
capture, the board losing power mid-dispense. In each, nothing is charged that did not fall,
and nothing that fell is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cardsvc.ca import CardCA
from kiosk.board import DispenseResult
from kiosk.journal import TxnState
from kiosk.tap import Kiosk, TapOutcome, TapResult
from onecard.platform import SLOT, Platform, start_platform, start_server
from server.services.seeding import LUBE_RULE_UNITS

pytestmark = pytest.mark.pcscd


@pytest.fixture
def platform(tmp_path: Path, pcscd: object) -> Iterator[Platform]:
    with start_platform(tmp_path / "platform") as p:
        yield p


def tap(p: Platform, kiosk: Kiosk | None = None, *, pull: bool = False) -> TapResult:
    p.card.insert()
    try:
        connection = p.reader.wait_for_card(timeout=10)
        assert connection is not None, "the reader did not see the card"
        if pull:
            p.card.pull_during_next_command()
        with connection:
            return (kiosk or p.kiosk).serve_card(connection, SLOT)
    finally:
        p.card.remove()
        p.reader.wait_for_removal(timeout=10)


def test_a_tap_dispenses_and_charges_one_unit(platform: Platform) -> None:
    result = tap(platform)
    assert result.outcome is TapOutcome.DISPENSED, result.message
    assert result.remaining == {"condoms": platform.seed.limit - 1, "lubricant": LUBE_RULE_UNITS}
    assert result.stock_left == 9
    assert platform.kiosk.journal.get(result.txn_id or 0).state is TxnState.CAPTURED


def test_card_pulled_mid_command_is_refused_and_nothing_is_charged(platform: Platform) -> None:
    pulled = tap(platform, pull=True)
    assert pulled.outcome is TapOutcome.CARD_REMOVED
    assert "taken away too soon" in pulled.message
    assert platform.kiosk.journal.open_transactions() == []
    after = tap(platform)
    assert after.outcome is TapOutcome.DISPENSED
    assert after.remaining == {
        "condoms": platform.seed.limit - 1,
        "lubricant": LUBE_RULE_UNITS,
    }  # only this one counted


def test_card_from_another_ca_is_refused_before_the_server_is_asked(
    platform: Platform, tmp_path: Path
) -> None:
    other_ca = CardCA.create(tmp_path / "other-ca")
    strict = Kiosk(
        kiosk_id=platform.kiosk.kiosk_id,
        journal=platform.kiosk.journal,
        server=platform.client,
        board=platform.board,
        ca_certificate_der=other_ca.certificate_der,
    )
    result = tap(platform, strict)
    assert result.outcome is TapOutcome.CARD_REJECTED
    assert "not accepted" in result.message
    assert result.txn_id is None  # no transaction was begun, the server never heard of it
    assert [s.name for s in result.steps] == ["read card", "card proves", "verify offline"]


def test_empty_slot_voids_and_keeps_the_allowance(tmp_path: Path, pcscd: object) -> None:
    with start_platform(tmp_path / "p", slots=f"{SLOT}=1,2=10") as p:
        first = tap(p)
        assert first.outcome is TapOutcome.DISPENSED
        assert first.stock_left == 0
        empty = tap(p)
        assert empty.outcome is TapOutcome.NOT_DISPENSED
        assert empty.reason == "empty"
        assert "Nothing was taken from your allowance" in empty.message
        assert p.kiosk.journal.get(empty.txn_id or 0).state is TxnState.VOIDED
        assert empty.remaining == {"condoms": p.seed.limit - 1, "lubricant": LUBE_RULE_UNITS}


class _ServerDiesAfterDispense:
    """The real board, but the server process is stopped the moment the item has fallen."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        result = self.platform.board.dispense(slot, txn_id)
        self.platform.server.stop()
        return result

    def __getattr__(self, name: str) -> object:
        return getattr(self.platform.board, name)


def test_server_gone_after_the_drop_is_captured_once_it_is_back(platform: Platform) -> None:
    kiosk = Kiosk(
        kiosk_id=platform.kiosk.kiosk_id,
        journal=platform.kiosk.journal,
        server=platform.client,
        board=_ServerDiesAfterDispense(platform),  # type: ignore[arg-type]
        ca_certificate_der=platform.ca.certificate_der,
    )
    result = tap(platform, kiosk)
    assert result.outcome is TapOutcome.DISPENSED  # the item fell: the resident has it
    txn = platform.kiosk.journal.get(result.txn_id or 0)
    assert txn.state is TxnState.DISPENSED  # known to have fallen, not yet charged
    assert platform.kiosk.recover() == []  # server still down: stays open, nothing lost
    port = int(platform.server_url.rsplit(":", 1)[1])
    server = start_server(platform.server_env, port)
    try:
        assert platform.kiosk.recover() == [(txn.id, TxnState.CAPTURED)]
        assert platform.kiosk.recover() == []
        after = tap(platform)
        assert after.outcome is TapOutcome.DISPENSED
        assert after.remaining == {
            "condoms": platform.seed.limit - 2,
            "lubricant": LUBE_RULE_UNITS,
        }  # both counted, once each
    finally:
        server.stop()


def test_power_cut_mid_dispense_is_never_charged(tmp_path: Path, pcscd: object) -> None:
    with start_platform(tmp_path / "p", board_args=["--power-cycle-next", "motor"]) as p:
        cut = tap(p)
        assert cut.outcome in (TapOutcome.NOT_DISPENSED, TapOutcome.UNSETTLED), cut.message
        p.kiosk.recover()
        assert p.kiosk.journal.get(cut.txn_id or 0).state is TxnState.VOIDED
        after = tap(p)
        assert after.outcome is TapOutcome.DISPENSED
        assert after.remaining == {"condoms": p.seed.limit - 1, "lubricant": LUBE_RULE_UNITS}
