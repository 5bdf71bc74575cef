"""Technicians' pages in process (SQLite and PostgreSQL): a resident's card revoked from the
resident's page is refused at the kiosk; another town's technician can neither see the person
nor revoke the card; every look at the person is an audited read."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from server.services import kiosks, people, stations
from server.store.models import (
    AuditEntry,
    Card,
    CardStatus,
    Couple,
    Kiosk,
    Resident,
    Role,
    StockEvent,
)
from tests.fixtures.database import ServerWorld, TestKiosk
from tests.staff_browser import StaffBrowser, make_staff
from tests.test_station_page import random_public_key

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


def test_a_new_exam_programme_is_data_and_the_city_admin_adds_it(server_world: ServerWorld) -> None:
    w = server_world
    make_staff(w, "admin-city", Role.ADMINISTRATOR, None, must_change=False)
    make_staff(w, "admin-t", Role.ADMINISTRATOR, TOWN, must_change=False)
    town = StaffBrowser(w.app, address="10.0.0.4")
    town.sign_in("admin-t")
    refused = town.post(
        "/admin/catalogue",
        {
            "action": "programme",
            "programme-code": "hpv",
            "programme-name": "HPV",
            "programme-sexes": "F",
            "programme-interval_days": "1095",
        },
        csrf_from="/admin/catalogue",
    )
    assert refused.status_code == 403
    city = StaffBrowser(w.app)
    city.sign_in("admin-city")
    bad = city.post(
        "/admin/catalogue",
        {
            "action": "programme",
            "programme-code": "hpv",
            "programme-name": "HPV screening",
            "programme-sexes": "F",
        },
        csrf_from="/admin/catalogue",
    )
    assert bad.status_code == 400 and 'id="programme-interval_days-error"' in city.last_page
    made = city.post(
        "/admin/catalogue",
        {
            "action": "programme",
            "programme-code": "hpv",
            "programme-name": "HPV screening",
            "programme-sexes": "F",
            "programme-min_age": "25",
            "programme-max_age": "64",
            "programme-interval_days": "1095",
        },
        csrf_from="/admin/catalogue",
    )
    assert made.status_code == 302, city.last_page
    # The station desk's eligibility lists it at once: no code was needed.
    with w.sessionmaker() as session:
        resident = session.get(Resident, w.seed.resident_id)
        assert resident is not None
        codes = [
            p.code for _i, p, _d in stations._decisions(session, w.ctx, resident, w.ctx.today())
        ]
    assert "hpv" in codes


def test_a_technician_registers_a_kiosk_in_the_area_and_sees_its_refills(
    server_world: ServerWorld,
) -> None:
    w = server_world
    make_staff(w, "tech-dev", Role.TECHNICIAN, TOWN, must_change=False)
    browser = StaffBrowser(w.app)
    browser.sign_in("tech-dev")
    form = {"kind": "kiosk", "device_id": "K-NEW-1", "region": "C01-T01-V001", "slots": "1=X"}
    bad = browser.post("/technician/devices", {**form, "public_key": "not-a-key"})
    assert bad.status_code == 400 and 'id="public_key-error"' in browser.last_page
    far = browser.post(
        "/technician/devices", {**form, "public_key": random_public_key(), "region": OTHER_TOWN}
    )
    assert far.status_code == 400 and 'id="region-error"' in browser.last_page
    made = browser.post(
        "/technician/devices",
        {**form, "public_key": random_public_key(), "slots": f"1={w.seed.product_sku}"},
    )
    assert made.status_code == 302, browser.last_page
    # The fixture's kiosk K-0001 stands at the city: re-keying it is not this technician's.
    taken = browser.post(
        "/technician/devices", {**form, "device_id": "K-0001", "public_key": random_public_key()}
    )
    assert taken.status_code == 400 and 'id="device_id-error"' in browser.last_page
    with w.sessionmaker() as session:
        kiosk = session.get(Kiosk, "K-NEW-1")
        assert kiosk is not None and kiosk.enabled
        session.add(
            StockEvent(
                kiosk_id="K-NEW-1",
                slot=1,
                product_id=None,
                kind="refill",
                count_before=2,
                count_after=40,
                staff_card_guid="ab" * 16,
                at=w.ctx.now() - dt.timedelta(hours=1),
                recorded_at=w.ctx.now(),
            )
        )
        session.commit()
    page = browser.get("/technician/devices/K-NEW-1/refills")
    assert page.status_code == 200 and "40" in browser.last_page and "abababab" in browser.last_page
    assert browser.get("/technician/devices/K-0001/refills").status_code == 403


def test_a_couple_is_recorded_from_the_residents_page(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        partner = people.enrol_resident(
            session,
            w.ctx,
            name="Wang Gang",
            sex="M",
            birth_date=dt.date(1990, 2, 3),
            phone=None,
            id_number="PARTNER0000042",
            region_id=w.seed.village_region_id,
        )
        session.commit()
    make_staff(w, "tech-c", Role.TECHNICIAN, TOWN, must_change=False)
    browser = StaffBrowser(w.app)
    browser.sign_in("tech-c")
    resident = w.seed.resident_id
    unknown = browser.post(
        f"/technician/residents/{resident}/couple",
        {"partner_id_number": "NOBODY99999"},
        csrf_from=f"/technician/residents/{resident}",
    )
    assert unknown.status_code == 400 and 'id="partner_id_number-error"' in browser.last_page
    done = browser.post(
        f"/technician/residents/{resident}/couple",
        {"partner_id_number": "partner 0000 042", "planning_since": "2026-10-01"},
        csrf_from=f"/technician/residents/{resident}",
    )
    assert done.status_code == 302, browser.last_page
    page = browser.get(f"/technician/residents/{resident}").get_data(as_text=True)
    assert "*" * 14 + "0042" in page and "PARTNER0000042" not in page
    with w.sessionmaker() as session:
        assert partner.id in {
            c for (c,) in session.execute(select(Couple.partner_b_id).where(Couple.active))
        }


def test_an_administrator_disables_and_enables_a_kiosk_of_the_area(
    server_world: ServerWorld,
) -> None:
    w = server_world
    town_kiosk = kiosk_in(w, "K-TOWN-9", "C01-T01-V001")
    make_staff(w, "admin-dev", Role.ADMINISTRATOR, TOWN, must_change=False)
    browser = StaffBrowser(w.app)
    browser.sign_in("admin-dev")
    listing = browser.get("/technician/devices").get_data(as_text=True)
    assert 'data-device="K-TOWN-9"' in listing and 'data-device="K-0001"' not in listing
    browser.post("/technician/devices/K-TOWN-9/toggle", {}, csrf_from="/technician/devices")
    with w.sessionmaker() as session:
        assert session.get(Kiosk, "K-TOWN-9").enabled is False  # type: ignore[union-attr]
    refused = w.authorize(kiosk=town_kiosk)
    assert refused.status_code in (401, 403)  # a disabled kiosk's requests are refused
    browser.post("/technician/devices/K-0001/toggle", {}, csrf_from="/technician/devices")
    with w.sessionmaker() as session:
        assert session.get(Kiosk, "K-0001").enabled is True  # type: ignore[union-attr]
    browser.post("/technician/devices/K-TOWN-9/toggle", {}, csrf_from="/technician/devices")
    assert w.authorize(kiosk=town_kiosk).get_json()["approved"] is True


def kiosk_in(w: ServerWorld, kiosk_id: str, region: str) -> TestKiosk:
    kiosk = TestKiosk(kiosk_id)
    with w.sessionmaker() as session:
        kiosks.add_kiosk(
            session,
            w.ctx,
            kiosk.id,
            kiosk.public_key_b64,
            {1: w.seed.product_sku},
            region_code=region,
        )
    return kiosk
