"""Area scopes on the server (issue 11): a rule's area is part of the rule, an administrator of a
town makes rules for their town only, and nobody reads a report beyond their area. Both holes
the issue names (a village administrator's city-wide rule answered 201; the city's report read
by a village administrator) are closed here."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import select

from server import services
from server.services import choices
from server.services.dispensing import remaining_for_resident
from server.store.models import Region, RegionKind, Role
from tests.fixtures.database import ServerWorld, TestKiosk
from tests.staff_browser import StaffBrowser, make_staff
from tests.test_server_openapi import check_answer

TOWN = "C01-T01"
VILLAGE = "C01-T01-V001"
OTHER_TOWN = "C01-T02"
TIGHT = {"category": "condoms", "period_kind": "calendar_month", "units": 1}


def bearer(w: ServerWorld, name: str, role: Role, region: str | None) -> dict[str, str]:
    with w.sessionmaker() as session:
        token = services.create_user(session, w.ctx, name, role, region_code=region)
    return {"Authorization": f"Bearer {token}"}


def kiosk_in(w: ServerWorld, kiosk_id: str, region: str) -> TestKiosk:
    kiosk = TestKiosk(kiosk_id)
    with w.sessionmaker() as session:
        services.add_kiosk(
            session,
            w.ctx,
            kiosk.id,
            kiosk.public_key_b64,
            {1: w.seed.product_sku},
            region_code=region,
        )
    return kiosk


def village_under(w: ServerWorld, parent: str, code_: str) -> str:
    with w.sessionmaker() as session:
        parent_id = session.scalar(select(Region.id).where(Region.code == parent))
        session.add(Region(code=code_, name=code_, kind=RegionKind.VILLAGE, parent_id=parent_id))
        session.commit()
    return code_


def code(response: Any) -> tuple[int, str]:
    return response.status_code, response.get_json().get("code", "")


def test_a_village_administrator_cannot_make_a_city_wide_rule(server_world: ServerWorld) -> None:
    w = server_world
    village_admin = bearer(w, "admin-village", Role.ADMINISTRATOR, VILLAGE)
    refused = w.client.post("/api/v1/rules", json=TIGHT, headers=village_admin)
    assert code(refused) == (403, "out_of_scope")  # was 201 before the area was part of a rule
    elsewhere = w.client.post(
        "/api/v1/rules", json={**TIGHT, "area": OTHER_TOWN}, headers=village_admin
    )
    assert code(elsewhere) == (403, "out_of_scope")
    above = w.client.post("/api/v1/rules", json={**TIGHT, "area": TOWN}, headers=village_admin)
    assert code(above) == (403, "out_of_scope")  # their town is above their village
    own = w.client.post("/api/v1/rules", json={**TIGHT, "area": VILLAGE}, headers=village_admin)
    check_answer("POST", "/api/v1/rules", own)
    assert own.status_code == 201 and own.get_json()["area"] == VILLAGE
    city_admin = bearer(w, "admin-city", Role.ADMINISTRATOR, None)
    # The city's rule cannot be retired by the village's administrator; their own can.
    [city_rule] = [
        r
        for r in w.client.get("/api/v1/rules", headers=city_admin).get_json()["items"]
        if r["area"] is None
    ]
    retire = w.client.post(
        f"/api/v1/rules/{city_rule['rule_id']}/deactivate", headers=village_admin
    )
    assert code(retire) == (403, "out_of_scope")
    mine = w.client.post(
        f"/api/v1/rules/{own.get_json()['rule_id']}/deactivate", headers=village_admin
    )
    assert mine.status_code == 200 and mine.get_json()["active"] is False


def test_a_town_rule_applies_at_the_towns_kiosks_only(server_world: ServerWorld) -> None:
    w = server_world
    town_admin = bearer(w, "admin-town", Role.ADMINISTRATOR, TOWN)
    made = w.client.post("/api/v1/rules", json={**TIGHT, "area": TOWN}, headers=town_admin)
    assert made.status_code == 201, made.get_data(as_text=True)
    in_town = kiosk_in(w, "K-TOWN-1", VILLAGE)
    other_town = kiosk_in(w, "K-HILL-1", OTHER_TOWN)

    first = w.authorize(kiosk=in_town).get_json()
    assert first["approved"] is True and first["remaining"] == {"condoms": 0}  # 1 a month here
    assert w.capture(first["authorization_id"], kiosk=in_town).status_code == 200
    assert w.authorize(kiosk=in_town).get_json()["reason"] == "limit_reached"
    # In the other town only the city's rule (3 a month) applies.
    there = w.authorize(kiosk=other_town).get_json()
    assert there["approved"] is True and there["remaining"] == {"condoms": 1}

    listed = w.client.get("/api/v1/rules", headers=town_admin).get_json()["items"]
    assert sorted((r["area"] or "city") for r in listed) == ["C01-T01", "city"]
    far_admin = bearer(w, "admin-hill", Role.ADMINISTRATOR, OTHER_TOWN)
    far_listed = w.client.get("/api/v1/rules", headers=far_admin).get_json()["items"]
    assert [r["area"] for r in far_listed] == [None]  # another town's rule is not theirs to see


def test_reports_count_only_the_readers_area(server_world: ServerWorld) -> None:
    w = server_world
    in_town = kiosk_in(w, "K-TOWN-2", VILLAGE)
    other_town = kiosk_in(w, "K-HILL-2", village_under(w, OTHER_TOWN, "C01-T02-V001"))
    cards = [w.card, *(w.issue_card(w.new_resident()) for _ in range(5))]
    for card in cards:
        for kiosk in (in_town, other_town):
            answer = w.authorize(card, kiosk=kiosk).get_json()
            assert answer["approved"] is True, answer
            w.capture(answer["authorization_id"], kiosk=kiosk)

    def towns(headers: dict[str, str]) -> set[str]:
        report = w.client.get("/api/v1/reports/monthly?year=2026", headers=headers)
        assert report.status_code == 200, report.get_data(as_text=True)
        return {row["town"] for row in report.get_json()["rows"] if row["dispenses"]}

    assert towns(bearer(w, "auditor-city", Role.AUDITOR, None)) == {TOWN, OTHER_TOWN}
    assert towns(bearer(w, "admin-village-r", Role.ADMINISTRATOR, VILLAGE)) == {TOWN}
    assert towns(bearer(w, "auditor-hill", Role.AUDITOR, OTHER_TOWN)) == {OTHER_TOWN}


def test_entitlements_follow_the_rules_where_the_person_lives_or_the_kiosk_stands(
    server_world: ServerWorld,
) -> None:
    """Away from a kiosk (what a person may have), the rules of the place they live now; at a
    kiosk (its /entitlements answer), that kiosk's area's rules, as authorize applies them."""
    w = server_world
    town_admin = bearer(w, "admin-town-e", Role.ADMINISTRATOR, TOWN)
    made = w.client.post("/api/v1/rules", json={**TIGHT, "area": TOWN}, headers=town_admin)
    assert made.status_code == 201, made.get_data(as_text=True)
    city_limit = w.seed.monthly_limit
    assert city_limit > TIGHT["units"]
    with w.sessionmaker() as session:
        other_town = session.scalar(select(Region.id).where(Region.code == OTHER_TOWN))
        village = session.scalar(select(Region.id).where(Region.code == VILLAGE))
        registered_here = w.seed.resident_id  # registered in the village, lives there
        migrant_in = services.enrol_resident(
            session,
            w.ctx,
            name="Migrant In",
            sex="F",
            birth_date=dt.date(1990, 1, 1),
            phone=None,
            id_number="MIGRANTIN0001",
            region_id=other_town,
            current_region_id=village,
        ).id
        moved_out = services.enrol_resident(
            session,
            w.ctx,
            name="Moved Out",
            sex="F",
            birth_date=dt.date(1990, 1, 1),
            phone=None,
            id_number="MOVEDOUT00001",
            region_id=village,
            current_region_id=other_town,
        ).id
        session.commit()
        assert remaining_for_resident(session, w.ctx, registered_here) == {"condoms": 1}
        assert remaining_for_resident(session, w.ctx, migrant_in) == {"condoms": 1}
        assert remaining_for_resident(session, w.ctx, moved_out) == {"condoms": city_limit}

    in_town = kiosk_in(w, "K-TOWN-E", VILLAGE)
    elsewhere = kiosk_in(w, "K-HILL-E", OTHER_TOWN)
    for kiosk, left in [(in_town, 1), (elsewhere, city_limit)]:
        with w.sessionmaker() as session:
            answer = choices.entitlements(session, w.ctx, kiosk.id, kiosk.tap(w.card, w.clock))
            session.commit()
        assert answer["accepted"] is True, answer
        assert [(c["category"], c["left"]) for c in answer["categories"]] == [("condoms", left)]


def test_the_rules_page_offers_retire_only_where_the_administrator_may(
    server_world: ServerWorld,
) -> None:
    w = server_world
    town_admin = bearer(w, "admin-town-r", Role.ADMINISTRATOR, TOWN)
    town_rule = w.client.post("/api/v1/rules", json={**TIGHT, "area": TOWN}, headers=town_admin)
    assert town_rule.status_code == 201
    make_staff(w, "admin-village-p", Role.ADMINISTRATOR, VILLAGE, must_change=False)
    browser = StaffBrowser(w.app)
    browser.sign_in("admin-village-p")
    village_admin = bearer(w, "admin-village-q", Role.ADMINISTRATOR, VILLAGE)
    village_rule = w.client.post(
        "/api/v1/rules", json={**TIGHT, "area": VILLAGE}, headers=village_admin
    )
    assert village_rule.status_code == 201, village_rule.get_data(as_text=True)

    def buttons() -> dict[str, bool]:
        page = browser.get("/admin/rules").get_data(as_text=True)
        found = {}
        for row in re.findall(r'<tr data-rule="\d+" data-area="([^"]*)">(.*?)</tr>', page, re.S):
            found[row[0] or "city"] = 'value="deactivate"' in row[1]
        return found

    assert buttons() == {"city": False, TOWN: False, VILLAGE: True}
    # The server still refuses what the page no longer offers.
    refused = browser.post(
        "/admin/rules",
        {"action": "deactivate", "rule_id": str(town_rule.get_json()["rule_id"])},
    )
    assert refused.status_code == 403
    assert buttons() == {"city": False, TOWN: False, VILLAGE: True}
    city_admin = StaffBrowser(w.app, address="10.0.0.9")
    make_staff(w, "admin-city-p", Role.ADMINISTRATOR, None, must_change=False)
    city_admin.sign_in("admin-city-p")
    page = city_admin.get("/admin/rules").get_data(as_text=True)
    assert page.count('value="deactivate"') == 3
