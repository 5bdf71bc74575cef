"""The station desk page (server/pages.py, /station): its staff JSON calls in process, and the
page itself in Chromium against the real platform — server, pcscd, a virtual card on the desk
reader and the local card service (`onecard cardsvc serve`) — each its own process.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright; `playwright install` is never
used. Every process started here is stopped by its pid, whatever happens.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server import services
from tests import pages
from tests.fixtures.database import ServerWorld, TestCard
from tests.pages import chromium, page_in, server_cli

ROOT = Path(__file__).resolve().parent.parent
STATION = "ST-DESK-01"
VILLAGE = "C01-T01-V001"
TOWN = "C01-T01"
OTHER_TOWN = "C01-T02"
PROGRAMME_FIELDS = {"programme", "name", "eligible", "reason", "next_eligible_on"}


def random_public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# --- the staff calls, in process (SQLite and PostgreSQL) ------------------------------------------


@dataclass
class Desk:
    world: ServerWorld
    token: str
    counter: int = 0

    def proof(self, card: TestCard | None = None, station: str = STATION) -> dict[str, Any]:
        self.counter += 1
        return (card or self.world.card).prove(
            station, self.counter, int(self.world.clock() * 1000)
        )

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.world.client.post(path, json=body, headers=headers)

    def eligibility(self, **body: Any) -> Any:
        return self.post(
            "/staff/v1/exams/eligibility", {"station_id": STATION, "proof": self.proof(), **body}
        )

    def record(self, programme: str, **body: Any) -> Any:
        return self.post(
            "/staff/v1/exams/records",
            {"station_id": STATION, "programme": programme, "proof": self.proof(), **body},
        )


@pytest.fixture
def desk(server_world: ServerWorld) -> Desk:
    with server_world.sessionmaker() as session:
        services.add_station(
            session, server_world.ctx, STATION, random_public_key(), region_code=VILLAGE
        )
        token = services.create_user(
            session, server_world.ctx, "nurse-li", "station_staff", region_code=TOWN
        )
    return Desk(server_world, token)


def audit_actions(world: ServerWorld) -> list[tuple[str, str, str]]:
    from sqlalchemy import select

    from server.store.models import AuditEntry

    with world.sessionmaker() as session:
        return [
            (entry.actor, entry.action, entry.subject)
            for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def test_station_staff_check_and_record_with_the_card_on_the_desk(desk: Desk) -> None:
    w = desk.world
    me = w.client.get("/staff/v1/me", headers={"Authorization": f"Bearer {desk.token}"})
    assert me.status_code == 200
    assert me.get_json() == {"name": "nurse-li", "role": "station_staff", "stations": [STATION]}

    first = desk.eligibility()
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.headers["Cache-Control"] == "no-store"
    programmes = first.get_json()["programmes"]
    assert list(first.get_json()) == ["programmes"]  # nothing about the person
    assert all(set(p) == PROGRAMME_FIELDS for p in programmes)
    assert [(p["programme"], p["eligible"], p["reason"]) for p in programmes] == [
        ("pre_pregnancy", False, "no_plan"),
        ("reproductive_health_check", True, None),
    ]

    recorded = desk.record("reproductive_health_check")
    assert recorded.status_code == 201, recorded.get_data(as_text=True)
    assert recorded.get_json()["given_on"] == "2026-11-16"
    later = {p["programme"]: p for p in desk.eligibility().get_json()["programmes"]}
    assert later["reproductive_health_check"]["eligible"] is False
    assert later["reproductive_health_check"]["reason"] == "too_soon"
    assert later["reproductive_health_check"]["next_eligible_on"] == "2027-11-16"

    again = desk.record("reproductive_health_check")
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert again.get_json()["code"] == "not_eligible" and again.get_json()["reason"] == "too_soon"

    from sqlalchemy import select

    from server.store.models import ExamRecord, StaffUser

    with w.sessionmaker() as session:
        nurse_id = session.scalar(select(StaffUser.id).where(StaffUser.name == "nurse-li"))
        staff = session.scalars(select(ExamRecord.staff)).all()
    assert staff == [f"user:{nurse_id}"]
    resident = f"resident:{w.seed.resident_id}"
    reads = [a for a in audit_actions(w) if a[0] == f"user:{nurse_id}"]
    assert reads == [
        (f"user:{nurse_id}", "exam.eligibility.read", resident),
        (f"user:{nurse_id}", "exam.record", resident),
        (f"user:{nurse_id}", "exam.eligibility.read", resident),
    ]


def test_an_idempotent_retry_records_once(desk: Desk) -> None:
    body = {"station_id": STATION, "programme": "reproductive_health_check", "proof": desk.proof()}
    headers = {"Authorization": f"Bearer {desk.token}", "Idempotency-Key": "record-1"}
    first = desk.world.client.post("/staff/v1/exams/records", json=body, headers=headers)
    retry = desk.world.client.post("/staff/v1/exams/records", json=body, headers=headers)
    assert first.status_code == retry.status_code == 201
    assert first.get_json() == retry.get_json()


def problem_code(response: Any) -> tuple[int, str]:
    assert response.mimetype == "application/problem+json", response.get_data(as_text=True)
    return response.status_code, response.get_json()["code"]


def test_staff_calls_refuse_the_wrong_person_place_and_card(desk: Desk) -> None:
    w = desk.world
    with w.sessionmaker() as session:
        elsewhere = services.create_user(
            session, w.ctx, "nurse-far", "station_staff", region_code=OTHER_TOWN
        )
    body = {"station_id": STATION, "proof": desk.proof()}

    assert problem_code(w.client.post("/staff/v1/exams/eligibility", json=body)) == (
        401,
        "token_missing",
    )
    assert problem_code(desk.post("/staff/v1/exams/eligibility", body, token="oc_wrong")) == (
        401,
        "token_invalid",
    )
    assert problem_code(desk.post("/staff/v1/exams/eligibility", body, token=w.token)) == (
        403,
        "role_required",  # a technician is not station staff
    )
    assert problem_code(desk.post("/staff/v1/exams/eligibility", body, token=elsewhere)) == (
        403,
        "out_of_scope",
    )
    far_me = w.client.get("/staff/v1/me", headers={"Authorization": f"Bearer {elsewhere}"})
    assert far_me.get_json()["stations"] == []
    assert problem_code(desk.eligibility(station_id="K-0001")) == (404, "station_unknown")
    assert problem_code(desk.eligibility(proof="nope")) == (400, "field_invalid")
    assert problem_code(
        desk.post(
            "/staff/v1/exams/eligibility",
            {"station_id": STATION, "proof": desk.proof(station="ST-OTHER")},
        )
    ) == (403, "kiosk_mismatch")
    used = desk.proof()
    assert (
        desk.post("/staff/v1/exams/eligibility", {"station_id": STATION, "proof": used}).status_code
        == 200
    )
    replayed = desk.post("/staff/v1/exams/eligibility", {"station_id": STATION, "proof": used})
    assert problem_code(replayed) == (422, "counter_replayed")

    stranger = TestCard(w.ca)  # a genuine-looking card the city never issued
    unknown = desk.post(
        "/staff/v1/exams/eligibility", {"station_id": STATION, "proof": desk.proof(stranger)}
    )
    assert problem_code(unknown) == (422, "card_unknown")
    revoked = w.client.post(
        f"/api/v1/cards/{w.card.guid.hex()}/revoke",
        json={"reason": "lost"},
        headers={"Authorization": f"Bearer {w.token}"},
    )
    assert revoked.status_code == 200
    assert problem_code(desk.eligibility()) == (422, "card_revoked")
    assert problem_code(desk.record("reproductive_health_check")) == (422, "card_revoked")
    # Refused taps read nothing: only the one accepted read above is in the audit log.
    assert [a[1] for a in audit_actions(w) if a[1].startswith("exam.")] == ["exam.eligibility.read"]


def test_the_page_is_served_with_a_strict_policy(server_world: ServerWorld) -> None:
    page = server_world.client.get("/station")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self' http://127.0.0.1:*" in policy
    assert page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    for asset in re.findall(r'(?:src|href)="(/assets/[^"]+)"', html):
        served = server_world.client.get(asset)
        assert served.status_code == 200, asset
        served.close()
    assert "<script>" not in html  # no inline script: the policy allows none
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # no CDN: everything is ours


# --- the page in Chromium, against the real platform ---------------------------------------------


@dataclass
class Stage:
    server_url: str
    server_env: dict[str, str]
    database_url: str
    token: str
    technician_token: str
    card: Any
    card_guid: str
    resident_id: int
    shots: Path


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, pcscd: object) -> Iterator[Stage]:
    from onecard.platform import start_platform

    base = tmp_path_factory.mktemp("station-page")
    with start_platform(base / "platform", kiosk=False) as platform:
        env = platform.server_env
        key = random_public_key()  # the desk's device key: unused, the page signs nothing
        server_cli(env, "add-station", "--id", STATION, "--public-key", key, "--region", VILLAGE)
        token = server_cli(
            env, "create-user", "--name", "nurse-li", "--role", "station_staff", "--region", TOWN
        )
        yield Stage(
            server_url=platform.server_url,
            server_env=env,
            database_url=env["ONECARD_DATABASE_URL"],
            token=token,
            technician_token=platform.seed.technician_token,
            card=platform.card,
            card_guid=platform.card_guid,
            resident_id=platform.seed.resident_id,
            shots=base / "screenshots",
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with page_in(browser, "en-US") as english:
        yield english


@contextmanager
def card_service(stage: Stage, reader: str | None = None, port: int | None = None) -> Iterator[str]:
    """`onecard cardsvc serve` on the desk reader, allowing the server's origin; its URL."""
    from onecard.platform import READER

    with pages.card_service(stage.server_url, reader or READER, port) as url:
        yield url


