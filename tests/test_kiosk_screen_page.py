"""The kiosk's touch screen through the real stack: the virtual card through pcscd, the board
simulator on a pty, the server over HTTP, the kiosk core with its screen (kiosk.app.open_screen,
as `onecard kiosk run` builds it), and the page in Debian's Chromium through Playwright.

One stack for the module (its tests run in order and share the resident's allowance): choose and
take, English one touch away, an empty slot then another product, a jam and a missed drop (not
charged), the card pulled while choosing and while dispensing, the server unreachable (offline
approval), the limit reached with the next date, maintenance with a staff card (wrong PIN,
refill, test dispense, clear faults), and last a revoked card. Every screen reached is checked
by axe-core and kept as a screenshot (tests/pages.py; $ONECARD_SCREENSHOTS keeps them too).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from cardsvc.piv import PivSession
from cardsvc.provision import provision_card
from kiosk.app import ScreenKiosk, open_screen, serve
from kiosk.client import ServerClient
from kiosk.config_sync import ConfigSync
from kiosk.identity import load_or_create_device_key
from kiosk.journal import TxnState
from kiosk.offline import OfflineMode
from kiosk.session import TIMEOUTS, Screen
from kiosk.tap import Kiosk, TapOutcome, TapResult
from onecard.platform import KIOSK_ID, Platform, start_platform
from onecard.procs import free_port
from server.store.models import KioskSlot, StockEvent
from tests.fixtures.catalogue import add_choice_catalogue
from tests.pages import assert_accessible, chromium, shot

pytestmark = pytest.mark.pcscd

STAFF_PIN = "24681357"
# Slower than the simulator's default, so a card can be taken away while the motor runs.
BOARD_TIMINGS = {"run_ms": 700, "drop_delay_ms": 30, "drop_window_ms": 200, "max_run_ms": 1500, "boot_ms": 60}  # fmt: skip
TEST_TIMEOUTS = {
    **TIMEOUTS,
    Screen.CHOOSING: 25.0,  # the warning shows after 10 s
    Screen.TAKE_ITEM: 4.0,
    Screen.REFUSED: 4.0,
    Screen.FAULT: 4.0,
    Screen.REMOVE_CARD: 3.0,
}


@dataclass
class Stage:
    platform: Platform
    kiosk: Kiosk
    parts: ScreenKiosk
    board_control: Path
    staff_card: Path
    resident_card: Path
    shots: Path
    results: list[TapResult] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.parts.screen.url

    def board(self, **command: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.board_control))
            s.sendall(json.dumps(command).encode() + b"\n")
            answer = json.loads(s.makefile().readline())
        assert answer.get("ok"), answer
        return answer  # type: ignore[no-any-return]

    def sessionmaker(self) -> Any:
        engine = create_engine(self.platform.server_env["ONECARD_DATABASE_URL"])
        return sessionmaker(engine)


def _provision_staff_card(p: Platform, state: Path) -> None:
    p.card.send(f"swap {state}")
    connection = p.reader.wait_for_card(timeout=10)
    assert connection is not None
    with connection:
        provision_card(PivSession(connection), p.ca.staff_issuer(), pin=STAFF_PIN)
    p.card.send(f"swap {p.data_dir / 'card.json'}")
    p.card.remove()
    p.reader.wait_for_removal(timeout=10)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, pcscd: object) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("kiosk-screen")
    board_config = base / "board.json"
    board_config.write_text(
        json.dumps(
            {
                "model": "OC-SIM-1",
                "timings": BOARD_TIMINGS,
            }
        )
    )
    control = base / "board.sock"
    with ExitStack() as stack:
        p = stack.enter_context(
            start_platform(
                base / "platform",
                slots="1=10,2=10,3=10",  # capacity 50 each
                board_args=["--config", str(board_config), "--control", str(control)],
            )
        )
        database = create_engine(p.server_env["ONECARD_DATABASE_URL"])
        stack.callback(database.dispose)
        add_choice_catalogue(sessionmaker(database), KIOSK_ID)
        staff_card = base / "staff-card.json"
        _provision_staff_card(p, staff_card)
        signed = ConfigSync(p.client, p.device_key_dir, KIOSK_ID)
        signed.refresh()
        kiosk = Kiosk(
            kiosk_id=KIOSK_ID,
            journal=p.kiosk.journal,
            server=p.client,
            board=p.board,
            ca_certificate_der=p.ca.certificate_der,
            revoked=p.revocations.revoked,
            offline=OfflineMode(
                p.kiosk.journal, lambda: signed.current, lambda: p.client.last_contact
            ),
        )
        stop = threading.Event()
        results: list[TapResult] = []
        parts = open_screen(
            stack,
            kiosk,
            p.board,
            p.client,
            p.reader,
            lambda: signed.current.slots if signed.current is not None else {},
            stop=stop,
            report=results.append,
            timeouts=TEST_TIMEOUTS,
            result_min_s=1.0,
            speech_wav_dir=base / "speech",
        )
        loop = threading.Thread(
            target=serve,
            args=(kiosk, p.reader, 0, stop, results.append),
            kwargs={"say": lambda text: None, "attendant": parts.attendant},
            daemon=True,
        )
        loop.start()
        stack.callback(loop.join, 10)
        stack.callback(stop.set)
        stage = Stage(
            p,
            kiosk,
            parts,
            control,
            staff_card,
            p.data_dir / "card.json",
            base / "screenshots",
            results,
        )
        yield stage


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any, stage: Stage) -> Iterator[Any]:
    """The screen as the kiosk's Chromium shows it: portrait 1080x1920. The page's strict CSP is
    bypassed here only so that axe-core can be injected (tests/pages.py); the first test runs the
    page under its own policy and sees no violation."""
    context = browser.new_context(viewport={"width": 1080, "height": 1920}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(stage.url)
    wait_screen(page, "idle")
    yield page
    context.close()
    assert errors == []


# --- helpers -----------------------------------------------------------------------------------


def wait_screen(page: Any, screen: str, timeout_ms: int = 20_000) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(f"body[data-screen={screen}]", timeout=timeout_ms)
    except PlaywrightTimeout:
        raise AssertionError(
            f"no {screen} screen; the page shows {page.get_attribute('body', 'data-screen')}: "
            f"{page.inner_text('main')!r}"
        ) from None


def check(page: Any, stage: Stage, name: str) -> None:
    """Every screen reached: a screenshot kept, and axe-core finds nothing serious."""
    shot(page, stage.shots, name)
    assert_accessible(page)


def tap(stage: Stage) -> None:
    stage.platform.card.insert()


def take_card(stage: Stage, page: Any) -> None:
    stage.platform.card.remove()
    wait_screen(page, "idle")


def category(page: Any, code: str) -> Any:
    return page.locator(f"section.category[data-category={code}]")


def choose(page: Any, slot: int) -> None:
    page.locator(f".offer[data-slot='{slot}'] button.take").click()


def last(stage: Stage) -> TapResult:
    assert stage.results, "no tap was served"
    return stage.results[-1]


def set_language(page: Any, lang: str) -> None:
    page.click(f"button[data-language={lang}]")
    page.wait_for_selector(f"body[data-lang={lang}]")


# --- the tests, in order -------------------------------------------------------------------------


def test_the_page_runs_under_its_own_strict_policy(browser: Any, stage: Stage) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(stage.url)
        wait_screen(page, "idle")
        set_language(page, "en")
        set_language(page, "zh_CN")
        assert problems == []
    finally:
        context.close()


def test_idle_says_what_the_kiosk_offers_in_both_languages(page: Any, stage: Stage) -> None:
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert "请把卡放在读卡区开始。" in page.inner_text("main")
    assert page.locator("#offers li").count() == 3
    check(page, stage, "idle-zh")
    page.click("#speech")  # spoken prompts on request: this screen is said in Mandarin
    page.wait_for_selector("#speech[aria-pressed=true]")
    stage.parts.speaker.wait()
    voice, said = stage.parts.speaker.spoken[-1]
    assert voice == "cmn" and "请把卡放在读卡区开始。" in said
    assert list(stage.parts.speaker.wav_dir.glob("*-cmn.wav"))  # type: ignore[union-attr]
    page.click("#speech")
    page.wait_for_selector("#speech[aria-pressed=false]")
    set_language(page, "en")
    assert "Tap your card on the reader to start." in page.inner_text("main")
    check(page, stage, "idle-en")
    page.set_viewport_size({"width": 1280, "height": 800})  # landscape too
    check(page, stage, "idle-en-landscape")
    set_language(page, "zh_CN")


def test_choose_and_take_in_chinese(page: Any, stage: Stage) -> None:
    limit = stage.platform.seed.limit
    tap(stage)
    wait_screen(page, "choosing")
    condoms = category(page, "condoms")
    assert condoms.locator("h3").inner_text() == "避孕套"
    assert condoms.locator(".status").inner_text() == f"本期还可以领{limit}件。"
    assert category(page, "lubricant").locator(".status").inner_text() == "本期还可以领2件。"
    assert page.locator(".offer").count() == 3
    body = page.inner_text("body")
    assert "Demo Resident" not in body and stage.platform.card_guid not in page.content()
    check(page, stage, "choosing-zh")
    choose(page, 1)
    wait_screen(page, "take_item")
    assert "请从取物口取走避孕套（标准型）。" in page.inner_text("main")
    assert f"本期还可以领{limit - 1}件。" in page.inner_text("main")
    check(page, stage, "take-item-zh")
    result = last(stage)
    assert result.outcome is TapOutcome.DISPENSED and result.slot == 1
    assert stage.kiosk.journal.get(result.txn_id or 0).state is TxnState.CAPTURED
    take_card(stage, page)


def test_english_one_touch_away_and_the_other_category(page: Any, stage: Stage) -> None:
    tap(stage)
    wait_screen(page, "choosing")
    set_language(page, "en")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.inner_text("h2") == "Choose an item"
    assert (
        category(page, "lubricant").locator(".status").inner_text()
        == "You may take 2 more this period."
    )
    check(page, stage, "choosing-en")
    choose(page, 3)
    wait_screen(page, "take_item")
    assert "Please take Lubricant, sachet from the tray." in page.inner_text("main")
    check(page, stage, "take-item-en")
    take_card(stage, page)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"  # the next person: Chinese


def test_an_empty_slot_offers_another_product_of_its_category(page: Any, stage: Stage) -> None:
    # The board's count for slot 2 drops to 0 behind the kiosk's back (its keypad, a miscount):
    # the kiosk still offers it, and the board answers EMPTY.
    stage.platform.board.set_stock(2, 0)  # type: ignore[attr-defined]
    tap(stage)
    wait_screen(page, "choosing")
    choose(page, 2)
    page.wait_for_selector("body[data-screen=choosing] .offer[data-slot='1']")
    assert page.locator(".offer[data-slot='2']").count() == 0
    assert "抱歉，这件物品已经发完。您的额度没有被扣除。" in page.inner_text("main")
    check(page, stage, "empty-then-choose-zh")
    empty = last(stage)
    assert (empty.outcome, empty.reason) == (TapOutcome.NOT_DISPENSED, "empty")
    assert stage.kiosk.journal.get(empty.txn_id or 0).state is TxnState.VOIDED
    choose(page, 1)
    wait_screen(page, "take_item")
    assert last(stage).outcome is TapOutcome.DISPENSED
    take_card(stage, page)
    stage.platform.board.set_stock(2, 10)  # type: ignore[attr-defined]
    stage.parts.stock.forget()


@pytest.mark.parametrize(
    ("fault", "reason", "lang", "words"),
    [
        ({"jammed": [3]}, "jammed", "zh_CN", "机器卡住了。"),
        ({"blind_sensor": True}, "no_drop", "en", "No item fell."),
    ],
)
def test_a_jam_or_a_missed_drop_is_not_charged(
    page: Any, stage: Stage, fault: dict[str, Any], reason: str, lang: str, words: str
) -> None:
    tap(stage)
    wait_screen(page, "choosing")
    if lang == "en":
        set_language(page, "en")
    before = category(page, "lubricant").get_attribute("data-left")
    stage.board(cmd="faults", **fault)
    try:
        choose(page, 3)
        wait_screen(page, "fault")
    finally:
        stage.board(cmd="clear_faults")
    assert page.get_attribute("body", "data-reason") == reason
    main = page.inner_text("main")
    assert words in main
    assert ("没有扣除您的额度。" if lang == "zh_CN" else "You were not charged") in main
    check(page, stage, f"fault-{reason}-{lang}")
    result = last(stage)
    assert stage.kiosk.journal.get(result.txn_id or 0).state is TxnState.VOIDED
    take_card(stage, page)
    tap(stage)
    wait_screen(page, "choosing")
    assert category(page, "lubricant").get_attribute("data-left") == before  # not charged
    page.click("#action-cancel")
    wait_screen(page, "remove_card")
    take_card(stage, page)


def test_card_pulled_while_choosing_ends_the_session_and_begins_nothing(
    page: Any, stage: Stage
) -> None:
    opened = len(stage.kiosk.journal.open_transactions())
    served = len(stage.results)
    tap(stage)
    wait_screen(page, "choosing")
    stage.platform.card.remove()
    wait_screen(page, "fault")
    assert page.get_attribute("body", "data-reason") == "card_pulled"
    assert "没有发出物品，也没有扣除您的额度。" in page.inner_text("main")
    check(page, stage, "card-pulled-choosing-zh")
    wait_screen(page, "idle")
    assert len(stage.results) == served  # no transaction was begun
    assert len(stage.kiosk.journal.open_transactions()) == opened


def test_card_pulled_while_dispensing_the_item_still_falls_and_is_charged(
    page: Any, stage: Stage
) -> None:
    tap(stage)
    wait_screen(page, "choosing")
    left = int(category(page, "condoms").get_attribute("data-left") or 0)
    choose(page, 1)
    page.wait_for_selector(
        "body[data-screen=dispensing] #steps li[data-step=dispense][data-state=now]"
    )
    check(page, stage, "dispensing-zh")
    stage.platform.card.remove()  # the motor is running: authorized, it finishes
    wait_screen(page, "take_item")
    wait_screen(page, "idle")
    result = last(stage)
    assert result.outcome is TapOutcome.DISPENSED
    assert result.remaining["condoms"] == left - 1


def test_server_unreachable_offline_approval_within_caps(page: Any, stage: Stage) -> None:
    """The network to the server is cut (the kiosk's calls go to a port where nothing listens):
    the signed offline policy answers, within its caps."""
    p = stage.platform
    online = stage.kiosk.server
    cut = ServerClient(
        f"http://127.0.0.1:{free_port()}", KIOSK_ID, load_or_create_device_key(p.device_key_dir)
    )
    stage.kiosk.server = cut
    try:
        tap(stage)
        wait_screen(page, "choosing")
        main = page.inner_text("main")
        assert "目前无法连接服务中心：本机可以离线发放少量物品" in main
        assert category(page, "lubricant").locator(".status").inner_text() == "本期还可以领1件。"
        check(page, stage, "choosing-offline-zh")
        choose(page, 3)
        wait_screen(page, "take_item")
        assert "离线发放：之后计入您的额度。" in page.inner_text("main")
        offline = last(stage)
        assert offline.offline and offline.outcome is TapOutcome.DISPENSED
        take_card(stage, page)
        tap(stage)  # the offline cap (1 a day) is spent: nothing more without the server
        wait_screen(page, "choosing")
        assert category(page, "lubricant").get_attribute("data-allowed") == "false"
        page.click("#action-cancel")
        take_card(stage, page)
    finally:
        stage.kiosk.server = online
        cut.close()
    settled = stage.kiosk.recover()  # back in touch: the offline tap is applied once
    assert (offline.txn_id, TxnState.SYNCED) in settled


def test_limit_reached_with_the_next_date(page: Any, stage: Stage) -> None:
    while True:  # spend what is left of the condoms
        tap(stage)
        wait_screen(page, "choosing")
        if category(page, "condoms").get_attribute("data-allowed") == "false":
            break
        choose(page, 1)
        wait_screen(page, "take_item")
        take_card(stage, page)
    today = dt.date.today()
    first_of_next = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    status = category(page, "condoms").locator(".status").inner_text()
    assert (
        status
        == f"本期额度已用完，从{first_of_next.year}年{first_of_next.month}月{first_of_next.day}日起可以再领。"
    )
    assert page.locator(".offer[data-slot='1'] button.take").is_disabled()
    check(page, stage, "limit-reached-zh")
    set_language(page, "en")
    status = category(page, "condoms").locator(".status").inner_text()
    assert (
        status
        == f"None left this period. You can take more from {first_of_next:%B} {first_of_next.day}, {first_of_next.year}."
    )
    check(page, stage, "limit-reached-en")
    page.click("#action-cancel")
    wait_screen(page, "remove_card")
    check(page, stage, "remove-card-en")
    page.wait_for_function("document.getElementById('heading').innerText.includes('still')")
    check(page, stage, "remove-card-reminder-en")
    take_card(stage, page)


def test_the_timeout_warns_and_more_time_extends_it(page: Any, stage: Stage) -> None:
    tap(stage)
    wait_screen(page, "choosing")
    page.wait_for_selector("#warning:not(:empty)", timeout=20_000)
    check(page, stage, "choosing-warning-zh")
    page.click("#more-time")
    page.wait_for_selector("#warning:empty", state="attached")
    assert stage.parts.session.screen is Screen.CHOOSING
    page.click("#action-cancel")
    take_card(stage, page)


def test_maintenance_with_a_staff_card(page: Any, stage: Stage) -> None:
    p = stage.platform
    p.card.send(f"swap {stage.staff_card}")
    try:
        wait_screen(page, "staff_pin")
        check(page, stage, "staff-pin-zh")
        for digit in "99999999":
            page.click(f"button.digit[data-digit='{digit}']")
        page.click("#pin-enter")
        page.wait_for_function("document.getElementById('lines').innerText.includes('2')")
        assert "密码错误：还可以试2次。" in page.inner_text("main")
        check(page, stage, "staff-pin-wrong-zh")
        for digit in STAFF_PIN:
            page.click(f"button.digit[data-digit='{digit}']")
        page.click("#pin-enter")
        wait_screen(page, "maintenance")
        set_language(page, "en")
        row = page.locator("tr[data-slot='1']")
        assert row.locator("td").nth(1).inner_text() == "Condoms, standard (1)"
        check(page, stage, "maintenance-en")

        row.locator("button[data-action=refill]").click()
        page.wait_for_function("document.getElementById('lines').innerText.includes('refilled')")
        assert "Slot 1 refilled: 50 items, recorded at the server." in page.inner_text("main")
        assert p.board.stock()[1] == 50
        with stage.sessionmaker()() as session:
            [event] = session.scalars(select(StockEvent)).all()
            assert (event.kind, event.slot, event.count_after) == ("refill", 1, 50)
            assert session.get(KioskSlot, (KIOSK_ID, 1)).stock == 50  # type: ignore[union-attr]

        charged_before = len(stage.results)
        lube = p.board.stock()[3]
        page.locator("tr[data-slot='3'] button[data-action=test_dispense]").click()
        page.wait_for_function(
            "document.getElementById('lines').innerText.includes('Test dispense')"
        )
        assert "Test dispense from slot 3: ok. Nobody was charged." in page.inner_text("main")
        assert p.board.stock()[3] == lube - 1
        assert len(stage.results) == charged_before  # no resident's transaction

        page.click("#action-clear_faults")
        page.wait_for_function("document.getElementById('lines').innerText.includes('restarted')")
        check(page, stage, "maintenance-done-en")
        page.click("#action-finish")
        wait_screen(page, "remove_card")
    finally:
        p.card.remove()
    wait_screen(page, "idle")


def test_a_revoked_card_is_refused_plainly(page: Any, stage: Stage) -> None:
    """Last: it revokes the module's card."""
    p = stage.platform
    revoked = requests.post(
        f"{p.server_url}/api/v1/cards/{p.card_guid}/revoke",
        json={"reason": "lost"},
        headers={"Authorization": f"Bearer {p.seed.technician_token}"},
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    p.card.send(f"swap {stage.resident_card}")  # the resident's card again (swap inserts it)
    wait_screen(page, "refused")
    assert page.get_attribute("body", "data-reason") == "card_revoked"
    assert "此卡已挂失或已失效。" in page.inner_text("main")
    check(page, stage, "refused-revoked-zh")
    set_language(page, "en")
    assert "This card has been reported lost or is no longer valid." in page.inner_text("main")
    check(page, stage, "refused-revoked-en")
    take_card(stage, page)
