"""Stock events from kiosk maintenance (server/services/stock.py), on SQLite and PostgreSQL: a
staff card's proof is checked (CA, staff policy, signature, age), the event kept with who, when,
slot, product and counts, and the slot's stock at the server follows."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest
from sqlalchemy import select

from server.errors import ApiError
from server.services import stock
from server.store.models import AuditEntry, KioskSlot, StockEvent
from tests.fixtures.database import CityCA, ServerWorld, TestCard
from tests.fixtures.staff_card import StaffCard


def event(
    world: ServerWorld, card: TestCard, *, age_s: float = 60, **fields: Any
) -> dict[str, Any]:
    proof = card.prove(
        world.kiosk.id, 10_000 + secrets.randbelow(1000), int((world.clock() - age_s) * 1000)
    )
    return {
        "kind": "refill",
        "slot": 1,
        "count_before": 2,
        "count_after": 50,
        "staff_proof": proof,
        "staff_certificate": base64.b64encode(card.certificate_der).decode(),
        **fields,
    }


def record(world: ServerWorld, doc: dict[str, Any]) -> dict[str, Any]:
    with world.sessionmaker() as session:
        answer = stock.record_stock_event(session, world.ctx, world.kiosk.id, doc)
        session.commit()
    return answer


def refused(world: ServerWorld, doc: dict[str, Any]) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        record(world, doc)
    return caught.value.status, caught.value.code


def test_a_refill_by_a_staff_card_is_kept_and_the_stock_follows(server_world: ServerWorld) -> None:
    w = server_world
    staff = StaffCard(w.ca)
    answer = record(w, event(w, staff))
    assert answer["status"] == "recorded" and answer["stock"] == 50
    with w.sessionmaker() as session:
        [row] = session.scalars(select(StockEvent)).all()
        assert (row.kind, row.slot, row.count_before, row.count_after) == ("refill", 1, 2, 50)
        assert row.staff_card_guid == staff.guid.hex() and row.product_id is not None
        assert session.get(KioskSlot, (w.kiosk.id, 1)).stock == 50  # type: ignore[union-attr]
        actions = session.scalars(select(AuditEntry.action)).all()
    assert "stock.refill" in actions
    tested = record(w, event(w, staff, kind="test_dispense", count_before=50, count_after=49))
    assert tested["stock"] == 49


def test_only_a_fresh_staff_card_of_the_city_may_record(server_world: ServerWorld) -> None:
    w = server_world
    assert refused(w, event(w, w.card)) == (403, "not_staff_card")  # a resident's card
    assert refused(w, event(w, StaffCard(CityCA()))) == (422, "proof_invalid")  # another CA
    assert refused(w, event(w, StaffCard(w.ca), age_s=3 * 3600)) == (422, "proof_stale")
    assert refused(w, event(w, StaffCard(w.ca), slot=9)) == (422, "slot_unknown")
    assert refused(w, event(w, StaffCard(w.ca), kind="theft")) == (400, "field_invalid")
    with w.sessionmaker() as session:
        assert session.scalars(select(StockEvent)).all() == []


def test_a_queued_event_is_judged_by_its_own_time_and_sets_no_stale_stock(
    server_world: ServerWorld,
) -> None:
    """A kiosk's outbox sends an event when the server is back, hours after the tap: the tap's
    age counts from the event's own time (at_ms), and the late count does not overwrite the
    stock the heartbeats have reported since."""
    w = server_world
    staff = StaffCard(w.ca)
    stock_before = 7  # as the heartbeats since the refill have said
    with w.sessionmaker() as session:
        session.get(KioskSlot, (w.kiosk.id, 1)).stock = stock_before  # type: ignore[union-attr]
        session.commit()
    tap_age_s = 5 * 3600.0
    done_ms = int((w.clock() - tap_age_s + 600) * 1000)  # ten minutes into the visit
    answer = record(w, event(w, staff, age_s=tap_age_s, at_ms=done_ms, count_after=40))
    assert answer["status"] == "recorded" and answer["stock"] == stock_before
    with w.sessionmaker() as session:
        [row] = session.scalars(select(StockEvent)).all()
        assert row.count_after == 40
        assert row.at.timestamp() == pytest.approx(w.clock() - tap_age_s, abs=1)  # the tap
        assert session.get(KioskSlot, (w.kiosk.id, 1)).stock == stock_before  # type: ignore[union-attr]
    # Without at_ms the event is taken as happening now: the same tap is too old for it.
    assert refused(w, event(w, staff, age_s=tap_age_s)) == (422, "proof_stale")
    # An event claimed three hours after its tap was not part of that visit.
    late_ms = int((w.clock() - tap_age_s + 3 * 3600) * 1000)
    assert refused(w, event(w, staff, age_s=tap_age_s, at_ms=late_ms)) == (422, "proof_stale")
    # An event in the future, or a tap older than the idempotency records' retention allows.
    future_ms = int((w.clock() + 3600) * 1000)
    assert refused(w, event(w, staff, age_s=60, at_ms=future_ms)) == (422, "at_in_future")
    old_s = stock.QUEUED_MAX_AGE.total_seconds() + 3600
    old_ms = int((w.clock() - old_s + 60) * 1000)
    assert refused(w, event(w, staff, age_s=old_s, at_ms=old_ms)) == (422, "proof_stale")
    assert stock.QUEUED_MAX_AGE < stock.IDEMPOTENCY_RETENTION
    with w.sessionmaker() as session:
        assert len(session.scalars(select(StockEvent)).all()) == 1