def open_desk(page: Any, stage: Stage, cardsvc_url: str, *, shoot: str | None = None) -> None:
    page.goto(f"{stage.server_url}/station?cardsvc={cardsvc_url}&station={STATION}")
    page.fill("#token", stage.token)
    if shoot:
        shot(page, stage, shoot)
    page.click("#signin-button")
    page.wait_for_selector("#desk:not([hidden])")


def wait_for(page: Any, selector: str) -> None:
    """Wait for `selector`; when it never comes, fail with what the nurse sees instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(selector, timeout=20_000)
    except PlaywrightTimeout:
        state = page.evaluate("JSON.stringify(document.body.dataset)")
        raise AssertionError(f"no {selector}; the page: {state} {message(page)!r}") from None


def message(page: Any) -> str:
    return str(page.inner_text("#message"))


def wait_for_message(page: Any, text: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "text => document.getElementById('message').innerText.includes(text)",
            arg=text,
            timeout=20_000,
        )
    except PlaywrightTimeout:
        raise AssertionError(f"the page never said {text!r}; it says {message(page)!r}") from None


def shot(page: Any, stage: Stage, name: str) -> Path:
    return pages.shot(page, stage.shots, name)


def exam_rows(database_url: str) -> list[tuple[str | None, str]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [
                (row.staff, row.station_id)
                for row in connection.execute(text("SELECT staff, station_id FROM exam_records"))
            ]
    finally:
        engine.dispose()


@pytest.mark.pcscd
def test_a_nurse_checks_a_card_records_an_exam_and_sees_it_refused(stage: Stage, page: Any) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with card_service(stage) as cardsvc_url:
        open_desk(page, stage, cardsvc_url)
        wait_for(page, "body[data-service=running][data-reader=ok][data-card=absent]")
        wait_for_message(page, "Put the resident's card on the reader")

        stage.card.insert()
        try:
            check = page.locator("tr[data-programme=reproductive_health_check]")
            wait_for(page, "tr[data-programme=reproductive_health_check][data-eligible=true]")
            plan = page.locator("tr[data-programme=pre_pregnancy]")
            assert plan.get_attribute("data-eligible") == "false"
            assert "planning a pregnancy" in plan.inner_text()
            assert "available now" in message(page)
            # Programmes only: nothing that names the person is on the page.
            body = page.inner_text("body")
            assert "Demo Resident" not in body and "DEMO" not in body
            assert stage.card_guid not in page.content()
            shot(page, stage, "1-eligible")

            # The first answer is lost on the way back (the server did record): the page sends
            # the same request again, same proof and Idempotency-Key, and it is recorded once.
            lost: list[int] = []

            def lose_first_answer(route: Any) -> None:
                if lost:
                    route.continue_()
                    return
                answer = route.fetch()
                lost.append(answer.status)
                answer.dispose()
                route.abort("connectionreset")

            page.route("**/staff/v1/exams/records", lose_first_answer)
            check.get_by_role("button", name="Record exam given").click()
            check.get_by_role("button", name="Confirm: exam given today").click()
            wait_for_message(page, "Recorded: Yearly reproductive-health check")
            page.unroute("**/staff/v1/exams/records")
            assert lost == [201]
            given_on = dt.date.fromisoformat(
                page.locator("#message time").get_attribute("datetime") or ""
            )
            assert f"given {english_date(given_on)}." in message(page)
            wait_for(page, "tr[data-programme=reproductive_health_check][data-eligible=false]")

            expected = given_on + dt.timedelta(days=365)
            next_on = check.locator("td.next time")
            assert next_on.get_attribute("datetime") == expected.isoformat()
            assert next_on.inner_text() == english_date(expected)
            assert "interval has not passed" in check.inner_text()
            assert check.get_by_role("button", name="Record exam given").count() == 0
            shot(page, stage, "2-recorded")

            # The server cannot be reached (the network drops the calls): the page says so,
            # and "Check again" works once it is back.
            page.route("**/staff/v1/**", lambda route: route.abort("connectionrefused"))
            page.get_by_role("button", name="Check again").click()
            wait_for_message(page, "The OneCard server cannot be reached")
            assert page.locator("#eligibility").is_hidden()
            page.unroute("**/staff/v1/**")
            page.get_by_role("button", name="Check again").click()
            wait_for(page, "tr[data-programme=reproductive_health_check][data-eligible=false]")
        finally:
            stage.card.remove()
        wait_for_message(page, "Card removed")
        assert page.locator("#eligibility").is_hidden()
        assert page.locator("tbody tr").count() == 0

        [(staff, station)] = exam_rows(stage.database_url)
        assert station == STATION and re.fullmatch(r"user:\d+", staff or "")
    # The card service stopped under the page: it says so.
    wait_for(page, "body[data-service=down]")
    wait_for_message(page, "The card service is not running on this computer")
    assert errors == []


@pytest.mark.pcscd
def test_the_page_says_when_the_card_service_is_not_running(stage: Stage, page: Any) -> None:
    from onecard.procs import free_port

    port = free_port()
    page.goto(f"{stage.server_url}/station")
    pages.assert_accessible(page)  # the sign-in form
    open_desk(page, stage, f"http://127.0.0.1:{port}", shoot="0-sign-in")
    wait_for(page, "body[data-service=down]")
    wait_for_message(page, "The card service is not running on this computer")
    assert f"--allow-origin {stage.server_url} --port {port}" in message(page)
    assert page.locator("#eligibility").is_hidden()
    shot(page, stage, "4-no-card-service")
    # Once it runs, the page finds it by itself.
    with card_service(stage, port=port):
        wait_for(page, "body[data-service=running][data-reader=ok]")
        wait_for_message(page, "Put the resident's card on the reader")


@pytest.mark.pcscd
def test_the_page_says_when_the_desk_has_no_reader(stage: Stage, page: Any) -> None:
    with card_service(stage, reader="No Such Reader") as cardsvc_url:
        open_desk(page, stage, cardsvc_url)
        wait_for(page, "body[data-service=running][data-reader=none]")
        wait_for_message(page, "No card reader is connected to this computer")
        assert page.locator("#eligibility").is_hidden()
        shot(page, stage, "5-no-reader")


# --- the page in Simplified Chinese and English (static/station-i18n.js) ----------------------------


def english_date(day: dt.date) -> str:
    return f"{day:%B} {day.day}, {day.year}"


def chinese_date(day: dt.date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


@dataclass(frozen=True)
class Words:
    """What the desk says in one language, for a card refused both exams."""

    lang: str
    heading: str
    service_label: str
    column: str
    accepted_none: str
    programme: str
    not_now: str
    no_plan: str
    too_soon: str
    server_refused: str
    date: Callable[[dt.date], str]
    absent: tuple[str, ...]  # the other language's words: none may show


CHINESE = Words(
    lang="zh-CN",
    heading="一卡通 · 服务站工作台",
    service_label="读卡服务",
    column="不能做的原因",
    accepted_none="卡已验证。今天没有可做的免费检查。",
    programme="年度生殖健康检查",
    not_now="暂不能做",
    no_plan="仅限已登记计划怀孕的夫妻",
    too_soon="近期已做过：间隔期未满",
    server_refused="服务器拒绝了这次请求。",
    date=chinese_date,
    absent=("Station desk", "Card service", "Why not", "Not now", "Given recently", "Check again"),
)
ENGLISH = Words(
    lang="en",
    heading="OneCard · Station desk",
    service_label="Card service",
    column="Why not",
    accepted_none="Card accepted. Not eligible for any free exam today.",
    programme="Yearly reproductive-health check",
    not_now="Not now",
    no_plan="Only for couples registered as planning a pregnancy",
    too_soon="Given recently: the interval has not passed",
    server_refused="The server refused the request.",
    date=english_date,
    absent=("服务站", "读卡", "原因", "暂不能做", "重新检查", "年"),
)


@pytest.mark.pcscd
@pytest.mark.parametrize(
    ("locale", "words"), [("zh-CN", CHINESE), ("en-US", ENGLISH)], ids=["zh-CN", "en-US"]
)
def test_the_desk_speaks_the_browsers_language(
    stage: Stage, browser: Any, locale: str, words: Words
) -> None:
    """Labels, refusal reasons and dates in the browser's language; a server code the page
    does not know shows the server's own words."""
    with page_in(browser, locale) as page, card_service(stage) as cardsvc_url:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_desk(page, stage, cardsvc_url)
        wait_for(page, "body[data-service=running][data-reader=ok][data-card=absent]")
        assert page.evaluate("document.documentElement.lang") == words.lang
        assert page.inner_text("h1") == words.heading
        assert page.inner_text("#status-service .label") == words.service_label
        stage.card.insert()
        try:
            check = page.locator("tr[data-programme=reproductive_health_check]")
            plan = page.locator("tr[data-programme=pre_pregnancy]")
            wait_for(page, "tr[data-programme=reproductive_health_check]")
            if check.get_attribute("data-eligible") == "true":
                # Run alone, without the first Chromium test: give the exam so it is refused.
                check.locator("button.record").click()
                check.locator("button.confirm").click()
                wait_for(page, "tr[data-programme=reproductive_health_check][data-eligible=false]")
            page.click("#recheck")
            wait_for_message(page, words.accepted_none)

            assert page.inner_text("thead").count(words.column) == 1
            assert check.locator("td.programme").inner_text() == words.programme
            assert check.locator(".badge").inner_text() == words.not_now
            assert check.locator("td.reason").inner_text() == words.too_soon
            assert plan.locator("td.reason").inner_text() == words.no_plan
            next_on = check.locator("td.next time")
            day = dt.date.fromisoformat(next_on.get_attribute("datetime") or "")
            assert next_on.inner_text() == words.date(day)
            body = page.inner_text("body")
            assert [w for w in words.absent if w in body] == []
            shot(page, stage, f"6-refused-{locale}")
            pages.assert_accessible(page)

            # Codes this page does not know: the server's words, or the code itself.
            def unknown_reason(route: Any) -> None:
                answer = route.fetch()
                programmes = answer.json()["programmes"]
                programmes[0]["reason"] = "moon_phase"
                route.fulfill(response=answer, json={"programmes": programmes})

            page.route("**/staff/v1/exams/eligibility", unknown_reason)
            page.click("#recheck")
            wait_for(page, "tr[data-programme=pre_pregnancy] td.reason:text-is('moon_phase')")
            page.unroute("**/staff/v1/exams/eligibility")
            page.route(
                "**/staff/v1/exams/eligibility",
                lambda route: route.fulfill(
                    status=422,
                    content_type="application/problem+json",
                    body='{"code": "card_melted", "detail": "the card melted", "status": 422}',
                ),
            )
            page.click("#recheck")
            wait_for_message(page, words.server_refused)
            assert "the card melted" in message(page)
            page.unroute("**/staff/v1/exams/eligibility")
        finally:
            stage.card.remove()
        assert errors == []


