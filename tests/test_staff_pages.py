"""The staff pages in Debian's Chromium against the real server (its own process, real HTTP):
sign in and out, lockout, a disabled user's session ending, CSRF from another site, a technician
enrolling and finding a resident with bad input refused next to its field, an auditor finding a
tampered audit row, a town administrator's scope; in Simplified Chinese and English, axe-core on
every page, screenshots kept (tests/pages.py).

One server and one database for the module; each test signs in its own users in a fresh
browser profile.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from onecard.platform import start_server
from onecard.procs import free_port
from server import services
from server.app import context_of, create_app
from server.services import seed_demo, staff_auth
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import Region, Role
from tests.pages import assert_accessible, chromium, page_in, shot
from tests.test_station_page import random_public_key

FIELD_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
PASSWORD = "correct horse battery"
TOWN = "C01-T01"
VILLAGE = "C01-T01-V001"
OTHER_TOWN = "C01-T02"
STATION = "ST-DESK-01"
APPOINTEE = "APPT00000000017"


@dataclass
class Stage:
    url: str
    database: Path
    shots: Path

    def shot(self, page: Any, name: str) -> None:
        shot(page, self.shots, name)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("staff-pages")
    database = base / "onecard.db"
    env = {
        "ONECARD_DATABASE_URL": f"sqlite:///{database}",
        "ONECARD_DATA_DIR": str(base / "data"),
        "ONECARD_FIELD_KEY": FIELD_KEY,
        "ONECARD_COOKIE_SECURE": "0",  # plain HTTP on 127.0.0.1
    }
    upgrade(env["ONECARD_DATABASE_URL"])
    app = create_app(env)
    try:
        with db.bound(app).sessionmaker() as session:
            ctx = context_of(app)
            seed_demo(session, ctx)
            for name, role, region in [
                ("admin-city", Role.ADMINISTRATOR, None),
                ("admin-town", Role.ADMINISTRATOR, TOWN),
                ("tech-town", Role.TECHNICIAN, TOWN),
                ("nurse-town", Role.STATION_STAFF, TOWN),
                ("auditor-city", Role.AUDITOR, None),
                ("victim", Role.TECHNICIAN, TOWN),
                ("nurse-leaving", Role.STATION_STAFF, TOWN),
            ]:
                staff_auth.bootstrap_user(
                    session,
                    ctx,
                    name=name,
                    role=role,
                    region_code=region,
                    password=PASSWORD,
                    must_change=False,
                )
            session.commit()
            services.enrol_resident(
                session,
                ctx,
                name="Zhang Hua",
                sex="F",
                birth_date=dt.date(1992, 3, 4),
                phone=None,
                id_number=APPOINTEE,
                region_id=session.scalar(select(Region.id).where(Region.code == VILLAGE)),
            )
            session.commit()
            services.add_station(session, ctx, STATION, random_public_key(), region_code=VILLAGE)
    finally:
        db.dispose(app)
    port = free_port()
    server = start_server({**os.environ, **env}, port)
    try:
        yield Stage(f"http://127.0.0.1:{port}", database, base / "screenshots")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def sign_in(page: Any, stage: Stage, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{stage.url}/sign-in")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#sign-in")


def rows(stage: Stage, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(stage.database) as connection:
        return connection.execute(sql, args).fetchall()


WORDS = {
    "zh-CN": {
        "sign_in": "登录",
        "wrong": "用户名或密码不正确",
        "locked": "失败次数过多",
        "signed_out": "您已退出登录",
        "users": "工作人员",
    },
    "en-US": {
        "sign_in": "Sign in",
        "wrong": "The user name or the password is wrong",
        "locked": "Too many failed attempts",
        "signed_out": "You have signed out",
        "users": "Staff users",
    },
}


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_sign_in_wrong_password_lockout_and_sign_out(
    stage: Stage, browser: Any, locale: str
) -> None:
    words = WORDS[locale]
    with page_in(browser, locale) as page:
        page.goto(f"{stage.url}/sign-in")
        assert page.evaluate("document.documentElement.lang") == (
            "zh-CN" if locale == "zh-CN" else "en"
        )
        assert page.inner_text("h1") == words["sign_in"]
        assert_accessible(page)
        stage.shot(page, f"staff-sign-in-{locale}")

        sign_in(page, stage, "admin-city", "wrong password")
        assert words["wrong"] in page.inner_text(".error-summary")
        assert_accessible(page)

        sign_in(page, stage, "admin-city")
        assert page.url.endswith("/admin/users")
        assert page.inner_text("h1") == words["users"]
        assert "admin-town" in page.inner_text("table")
        assert_accessible(page)
        stage.shot(page, f"staff-admin-users-{locale}")
        cookie = next(c for c in page.context.cookies() if c["name"] == "onecard_staff")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        page.click("text=" + ("退出登录" if locale == "zh-CN" else "Sign out"))
        assert words["signed_out"] in page.inner_text(".flashes")
        page.goto(f"{stage.url}/admin/users")
        assert "/sign-in" in page.url  # the session is gone on the server too
    assert page.script_errors == []


def test_the_language_switch_is_one_click(stage: Stage, browser: Any) -> None:
    with page_in(browser, "zh-CN") as page:
        page.goto(f"{stage.url}/sign-in")
        assert page.inner_text("h1") == "登录"
        page.click("button[value=en]")
        assert page.inner_text("h1") == "Sign in"
        assert page.evaluate("document.documentElement.lang") == "en"
        page.click("button[value=zh_CN]")
        assert page.inner_text("h1") == "登录"


def test_repeated_failures_lock_the_sign_in_for_a_while(stage: Stage, browser: Any) -> None:
    with page_in(browser, "en-US") as page:
        for _ in range(staff_auth.PAIR_FREE_FAILURES):
            sign_in(page, stage, "victim", "guess")
        sign_in(page, stage, "victim")  # the right password, but locked for now
        assert "Too many failed attempts. Try again after" in page.inner_text(".error-summary")
        assert_accessible(page)
        stage.shot(page, "staff-locked")
    actions = [
        a for (a,) in rows(stage, "SELECT action FROM audit_log WHERE action LIKE 'staff.sign_in%'")
    ]
    assert "staff.sign_in.locked" in actions and actions.count("staff.sign_in.failed") >= 5


def test_a_disabled_users_session_ends_at_once(stage: Stage, browser: Any) -> None:
    with page_in(browser, "en-US") as nurse, page_in(browser, "en-US") as admin:
        sign_in(nurse, stage, "nurse-leaving")
        nurse.goto(f"{stage.url}/account")
        assert "nurse-leaving" in nurse.inner_text("dl")
        sign_in(admin, stage, "admin-city")
        admin.click("a:text-is('nurse-leaving')")
        admin.click("#disable-user")
        assert "User disabled" in admin.inner_text(".flashes")
        assert_accessible(admin)
        stage.shot(admin, "staff-user-disabled")
        nurse.reload()
        assert "/sign-in" in nurse.url
        sign_in(nurse, stage, "nurse-leaving")
        assert "wrong" in nurse.inner_text(".error-summary")


def test_a_form_posted_from_another_site_is_refused(stage: Stage, browser: Any) -> None:
    """A page elsewhere submits a form to the server in the signed-in administrator's browser:
    the SameSite=Strict cookie does not go with it and there is no CSRF token; nothing is made."""
    evil = (
        "<!doctype html><title>prize</title><form id=f method=post "
        f"action='{stage.url}/admin/users/new'>"
        "<input name=name value=mallory><input name=role value=administrator>"
        "<input name=region value=''><input name=password value=0123456789abc></form>"
    )
    with page_in(browser, "en-US") as page:
        sign_in(page, stage, "admin-city")
        page.route(
            "http://evil.example/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body=evil),
        )
        page.goto("http://evil.example/prize")
        with page.expect_navigation(url=f"{stage.url}/**"):
            page.eval_on_selector("#f", "form => form.submit()")
        assert page.url.startswith(stage.url)
        assert "/sign-in" in page.url or "did not come from this site" in page.content()
    assert rows(stage, "SELECT id FROM staff_users WHERE name = 'mallory'") == []


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_technician_enrols_and_finds_a_resident(stage: Stage, browser: Any, locale: str) -> None:
    suffix = "1" if locale == "zh-CN" else "2"
    id_number = f"11010119900101{suffix}23X"
    before = rows(stage, "SELECT count(*) FROM residents")[0][0]
    with page_in(browser, locale) as page:
        sign_in(page, stage, "tech-town")
        assert "/sign-in" not in page.url, page.inner_text("main")
        page.goto(f"{stage.url}/technician/enrol")
        assert_accessible(page)
        # Bad input: a message next to each field, nothing written, the ID number not echoed.
        page.fill("#name", "Li Mei")
        page.fill("#id_number", "12")
        page.fill("#region", VILLAGE)
        page.click("#enrol-submit")
        assert page.locator("#id_number-error").is_visible()
        assert page.locator("#birth_date-error").is_visible()
        assert page.locator("#sex-error").is_visible()
        assert page.input_value("#id_number") == ""
        assert rows(stage, "SELECT count(*) FROM residents")[0][0] == before
        assert_accessible(page)
        stage.shot(page, f"staff-enrol-errors-{locale}")

        page.check("input[name=sex][value=F]")
        page.fill("#birth_date", "1990-01-01")
        page.fill("#id_number", id_number)
        page.fill("#phone", "139 0000 000" + suffix)
        page.fill("#current_region", OTHER_TOWN)
        page.click("#enrol-submit")
        masked = "*" * 14 + id_number[-4:]
        assert masked in page.inner_text("h1")
        assert id_number not in page.content()
        assert_accessible(page)
        stage.shot(page, f"staff-resident-{locale}")

        # The same ID number again (any spacing) is refused next to the field.
        page.goto(f"{stage.url}/technician/enrol")
        page.fill("#name", "Li Mei again")
        page.check("input[name=sex][value=F]")
        page.fill("#birth_date", "1990-01-01")
        page.fill("#id_number", id_number[:6] + " " + id_number[6:])
        page.fill("#region", VILLAGE)
        page.click("#enrol-submit")
        assert page.locator("#id_number-error").is_visible()
        assert rows(stage, "SELECT count(*) FROM residents")[0][0] == before + 1

        page.goto(f"{stage.url}/technician/residents?phone=1390000000{suffix}")
        found = page.locator("tr[data-resident]")
        assert found.count() == 1 and masked in found.inner_text()
        assert "Li Mei" in found.inner_text()
        assert_accessible(page)
        stage.shot(page, f"staff-find-{locale}")
    reads = rows(stage, "SELECT count(*) FROM audit_log WHERE action = 'resident.read'")[0][0]
    assert reads >= 2  # the resident page and the search result, each audited


def test_a_town_technician_does_not_find_another_towns_resident(stage: Stage, browser: Any) -> None:
    with page_in(browser, "en-US") as page:
        sign_in(page, stage, "admin-city")
        page.goto(f"{stage.url}/technician/enrol")
        page.fill("#name", "Far Away")
        page.check("input[name=sex][value=M]")
        page.fill("#birth_date", "1985-05-05")
        page.fill("#id_number", "FAR0000000001")
        page.fill("#region", OTHER_TOWN)
        page.click("#enrol-submit")
        assert "0001" in page.inner_text("h1")
    with page_in(browser, "en-US") as page:
        sign_in(page, stage, "tech-town")
        page.goto(f"{stage.url}/technician/residents?id_number=FAR0000000001")
        assert page.locator("tr[data-resident]").count() == 0


def test_an_auditor_sees_a_tampered_row_detected(stage: Stage, browser: Any) -> None:
    with page_in(browser, "zh-CN") as page:
        sign_in(page, stage, "auditor-city")
        assert page.url.endswith("/audit")
        page.click("#verify-chain")
        assert page.get_attribute("#chain-result", "data-intact") == "true"
        assert_accessible(page)
        stage.shot(page, "staff-audit-intact-zh-CN")

        # Someone with database access rewrites an old entry (the table's triggers stop an
        # UPDATE, so they drop them first).
        [(victim,)] = rows(stage, "SELECT min(id) + 2 FROM audit_log")
        with sqlite3.connect(stage.database) as connection:
            connection.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
            connection.execute("UPDATE audit_log SET actor = 'user:999' WHERE id = ?", (victim,))
        page.click("#verify-chain")
        assert page.get_attribute("#chain-result", "data-intact") == "false"
        assert page.get_attribute("#chain-result", "data-broken-at") == str(victim)
        assert f"第 {victim} 条" in page.inner_text("#chain-result")
        assert_accessible(page)
        stage.shot(page, "staff-audit-broken-zh-CN")

        page.goto(f"{stage.url}/audit?action=staff.sign_in")
        entries = page.locator("tr[data-entry]")
        assert entries.count() >= 1
        assert all("staff.sign_in" in t for t in entries.all_inner_texts())
        page.goto(f"{stage.url}/technician/enrol")
        assert page.locator("[data-status='403']").count() == 1  # not an auditor's page


def test_a_nurse_signs_in_with_a_password_and_the_desk_opens(stage: Stage, browser: Any) -> None:
    """The station desk page under the new sign-in: no token to paste; the desk's calls carry
    the session cookie and the page's CSRF token."""
    with page_in(browser, "zh-CN") as page:
        page.goto(f"{stage.url}/sign-in?next=/station?cardsvc=http://127.0.0.1:{free_port()}")
        page.fill("#name", "nurse-town")
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        page.wait_for_selector("body[data-view=desk]")
        assert "nurse-town" in page.inner_text("#who-user")
        assert STATION in page.inner_text("#who-station")
        page.wait_for_selector("body[data-service=down]")
        stage.shot(page, "staff-desk-signed-in-zh-CN")
        page.click("#sign-out")
        page.wait_for_url("**/sign-in")
        page.goto(f"{stage.url}/staff/v1/me")
        assert "token_missing" in page.content()  # the session ended on the server
    assert page.script_errors == []


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_nurse_books_and_cancels_an_appointment(stage: Stage, browser: Any, locale: str) -> None:
    today = dt.date.today()
    monday = today + dt.timedelta(days=7 - today.weekday() + (7 if locale == "en-US" else 0))
    before = rows(stage, "SELECT count(*) FROM appointments")[0][0]
    with page_in(browser, locale) as page:
        sign_in(page, stage, "nurse-town")
        page.goto(f"{stage.url}/nurse/appointments?station={STATION}&date={monday}")
        assert page.locator("tr[data-slot]").count() == 18  # 08:00-17:00, 30 minutes (data)
        assert_accessible(page)
        page.fill("#id_number", "NOBODY000001")
        page.select_option("#programme", "reproductive_health_check")
        page.click("#book-submit")
        assert page.locator("#id_number-error").is_visible()  # next to the field
        assert rows(stage, "SELECT count(*) FROM appointments")[0][0] == before
        stage.shot(page, f"staff-appointment-error-{locale}")

        page.fill("#id_number", APPOINTEE)
        page.select_option("#programme", "reproductive_health_check")
        page.select_option("#starts_at", index=2)  # 09:00
        page.click("#book-submit")
        booked = page.locator("tr[data-appointment]")
        assert booked.count() == 1
        assert "*" * 14 + APPOINTEE[-4:] in booked.inner_text() and "09:00" in booked.inner_text()
        assert APPOINTEE not in page.content()
        assert page.locator("tr[data-slot*='T09:00'] td.num").first.inner_text() == "1"
        assert_accessible(page)
        stage.shot(page, f"staff-appointment-booked-{locale}")

        booked.locator("select").select_option(index=3)  # another free time
        booked.locator("button.move").click()
        assert page.locator("tr[data-appointment]").count() == 1
        assert page.locator("tr[data-appointment] td").first.inner_text() == "10:00"

        page.locator("tr[data-appointment] button.cancel").click()
        assert page.locator("tr[data-appointment]").count() == 0
    booked_now = rows(stage, "SELECT count(*) FROM appointments WHERE status = 'booked'")[0][0]
    made = rows(stage, "SELECT count(*) FROM appointments")[0][0] - before
    assert (booked_now, made) == (0, 2)  # booked, moved (a new booking), cancelled


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_town_administrator_makes_a_rule_for_the_town_only(
    stage: Stage, browser: Any, locale: str
) -> None:
    before = rows(stage, "SELECT count(*) FROM entitlement_rules")[0][0]
    with page_in(browser, locale) as page:
        sign_in(page, stage, "admin-town")
        page.goto(f"{stage.url}/admin/rules")
        assert page.input_value("#area") == TOWN  # their own area by default
        assert_accessible(page)
        # Another town: refused next to the area field, nothing written.
        page.fill("#area", OTHER_TOWN)
        page.fill("#units", "1")
        page.click("#create-rule")
        assert page.locator("#area-error").is_visible()
        # The whole city: refused the same way.
        page.fill("#area", "")
        page.fill("#units", "1")
        page.click("#create-rule")
        assert page.locator("#area-error").is_visible()
        # Bad input: no units, days for a calendar month.
        page.fill("#area", TOWN)
        page.fill("#units", "")
        page.fill("#period_days", "5")
        page.click("#create-rule")
        assert page.locator("#units-error").is_visible()
        assert page.locator("#period_days-error").is_visible()
        assert rows(stage, "SELECT count(*) FROM entitlement_rules")[0][0] == before
        assert_accessible(page)
        stage.shot(page, f"staff-rule-errors-{locale}")

        page.fill("#period_days", "")
        page.fill("#units", "2")
        page.click("#create-rule")
        assert page.locator(f"tr[data-area='{TOWN}']").count() >= 1
        assert_accessible(page)
        stage.shot(page, f"staff-rules-{locale}")
    [(area,)] = rows(
        stage,
        "SELECT r.code FROM entitlement_rules e JOIN regions r ON r.id = e.region_id"
        " WHERE e.id = (SELECT max(id) FROM entitlement_rules)",
    )
    assert area == TOWN


