"""Stock events from kiosk maintenance (server/services/stock.py), on SQLite and PostgreSQL: a
staff card's proof is checked (CA, staff policy, signature, age), the event kept with who, when,
slot, product and counts, and the slot's stock at the server follows."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from cardsvc.verify import STAFF_CARD_POLICY
from server.errors import ApiError
from server.services import stock
from server.store.models import AuditEntry, KioskSlot, StockEvent
from tests.fixtures.database import CityCA, ServerWorld, TestCard


class StaffCard(TestCard):
    """A card whose certificate carries the staff policy, as cardsvc.ca issues staff cards."""

    def __init__(self, ca: CityCA) -> None:
        super().__init__(ca)
        guid = uuid.UUID(bytes=self.guid)
        self.certificate_der = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(guid))]))
            .issuer_name(ca.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2036, 1, 1, tzinfo=dt.UTC))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:uuid:{guid}")]),
                critical=False,
            )
            .add_extension(
                x509.CertificatePolicies([x509.PolicyInformation(STAFF_CARD_POLICY, None)]),
                critical=False,
            )
            .sign(ca.key, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )


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