@pytest.mark.pcscd
def test_the_language_switch_is_remembered_on_this_desk(stage: Stage, page: Any) -> None:
    """中文 / English: the whole page changes at once, messages already shown included, and the
    choice outlives a reload (localStorage); the token stays in the tab's sessionStorage."""
    from onecard.procs import free_port

    page.goto(f"{stage.server_url}/station")
    catalogue = page.evaluate("OneCardI18n.catalogue")  # every key in both, same placeholders
    english, chinese = catalogue["en"], catalogue["zh-CN"]
    assert set(english) == set(chinese)
    placeholders = re.compile(r"\{\w+\}")
    for key in english:
        assert sorted(placeholders.findall(english[key])) == sorted(
            placeholders.findall(chinese[key])
        ), key
    assert page.inner_text("#signin-title") == "Sign in"

    page.click("button[data-language=zh-CN]")
    assert page.inner_text("#signin-title") == "登录"
    assert page.title() == "一卡通 · 服务站工作台"
    assert page.get_attribute("button[data-language=zh-CN]", "aria-pressed") == "true"
    page.reload()
    assert page.inner_text("#signin-title") == "登录"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"

    port = free_port()  # nothing listens: the page says how to start the card service
    page.goto(f"{stage.server_url}/station?cardsvc=http://127.0.0.1:{port}&station={STATION}")
    page.fill("#token", stage.token)
    page.click("#signin-button")
    wait_for(page, "body[data-service=down]")
    wait_for_message(page, "这台电脑上的读卡服务没有运行")
    assert page.inner_text("#status-service-value") == "未运行"
    assert page.inner_text("#who-station") == f"服务站 {STATION}"

    page.click("button[data-language=en]")
    wait_for_message(page, "The card service is not running on this computer")
    assert f"--allow-origin {stage.server_url} --port {port}" in message(page)
    assert page.inner_text("#status-service-value") == "not running"
    assert page.inner_text("#who-station") == f"Station {STATION}"
    page.reload()  # still signed in (sessionStorage), still in English
    wait_for_message(page, "The card service is not running on this computer")
    assert page.evaluate("document.documentElement.lang") == "en"
    stored = page.evaluate("JSON.stringify(Object.entries(localStorage))")
    assert stage.token not in stored and '"onecard.station.language","en"' in stored


@pytest.mark.pcscd
def test_a_revoked_card_is_refused_clearly(stage: Stage, page: Any) -> None:
    """Last of the Chromium tests: it revokes the module's card."""
    revoked = requests.post(
        f"{stage.server_url}/api/v1/cards/{stage.card_guid}/revoke",
        json={"reason": "lost"},
        headers={"Authorization": f"Bearer {stage.technician_token}"},
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    with card_service(stage) as cardsvc_url:
        open_desk(page, stage, cardsvc_url)
        wait_for(page, "body[data-service=running][data-reader=ok][data-card=absent]")
        stage.card.insert()
        try:
            wait_for_message(page, "Card refused: this card is no longer valid")
            assert page.locator("#eligibility").is_hidden()
            assert page.inner_text("#status-card-value") == "refused"
            shot(page, stage, "3-refused")
        finally:
            stage.card.remove()
        wait_for_message(page, "Card removed")


def test_a_wrong_token_is_refused_at_sign_in(server_world: ServerWorld) -> None:
    me = server_world.client.get("/staff/v1/me", headers={"Authorization": "Bearer oc_nope"})
    assert problem_code(me) == (401, "token_invalid")