BAD_REGIONS = """code,name,kind,parent
C01-T01-V101,柳树村,village,C01-T01
C01-T01-V101,重复村,village,C01-T01
C01-T01-V102,,village,C01-T01
C01-T01-V103,河湾村,hamlet,C01-T01
C01-T09-V104,远村,village,C01-T09
C01-T02-V105,山村,village,C01-T02
"""
GOOD_REGIONS = """\ufeffcode,name,kind,parent
C01-T01-V101,柳树村,village,C01-T01
C01-T01-V102,桃园社区,community,C01-T01
C01-T01-V102-X,桃园东区,community,C01-T01-V102
"""


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_region_file_with_problems_then_without(stage: Stage, browser: Any, locale: str) -> None:
    suffix = "A" if locale == "zh-CN" else "B"
    bad = BAD_REGIONS.replace("-V1", f"-V{suffix}")
    good = GOOD_REGIONS.replace("-V1", f"-V{suffix}")
    before = rows(stage, "SELECT count(*) FROM regions")[0][0]
    with page_in(browser, locale) as page:
        sign_in(page, stage, "admin-town")
        page.goto(f"{stage.url}/admin/regions")
        assert_accessible(page)
        page.set_input_files(
            "#csv_file",
            files=[{"name": "regions.csv", "mimeType": "text/csv", "buffer": bad.encode()}],
        )
        page.click("#preview")
        assert page.locator("#problems").count() == 1, page.inner_text("main")
        problems = {
            (item.get_attribute("data-line"), item.get_attribute("data-problem"))
            for item in page.locator("#problems li").all()
        }
        assert problems == {
            ("3", "code_repeated"),
            ("4", "name_missing"),
            ("5", "kind_invalid"),
            ("6", "parent_unknown"),
            ("7", "out_of_scope"),  # another town: not this administrator's
        }
        assert page.locator("#import").count() == 0
        assert rows(stage, "SELECT count(*) FROM regions")[0][0] == before
        assert_accessible(page)
        stage.shot(page, f"staff-regions-problems-{locale}")

        page.fill("#csv_text", good)
        page.click("#preview")
        assert page.locator("#ready").is_visible()
        assert (
            rows(stage, "SELECT count(*) FROM regions")[0][0] == before
        )  # a preview writes nothing
        stage.shot(page, f"staff-regions-preview-{locale}")
        page.click("#import")
        assert page.locator(".flash.ok").is_visible()
    added = rows(
        stage,
        "SELECT c.code, p.code FROM regions c JOIN regions p ON p.id = c.parent_id"
        " WHERE c.code LIKE ? ORDER BY c.code",
        f"C01-T01-V{suffix}%",
    )
    assert added == [
        (f"C01-T01-V{suffix}01", TOWN),
        (f"C01-T01-V{suffix}02", TOWN),
        (f"C01-T01-V{suffix}02-X", f"C01-T01-V{suffix}02"),
    ]


