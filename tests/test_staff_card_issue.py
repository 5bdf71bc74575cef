"""Issuing a staff card on the desk reader (issue 11), against the real server, pcscd and a virtual
card (run under `flock /tmp/onecard-pcscd.lock`): `onecard card provision --staff --user NAME`
with an administrator's token, and the administrator's staff-card page driving the desk's card
service (`onecard cardsvc serve`) in Debian's Chromium, zh-CN and en. The card makes its 9E and
PIN-bound 9A keys, the server certifies both with the city CA's staff issuer and links the card
to the user last (audited); the card then signs in on the sign-in page with its PIN. A card
already issued is refused before its keys are touched; a card pulled mid-way is never linked
and is issued when put back. One platform, card service and browser for the module.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cardsvc.verify import CardRole, verify_certificate
from onecard import card as card_cli
from onecard.platform import READER, Platform, start_platform
from tests.pages import assert_accessible, card_service, chromium, page_in, server_cli, shot
from tests.test_card_desk_page import matched, said

pytestmark = pytest.mark.pcscd

ADMIN = "admin-issuer"
PASSWORD = "correct horse battery staple"
PIN = "13572468"
LANGUAGES = {"zh": "zh-CN", "en": "en-US"}


@dataclass
class Desk:
    platform: Platform
    cardsvc: str
    token: str  # the administrator's bearer token, for the command line
    shots: Path
    cards: Path

    @property
    def url(self) -> str:
        return self.platform.server_url

    def database(self) -> sqlite3.Connection:
        return sqlite3.connect(self.platform.data_dir / "server.sqlite3")

    def new_staff(self, name: str) -> int:
        """A nurse (station staff) with no card yet; their user id."""
        server_cli(
            self.platform.server_env, "create-user", "--name", name, "--role", "station_staff"
        )
        with self.database() as database:
            (user_id,) = database.execute(
                "SELECT id FROM staff_users WHERE name = ?", (name,)
            ).fetchone()
        return int(user_id)

    def cards_of(self, user_id: int) -> list[str]:
        with self.database() as database:
            rows = database.execute(
                "SELECT guid FROM staff_cards WHERE user_id = ? ORDER BY assigned_at", (user_id,)
            ).fetchall()
        return [guid for (guid,) in rows]

    def audited(self, action: str, guid: str) -> list[tuple[str, dict[str, Any]]]:
        with self.database() as database:
            rows = database.execute(
                "SELECT actor, detail FROM audit_log WHERE action = ? AND subject = ? ORDER BY id",
                (action, f"staff-card:{guid}"),
            ).fetchall()
        return [(actor, json.loads(detail)) for actor, detail in rows]

    def admin_actor(self) -> str:
        with self.database() as database:
            (admin_id,) = database.execute(
                "SELECT id FROM staff_users WHERE name = ?", (ADMIN,)
            ).fetchone()
        return f"user:{admin_id}"

    def present_blank(self, name: str) -> None:
        """Whatever card is on the reader off, the (new or earlier) card `name` on it."""
        self.platform.card.send(f"swap {self.cards / (name + '.json')}")

    def cli(self, *args: str) -> int:
        return card_cli.main(
            [
                "provision",
                *args,
                "--server",
                self.url,
                "--token",
                self.token,
                "--reader",
                READER,
                "--timeout",
                "10",
            ]
        )


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, pcscd: object) -> Iterator[Desk]:
    base = tmp_path_factory.mktemp("staff-card-issue")
    with start_platform(base / "platform", kiosk=False) as platform:
        env = platform.server_env
        server_cli(env, "create-user", "--name", ADMIN, "--role", "administrator")
        server_cli(env, "set-password", "--name", ADMIN, "--keep", stdin=PASSWORD + "\n")
        token = server_cli(env, "tokens", "issue", "--name", ADMIN, "--label", "cards")
        with card_service(platform.server_url, READER) as cardsvc:
            cards = base / "cards"
            cards.mkdir()
            yield Desk(platform, cardsvc, token.splitlines()[-1], base / "screenshots", cards)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def signs_in_with_card(browser: Any, desk: Desk, pin: str) -> str:
    """Sign in on the sign-in page with the card on the reader and `pin`; the page reached."""
    with page_in(browser, "en-US") as page:
        page.goto(f"{desk.url}/sign-in?cardsvc={desk.cardsvc}")
        page.wait_for_selector("#card-sign-in:not([hidden])")
        page.fill("#card-pin", pin)
        page.click("#card-sign-in-button")
        page.wait_for_url(lambda url: "/sign-in" not in url, timeout=30_000)
        assert page.script_errors == []
        return str(page.url)


def test_the_command_line_issues_a_staff_card_that_signs_in(
    desk: Desk, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    nurse = desk.new_staff("nurse-cli")
    desk.present_blank("cli")
    assert desk.cli("--staff", "--user", "nurse-cli", "--pin", PIN) == 0
    said_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert said_line.startswith("issued staff card ") and f"PIN {PIN}" in said_line
    guid = said_line.split()[3]
    assert desk.cards_of(nurse) == [guid]
    actor = desk.admin_actor()
    assert [a for a, _ in desk.audited("staff_card.certify", guid)] == [actor]
    assert desk.audited("staff_card.assign", guid) == [(actor, {"user": nurse, "by": "issued"})]

    assert signs_in_with_card(browser, desk, PIN) == f"{desk.url}/station"

    # Presented again, it is refused before the card is touched: it keeps its keys.
    on_card = read_certificate(desk)
    assert desk.cli("--staff", "--user", "nurse-cli") == 1
    assert "already issued to a staff card (active)" in capsys.readouterr().err
    assert read_certificate(desk) == on_card
    with pytest.raises(SystemExit):  # a staff card is for a user, not a resident
        desk.cli("--staff", "--user", "nurse-cli", "--resident-id", "1")
    assert "--staff takes --user NAME" in capsys.readouterr().err


def read_certificate(desk: Desk) -> bytes:
    """The 9E certificate on the card, as kiosks read it (the card service's read)."""
    answer = requests.post(f"{desk.cardsvc}/v1/card/read", json={}, timeout=10)
    assert answer.status_code == 200, answer.text
    der = base64.b64decode(answer.json()["certificate"])
    assert verify_certificate(der, desk.platform.ca.certificate_der).role is CardRole.STAFF
    return der


# --- the administrator's staff-card page -----------------------------------------------------------


def open_cards_page(page: Any, desk: Desk, user_id: int) -> None:
    """Sign in as the administrator (password) and open the user's staff cards."""
    page.goto(f"{desk.url}/sign-in")
    page.fill("#name", ADMIN)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_load_state()
    page.goto(f"{desk.url}/admin/users/{user_id}/cards?cardsvc={desk.cardsvc}")
    page.wait_for_selector("#issue-staff-card")


def press_issue(page: Any, pin: str) -> str:
    """Type the PIN, press Issue and wait: the words of the failure, or of the issued card
    after the page came back with it."""
    page.fill("#staff-card-pin", pin)
    page.click("#issue-staff-card")
    page.wait_for_selector(
        "#card-issued, #staff-card-issue[data-outcome=failed]", state="attached", timeout=60_000
    )
    issued = page.query_selector("#card-issued")
    return str((issued or page.query_selector("#issue-message")).inner_text())


def steps_shown(page: Any) -> list[tuple[str, str]]:
    return [
        (str(li.get_attribute("data-step")), str(li.get_attribute("data-state")))
        for li in page.query_selector_all("#issue-steps li")
    ]


ISSUED = (
    "Staff card %(card)s issued on the desk reader and linked: %(name)s signs in with it and the "
    "PIN set on it."
)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_page_issues_a_staff_card_that_signs_in(
    desk: Desk, browser: Any, language: str
) -> None:
    name = f"nurse-page-{language}"
    nurse = desk.new_staff(name)
    desk.present_blank(f"page-{language}")
    with page_in(browser, LANGUAGES[language]) as page:
        open_cards_page(page, desk, nurse)
        assert_accessible(page)
        shot(page, desk.shots, f"staff-card-issue-{language}")

        refused = press_issue(page, "12")  # nothing reaches the card or the server
        assert refused == said(language, "Type the holder's new PIN: 6 to 8 digits.")
        assert steps_shown(page) == []

        words = press_issue(page, PIN)
        guid = matched(language, ISSUED, words)["card"]
        assert matched(language, ISSUED, words)["name"] == name
        assert desk.cards_of(nurse) == [guid]
        assert page.get_attribute(f'tr[data-card="{guid}"]', "data-status") == "active"
        assert desk.audited("staff_card.assign", guid) == [
            (desk.admin_actor(), {"user": nurse, "by": "issued"})
        ]
        assert_accessible(page)
        shot(page, desk.shots, f"staff-card-issued-{language}")

        # The same card again: refused before its keys are touched.
        on_card = read_certificate(desk)
        words = press_issue(page, PIN)
        status = said(language, "active")
        assert words == said(
            language,
            "This card is a staff card already (%(status)s): put a blank card on the reader.",
        ).replace("%(status)s", status)
        assert steps_shown(page) == [("identify", "done"), ("check", "failed")]
        assert read_certificate(desk) == on_card
        assert_accessible(page)
        assert page.script_errors == []

    assert signs_in_with_card(browser, desk, PIN) == f"{desk.url}/station"


def test_a_card_pulled_mid_way_is_never_linked_and_is_issued_when_put_back(
    desk: Desk, browser: Any
) -> None:
    nurse = desk.new_staff("nurse-pulled")
    desk.present_blank("pulled")
    with page_in(browser, "en-US") as page:
        open_cards_page(page, desk, nurse)
        links: list[str] = []
        page.on(
            "request",
            lambda r: links.append(r.url) if r.url.endswith("/api/v1/staff-cards") else None,
        )

        def pull_while_writing(route: Any) -> None:
            if route.request.method == "POST":
                desk.platform.card.pull_during_next_command()
            route.continue_()

        page.route("**/v1/provision/finish", pull_while_writing)
        words = press_issue(page, PIN)
        page.unroute("**/v1/provision/finish")
        assert words == said(
            "en",
            "The card left the reader before it was finished. Nothing "
            "was recorded: put it back and press again.",
        )
        assert steps_shown(page)[-1] == ("write", "failed")
        assert links == [] and desk.cards_of(nurse) == []

        desk.present_blank("pulled")  # put back
        words = press_issue(page, PIN)
        guid = matched("en", ISSUED, words)["card"]
        assert desk.cards_of(nurse) == [guid]
    assert signs_in_with_card(browser, desk, PIN) == f"{desk.url}/station"
