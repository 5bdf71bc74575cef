"""Technicians' pages in process (SQLite and PostgreSQL): a resident's card revoked from the
resident's page is refused at the kiosk; another town's technician can neither see the person
nor revoke the card; every look at the person is an audited read."""

from __future__ import annotations

from sqlalchemy import select

from server.store.models import AuditEntry, Card, CardStatus, Role
from tests.fixtures.database import ServerWorld
from tests.staff_browser import StaffBrowser, make_staff

TOWN = "C01-T01"
OTHER_TOWN = "C01-T02"


def test_a_lost_card_is_revoked_from_the_residents_page(server_world: ServerWorld) -> None:
    w = server_world
    guid = w.card.guid.hex()
    resident = w.seed.resident_id
    far = make_staff(w, "tech-far", Role.TECHNICIAN, OTHER_TOWN, must_change=False)
    outsider = StaffBrowser(w.app, address="10.0.0.3")
    outsider.sign_in("tech-far")
    assert outsider.get(f"/technician/residents/{resident}").status_code == 404
    refused = outsider.post(
        f"/technician/residents/{resident}/cards/{guid}/revoke",
        {"reason": "lost"},
        csrf_from="/account",
    )
    assert refused.status_code == 302
    with w.sessionmaker() as session:
        assert session.scalar(select(Card.status).where(Card.guid == guid)) is CardStatus.ACTIVE

    tech = make_staff(w, "tech-near", Role.TECHNICIAN, TOWN, must_change=False)
    browser = StaffBrowser(w.app)
    browser.sign_in("tech-near")
    page = browser.get(f"/technician/residents/{resident}").get_data(as_text=True)
    assert guid in page and "**************" in page
    done = browser.post(
        f"/technician/residents/{resident}/cards/{guid}/revoke",
        {"reason": "lost"},
        csrf_from=f"/technician/residents/{resident}",
    )
    assert done.status_code == 302
    with w.sessionmaker() as session:
        assert session.scalar(select(Card.status).where(Card.guid == guid)) is CardStatus.REVOKED
        actions = [
            (e.actor, e.action)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
            if e.actor in (f"user:{tech}", f"user:{far}")
        ]
    assert (f"user:{tech}", "resident.read") in actions
    assert (f"user:{tech}", "card.revoke") in actions
    assert (f"user:{far}", "card.revoke") not in actions
    assert w.authorize().get_json()["reason"] == "card_revoked"
