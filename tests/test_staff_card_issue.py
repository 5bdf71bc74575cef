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
from tests.pages import card_service, chromium, page_in, server_cli

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