def test_station_hours_and_capacity_are_data(stage: Stage, browser: Any) -> None:
    today = dt.date.today()
    saturday = today + dt.timedelta(days=(5 - today.weekday()) % 7 or 7)
    with page_in(browser, "en-US") as page:
        sign_in(page, stage, "admin-town")
        page.goto(f"{stage.url}/admin/stations?station={STATION}")
        assert_accessible(page)
        # Bad input: closing before opening on Sunday; nothing is written.
        page.check("#open-6")
        page.fill("#opens-6", "12:00")
        page.fill("#closes-6", "09:00")
        page.click("#save-hours")
        assert page.locator("#hours-6-error").is_visible()
        assert rows(stage, "SELECT count(*) FROM station_hours WHERE weekday = 6")[0][0] == 0
        stage.shot(page, "staff-station-hours-error")
        page.uncheck("#open-6")
        page.check("#open-5")
        page.fill("#opens-5", "09:00")
        page.fill("#closes-5", "12:00")
        page.fill("#minutes-5", "60")
        page.fill("#capacity-5", "2")
        page.click("#save-hours")
        assert page.locator(".flash.ok").is_visible()
        assert rows(
            stage,
            "SELECT slot_minutes, capacity FROM station_hours WHERE station_id = ? AND weekday = 5",
            STATION,
        ) == [(60, 2)]
        page.click("#toggle-station")
        assert rows(stage, "SELECT enabled FROM kiosks WHERE id = ?", STATION) == [(0,)]
        page.click("#toggle-station")
        assert rows(stage, "SELECT enabled FROM kiosks WHERE id = ?", STATION) == [(1,)]
    with page_in(browser, "en-US") as page:
        sign_in(page, stage, "nurse-town")
        page.goto(f"{stage.url}/nurse/appointments?station={STATION}&date={saturday}")
        slots = page.locator("tr[data-slot]")
        assert slots.count() == 3  # 09:00, 10:00, 11:00
        assert all(t.endswith("2") for t in slots.all_inner_texts())
