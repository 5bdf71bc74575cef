"""The resident page's card desk (issue 11): a technician signed in through the sign-in form
issues a card on the desk reader from the page, renews it, replaces it and unblocks its PIN, in
Debian's Chromium against the real server and the real card service (`onecard cardsvc serve`)
with a virtual card through pcscd; a card pulled before the last step is never recorded; the
page in Simplified Chinese; axe-core and screenshots.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cardsvc.piv import PivSession
from onecard.platform import READER, Platform, start_platform
from tests import pages
from tests.pages import assert_accessible, card_service, chromium, page_in, server_cli

pytestmark = pytest.mark.pcscd

TECHNICIAN = "tech-desk"
PASSWORD = "correct horse battery staple"
GUID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Desk:
    platform: Platform
    cardsvc: str
    shots: Path
    cards: Path

    @property
    def url(self) -> str:
        return self.platform.server_url

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.platform.seed.technician_token}"}
        return requests.request(
            method, f"{self.url}/api/v1{path}", json=body, headers=headers, timeout=10
        )

    def new_resident(self) -> int:
        answer = self.api(
            "POST",
            "/residents",
            {
                "name": "Desk Resident",
                "sex": "F",
                "birth_date": "1990-05-06",
                "id_number": "D" + secrets.token_hex(8),
                "region": self.platform.seed.seed.region_codes[-1],
            },
        )
        assert answer.status_code == 201, answer.text
        return int(answer.json()["resident_id"])

    def card_status(self, guid: str) -> tuple[int, str] | None:
        answer = self.api("GET", f"/cards/{guid}")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        return int(answer.json()["resident_id"]), str(answer.json()["status"])

    def present_blank(self, name: str) -> None:
        """Take whatever card is on the reader off and put a new blank card `name` on it."""
        self.platform.card.send(f"swap {self.cards / (name + '.json')}")

    def on_card(self) -> dict[str, Any]:
        """What the card service reads from the card on the reader (GUID, expiry, certificate)."""
        answer = requests.post(f"{self.cardsvc}/v1/card/read", json={}, timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, pcscd: object) -> Iterator[Desk]:
    base = tmp_path_factory.mktemp("card-desk")
    with start_platform(base / "platform", kiosk=False) as platform:
        env = platform.server_env
        server_cli(env, "create-user", "--name", TECHNICIAN, "--role", "technician")
        server_cli(env, "set-password", "--name", TECHNICIAN, "--keep", stdin=PASSWORD + "\n")
        with card_service(platform.server_url, READER) as cardsvc:
            cards = base / "cards"
            cards.mkdir()
            yield Desk(platform, cardsvc, base / "screenshots", cards)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def sign_in(page: Any, desk: Desk) -> None:
    page.goto(f"{desk.url}/sign-in")
    page.fill("#name", TECHNICIAN)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_load_state()


def open_resident(page: Any, desk: Desk, resident_id: int) -> None:
    page.goto(f"{desk.url}/technician/residents/{resident_id}?cardsvc={desk.cardsvc}")
    page.wait_for_selector("#card-desk button[data-card-action]")


def press(page: Any, action: str, pin: str | None = None) -> tuple[str, str]:
    """Press a card button and wait until the page is done: (outcome, the words it shows)."""
    if pin is not None:
        page.fill("#card-pin", pin)
    page.click(f"#card-desk button[data-card-action={action}]")
    page.wait_for_function(
        "() => ['done', 'failed'].includes(document.getElementById('card-desk').dataset.outcome)",
        timeout=60_000,
    )
    outcome = page.get_attribute("#card-desk", "data-outcome")
    return str(outcome), str(page.inner_text("#card-message"))


def steps_shown(page: Any) -> list[tuple[str, str]]:
    return [
        (li.get_attribute("data-step"), li.get_attribute("data-state"))
        for li in page.query_selector_all("#card-steps li")
    ]


def pin_accepted(desk: Desk, pin: str) -> bool:
    """Whether the card on the reader accepts `pin` (VERIFY through pcscd, as a kiosk would)."""
    connection = desk.platform.reader.wait_for_card(timeout=10)
    assert connection is not None
    with connection:
        piv = PivSession(connection)
        piv.select()
        try:
            piv.verify_pin(pin)
        except Exception:  # noqa: BLE001 - a refused PIN, whatever the card's words
            return False
    return True


def test_issue_renew_replace_and_unblock_from_the_page(browser: Any, desk: Desk) -> None:
    resident = desk.new_resident()
    desk.present_blank("first")
    with page_in(browser, "en-US") as page:
        sign_in(page, desk)
        open_resident(page, desk, resident)
        assert page.inner_text("#desk-title") == "Card on the desk reader"
        assert_accessible(page)
        pages.shot(page, desk.shots, "resident-card-desk-en")

        # A PIN is needed before anything touches the card.
        outcome, words = press(page, "issue", pin="12")
        assert (outcome, words) == ("failed", "Type the holder's new PIN: 6 to 8 digits.")
        assert steps_shown(page) == []

        outcome, words = press(page, "issue", pin="246810")
        assert outcome == "done", words
        first = GUID.search(words)
        assert first is not None, words
        first_guid = first.group(0)
        assert steps_shown(page) == [
            ("identify", "done"),
            ("generate", "done"),
            ("certify", "done"),
            ("write", "done"),
            ("record", "done"),
        ]
        assert desk.card_status(first_guid) == (resident, "active")
        # The page reloaded: the new card in the table, the buttons of a resident with a card.
        assert page.inner_text(f'tr[data-card="{first_guid}"]').split()[:2] == [
            first_guid,
            "active",
        ]
        assert page.query_selector("#card-desk button[data-card-action=issue]") is None
        assert desk.on_card()["card_guid"] == first_guid
        assert pin_accepted(desk, "246810")
        pages.shot(page, desk.shots, "resident-card-issued-en")

        # Renew: a new certificate for the same key and GUID, written on the card.
        open_resident(page, desk, resident)
        before = desk.on_card()
        outcome, words = press(page, "renew")
        assert outcome == "done", words
        assert "renewed" in words and first_guid in words
        after = desk.on_card()
        assert after["card_guid"] == first_guid
        assert after["certificate"] != before["certificate"]
        assert desk.card_status(first_guid) == (resident, "active")

        # Unblock the PIN: the card's PUK from the server sets a new one.
        outcome, words = press(page, "unblock", pin="135790")
        assert outcome == "done", words
        assert pin_accepted(desk, "135790")
        assert not pin_accepted(desk, "246810")

        # Renewing with another card on the reader is refused, and nothing changes.
        desk.present_blank("second")
        outcome, words = press(page, "renew")
        assert (outcome, words) == ("failed", "This card was never issued: issue it instead.")

        # Replace: the new card on the reader is issued; the first is marked replaced.
        outcome, words = press(page, "replace", pin="424242")
        assert outcome == "done", words
        second = GUID.search(words)
        assert second is not None and second.group(0) != first_guid
        assert desk.card_status(second.group(0)) == (resident, "active")
        assert desk.card_status(first_guid) == (resident, "replaced")
        assert page.get_attribute("#card-desk button[data-card-action=renew]", "data-guid") == (
            second.group(0)
        )

        # Presenting the issued card again for a new issuance is refused plainly.
        outcome, words = press(page, "replace", pin="424242")
        assert outcome == "failed"
        assert words.startswith("This card is issued already (active)"), words
        assert page.script_errors == []


def test_a_card_pulled_before_the_last_step_is_not_recorded(browser: Any, desk: Desk) -> None:
    resident = desk.new_resident()
    desk.present_blank("pulled")
    with page_in(browser, "en-US") as page:
        sign_in(page, desk)
        recorded: list[str] = []
        open_resident(page, desk, resident)

        def pull_while_writing(route: Any) -> None:
            if route.request.method == "POST":
                desk.platform.card.pull_during_next_command()
            route.continue_()

        page.on(
            "request",
            lambda r: recorded.append(r.url) if r.url.endswith("/api/v1/cards") else None,
        )
        page.route("**/v1/provision/finish", pull_while_writing)
        outcome, words = press(page, "issue", pin="246810")
        page.unroute("**/v1/provision/finish")
        assert outcome == "failed"
        assert "Nothing was recorded" in words, words
        assert steps_shown(page)[-1] == ("write", "failed")
        assert recorded == []  # the page never asked the server to record it
        listed = desk.api(
            "GET", f"/residents?limit=200&region={desk.platform.seed.seed.region_codes[-1]}"
        )
        assert listed.status_code == 200, listed.text
        mine = [r for r in listed.json()["items"] if r["resident_id"] == resident]
        assert mine and mine[0]["cards"] == []

        # Put back, the same card is issued cleanly.
        desk.present_blank("pulled")
        outcome, words = press(page, "issue", pin="246810")
        assert outcome == "done", words
        guid = GUID.search(words)
        assert guid is not None and desk.card_status(guid.group(0)) == (resident, "active")


def test_a_written_card_the_server_did_not_record_is_issued_again(browser: Any, desk: Desk) -> None:
    """The card is complete (its own management key, PUK and PIN) but the record never reached
    the server: pressing again fetches the card's keys, certifies it again under its GUID and
    records it, as `onecard card provision` does for an interrupted run."""
    resident = desk.new_resident()
    desk.present_blank("unrecorded")
    with page_in(browser, "en-US") as page:
        sign_in(page, desk)
        open_resident(page, desk, resident)

        def lose_the_record(route: Any) -> None:
            if route.request.method == "POST":
                route.abort()
            else:
                route.continue_()

        page.route("**/api/v1/cards", lose_the_record)
        outcome, words = press(page, "issue", pin="246810")
        page.unroute("**/api/v1/cards")
        assert outcome == "failed"
        assert words.startswith("The card is written but the server did not record it"), words
        guid = desk.on_card()["card_guid"]
        assert desk.card_status(guid) is None

        outcome, words = press(page, "issue", pin="975310")
        assert outcome == "done", words
        assert guid in words
        assert [name for name, _ in steps_shown(page)] == [
            "identify",
            "check",
            "secrets",
            "generate",
            "certify",
            "write",
            "record",
        ]
        assert desk.card_status(guid) == (resident, "active")
        assert pin_accepted(desk, "975310")


def test_the_card_desk_in_simplified_chinese(browser: Any, desk: Desk) -> None:
    resident = desk.new_resident()
    with page_in(browser, "zh-CN") as page:
        sign_in(page, desk)
        open_resident(page, desk, resident)
        assert page.inner_text("#desk-title") == "桌面读卡器上的卡"
        assert page.inner_text("#card-desk button[data-card-action=issue]") == "发卡"
        outcome, words = press(page, "issue", pin="1")
        assert (outcome, words) == ("failed", "请输入持卡人的新 PIN：6 至 8 位数字。")
        assert_accessible(page)
        pages.shot(page, desk.shots, "resident-card-desk-zh")
