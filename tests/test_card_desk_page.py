"""The resident page's card desk (issue 11): a technician signed in through the sign-in form
issues a card on the desk reader from the page, renews it, unblocks its PIN and replaces it
(lost: revoked first; damaged: replaced), in Simplified Chinese and in English, every word the
desk shows checked against the catalogue, in Debian's Chromium against the real server and the
real card service (`onecard cardsvc serve`) with a virtual card through pcscd; a card pulled
before the last step is never recorded, and a stolen card stays revoked (on the kiosks' list)
when its replacement fails; axe-core and screenshots per language.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from babel.support import Translations

from cardsvc.piv import PivSession
from kiosk.client import ServerClient
from kiosk.identity import load_or_create_device_key
from kiosk.revocation import open_revocation_list
from onecard.platform import KIOSK_ID, READER, Platform, start_platform
from server.web.i18n import TRANSLATIONS
from tests import pages
from tests.pages import assert_accessible, card_service, chromium, page_in, server_cli

pytestmark = pytest.mark.pcscd

TECHNICIAN = "tech-desk"
PASSWORD = "correct horse battery staple"
LANGUAGES = {"zh": "zh-CN", "en": "en-US"}  # the page's language: the browser's locale
CHINESE = Translations.load(str(TRANSLATIONS), ["zh_Hans_CN"])
# Each line of the progress list, by its data-step (CARD_DESK_WORDS in server/web/technician.py).
STEP_WORDS = {
    "identify": "Reading the card on the reader",
    "check": "Asking the server whether this card is issued already",
    "secrets": "Fetching this card's keys from the server",
    "generate": "The card makes its key",
    "certify": "The server certifies the card's key",
    "write": "Writing the certificate, the PIN and the card's own key",
    "record": "Recording the card for this resident",
    "renew": "The server renews the certificate",
    "write_renewal": "Writing the new certificate",
    "unblock": "Setting the new PIN with the card's PUK",
    "revoke": "Revoking the old card, so kiosks refuse it",
}
PLACEHOLDER = re.compile(r"%\\\((\w+)\\\)s")  # a %(name)s, once re.escape'd


def said(language: str, english: str) -> str:
    """What the page shows for the catalogue word `english` in `language`; in Chinese, the word
    must have its translation."""
    if language == "en":
        return english
    chinese = CHINESE.gettext(english)
    assert chinese != english, f"no Chinese for {english!r}"
    return chinese


def matched(language: str, english: str, shown: str) -> dict[str, str]:
    """The values of the word's %(name)s placeholders in `shown`, which must be that word."""
    pattern = PLACEHOLDER.sub(r"(?P<\1>.+?)", re.escape(said(language, english)))
    found = re.fullmatch(pattern, shown)
    assert found is not None, f"{shown!r} is not {said(language, english)!r}"
    return found.groupdict()


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

    def cards_of(self, resident_id: int) -> list[str]:
        region = self.platform.seed.seed.region_codes[-1]
        listed = self.api("GET", f"/residents?limit=200&region={region}")
        assert listed.status_code == 200, listed.text
        mine = [r for r in listed.json()["items"] if r["resident_id"] == resident_id]
        assert len(mine) == 1
        return [card["card_guid"] for card in mine[0]["cards"]]

    def revocations_audited(self, guid: str) -> list[dict[str, Any]]:
        """The audit log's card revocations of `guid`, each made by the signed-in technician."""
        with sqlite3.connect(self.platform.data_dir / "server.sqlite3") as database:
            (technician,) = database.execute(
                "SELECT id FROM staff_users WHERE name = ?", (TECHNICIAN,)
            ).fetchone()
            rows = database.execute(
                "SELECT actor, detail FROM audit_log WHERE action = 'card.revoke' "
                "AND subject = ? ORDER BY id",
                (f"card:{guid}",),
            ).fetchall()
        assert {actor for actor, _ in rows} <= {f"user:{technician}"}, rows
        return [json.loads(detail) for _, detail in rows]

    def kiosk_revocation_list(self) -> set[str]:
        """The GUIDs a kiosk refuses after fetching the signed revocation list, as it does
        every minute (kiosk.revocation, with the platform's kiosk key and pinned server key)."""
        kiosk_dir = self.platform.device_key_dir
        revocations = open_revocation_list(kiosk_dir)
        assert revocations is not None
        with ServerClient(self.url, KIOSK_ID, load_or_create_device_key(kiosk_dir)) as client:
            assert revocations.refresh(client)
        return {guid.hex() for guid in revocations.revoked()}

    def guid_on_card(self) -> str | None:
        """The GUID in the CHUID of the card on the reader; None for a blank card."""
        answer = requests.post(f"{self.cardsvc}/v1/card/identify", json={}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["card_guid"]  # type: ignore[no-any-return]

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


def steps_shown(page: Any, language: str = "en") -> list[tuple[str, str]]:
    """The progress list: (step, state) per line, each line in the catalogue's words."""
    shown = []
    for li in page.query_selector_all("#card-steps li"):
        step = str(li.get_attribute("data-step"))
        assert li.inner_text() == said(language, STEP_WORDS[step])
        shown.append((step, str(li.get_attribute("data-state"))))
    return shown


def card_row(page: Any, guid: str) -> tuple[str, str]:
    """A card's state in the resident's cards table: (its code, the words shown)."""
    cell = page.query_selector(f'tr[data-card="{guid}"] td[data-status]')
    assert cell is not None, f"no row for card {guid}"
    return str(cell.get_attribute("data-status")), cell.inner_text()


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


@pytest.mark.parametrize("language", LANGUAGES)
def test_issue_renew_unblock_and_replace_from_the_page(
    browser: Any, desk: Desk, language: str
) -> None:
    """The whole desk in each language: every word it shows is the catalogue's."""
    resident = desk.new_resident()
    desk.present_blank(f"first-{language}")
    with page_in(browser, LANGUAGES[language]) as page:
        sign_in(page, desk)
        open_resident(page, desk, resident)
        assert page.inner_text("#desk-title") == said(language, "Card on the desk reader")
        assert page.inner_text("#card-desk button[data-card-action=issue]") == said(
            language, "Issue a card"
        )
        assert page.query_selector("#replace-reason") is None  # nothing to replace yet
        assert_accessible(page)
        pages.shot(page, desk.shots, f"resident-card-desk-{language}")

        # A PIN is needed before anything touches the card.
        outcome, words = press(page, "issue", pin="12")
        assert (outcome, words) == (
            "failed",
            said(language, "Type the holder's new PIN: 6 to 8 digits."),
        )
        assert steps_shown(page, language) == []

        outcome, words = press(page, "issue", pin="246810")
        assert outcome == "done", words
        first = matched(language, "Card %(guid)s issued. The holder's PIN is set.", words)["guid"]
        assert steps_shown(page, language) == [
            ("identify", "done"),
            ("generate", "done"),
            ("certify", "done"),
            ("write", "done"),
            ("record", "done"),
        ]
        assert desk.card_status(first) == (resident, "active")
        # The page reloaded: the new card in the table, the buttons of a resident with a card.
        assert card_row(page, first) == ("active", said(language, "active"))
        assert page.query_selector("#card-desk button[data-card-action=issue]") is None
        assert desk.on_card()["card_guid"] == first
        assert pin_accepted(desk, "246810")
        pages.shot(page, desk.shots, f"resident-card-issued-{language}")

        # Renew: a new certificate for the same key and GUID, written on the card.
        open_resident(page, desk, resident)
        before = desk.on_card()
        outcome, words = press(page, "renew")
        assert outcome == "done", words
        renewed = matched(language, "Card %(guid)s renewed: valid until %(expiry)s.", words)
        assert renewed["guid"] == first
        assert steps_shown(page, language) == [
            ("identify", "done"),
            ("renew", "done"),
            ("write_renewal", "done"),
        ]
        after = desk.on_card()
        assert after["card_guid"] == first
        assert after["certificate"] != before["certificate"]
        assert desk.card_status(first) == (resident, "active")

        # Unblock the PIN: the card's PUK from the server sets a new one.
        outcome, words = press(page, "unblock", pin="135790")
        assert outcome == "done", words
        assert matched(language, "The PIN of card %(guid)s is set again.", words)["guid"] == first
        assert steps_shown(page, language) == [
            ("identify", "done"),
            ("secrets", "done"),
            ("unblock", "done"),
        ]
        assert pin_accepted(desk, "135790")
        assert not pin_accepted(desk, "246810")

        # Renewing with another card on the reader is refused, and nothing changes.
        desk.present_blank(f"second-{language}")
        outcome, words = press(page, "renew")
        assert (outcome, words) == (
            "failed",
            said(language, "This card was never issued: issue it instead."),
        )
        assert steps_shown(page, language) == [("identify", "failed")]

        # Replace: the page asks why before it touches anything.
        outcome, words = press(page, "replace", pin="424242")
        assert (outcome, words) == ("failed", said(language, "Choose why the card is replaced."))
        assert steps_shown(page, language) == []
        assert page.get_attribute("#replace-reason", "aria-invalid") == "true"
        assert desk.card_status(first) == (resident, "active")
        assert desk.guid_on_card() is None  # the blank card was not touched
        assert_accessible(page)
        pages.shot(page, desk.shots, f"resident-card-replace-why-{language}")

        # Lost: the old card is revoked first (audited, with its reason), then the new one issued.
        page.select_option("#replace-reason", "lost")
        outcome, words = press(page, "replace", pin="424242")
        assert outcome == "done", words
        replaced = matched(
            language,
            "Card %(guid)s issued in place of card %(old)s, which is revoked (%(reason)s). The "
            "holder's PIN is set.",
            words,
        )
        second = replaced["guid"]
        assert (replaced["old"], replaced["reason"]) == (first, said(language, "lost"))
        assert [name for name, _ in steps_shown(page, language)] == [
            "revoke",
            "identify",
            "generate",
            "certify",
            "write",
            "record",
        ]
        assert desk.card_status(second) == (resident, "active")
        assert desk.card_status(first) == (resident, "revoked")
        assert desk.revocations_audited(first) == [{"reason": "lost"}]
        assert card_row(page, first) == ("revoked", said(language, "revoked"))
        pages.shot(page, desk.shots, f"resident-card-replaced-lost-{language}")
        assert (
            page.get_attribute("#card-desk button[data-card-action=renew]", "data-guid") == second
        )

        # Damaged and handed in: nothing revoked first; the old card is replaced on recording.
        desk.present_blank(f"third-{language}")
        page.select_option("#replace-reason", "damaged")
        outcome, words = press(page, "replace", pin="424242")
        assert outcome == "done", words
        replaced = matched(
            language,
            "Card %(guid)s issued in place of card %(old)s, which is marked replaced "
            "(%(reason)s). The holder's PIN is set.",
            words,
        )
        third = replaced["guid"]
        assert (replaced["old"], replaced["reason"]) == (second, said(language, "damaged"))
        assert "revoke" not in [name for name, _ in steps_shown(page, language)]
        assert desk.card_status(third) == (resident, "active")
        assert desk.card_status(second) == (resident, "replaced")
        assert desk.revocations_audited(second) == []
        assert card_row(page, second) == ("replaced", said(language, "replaced"))

        # Presenting the issued card again for a new issuance is refused plainly, and a damaged
        # card's replacement revokes nothing on the way.
        page.select_option("#replace-reason", "damaged")
        outcome, words = press(page, "replace", pin="424242")
        assert outcome == "failed"
        refused = matched(
            language,
            "This card is issued already (%(status)s): renew it, or put another card on the "
            "reader.",
            words,
        )
        assert refused["status"] == said(language, "active")
        assert desk.card_status(third) == (resident, "active")
        assert_accessible(page)
        pages.shot(page, desk.shots, f"resident-card-replaced-{language}")
        assert page.script_errors == []


def test_a_stolen_card_stays_revoked_when_its_replacement_fails(browser: Any, desk: Desk) -> None:
    """As `onecard card replace --reason stolen`: the old card is revoked before the new one is
    touched and stays revoked (on the kiosks' list) when the new card is pulled mid-way; the
    new card is not recorded, the page says both and shows the resident without an active
    card, and Issue then finishes the new card."""
    resident = desk.new_resident()
    desk.present_blank("stolen-old")
    with page_in(browser, "en-US") as page:
        sign_in(page, desk)
        open_resident(page, desk, resident)
        outcome, words = press(page, "issue", pin="246810")
        assert outcome == "done", words
        old = matched("en", "Card %(guid)s issued. The holder's PIN is set.", words)["guid"]
        assert old not in desk.kiosk_revocation_list()

        desk.present_blank("stolen-new")
        page.select_option("#replace-reason", "stolen")

        def pull_while_writing(route: Any) -> None:
            if route.request.method == "POST":
                desk.platform.card.pull_during_next_command()
            route.continue_()

        page.route("**/v1/provision/finish", pull_while_writing)
        outcome, words = press(page, "replace", pin="246810")
        page.unroute("**/v1/provision/finish")
        assert outcome == "failed"
        pulled = said(
            "en",
            "The card left the reader before it was finished. Nothing was recorded: put it back "
            "and press again.",
        )
        stays = said(
            "en",
            "Card %(old)s stays revoked (%(reason)s): kiosks refuse it. Issue the new card with "
            "the Issue button.",
        ) % {"old": old, "reason": "stolen"}
        assert words == f"{pulled} {stays}"
        assert steps_shown(page, "en") == [
            ("revoke", "done"),
            ("identify", "done"),
            ("generate", "done"),
            ("certify", "done"),
            ("write", "failed"),
        ]
        assert desk.card_status(old) == (resident, "revoked")
        assert desk.revocations_audited(old) == [{"reason": "stolen"}]
        assert old in desk.kiosk_revocation_list()
        assert desk.cards_of(resident) == [old]  # the new card was never recorded
        # The page shows the resident as they are now: no active card, the Issue button.
        assert card_row(page, old) == ("revoked", "revoked")
        assert page.query_selector("#card-desk button[data-card-action=replace]") is None
        pages.shot(page, desk.shots, "resident-card-stolen-replacement-failed-en")

        desk.present_blank("stolen-new")
        outcome, words = press(page, "issue", pin="246810")
        assert outcome == "done", words
        new = matched("en", "Card %(guid)s issued. The holder's PIN is set.", words)["guid"]
        assert desk.card_status(new) == (resident, "active")
        assert desk.card_status(old) == (resident, "revoked")
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
        assert desk.cards_of(resident) == []

        # Put back, the same card is issued cleanly.
        desk.present_blank("pulled")
        outcome, words = press(page, "issue", pin="246810")
        assert outcome == "done", words
        guid = matched("en", "Card %(guid)s issued. The holder's PIN is set.", words)["guid"]
        assert desk.card_status(guid) == (resident, "active")


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
