"""Staff-card sign-in in Debian's Chromium, end to end: the server in its own process (its card CA
the city's, nurses required to use their card), the desk's card service on a virtual staff card
behind pcscd, the sign-in page asking the server for a challenge and the card service for the
signature after the PIN typed on the page. A right PIN signs in; a wrong PIN is refused and
costs one try; a malformed PIN costs none; the nurse's password is refused. axe-core on the
page in zh-CN and en, screenshots kept."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cardsvc.ca import CardCA
from cardsvc.piv import PivSession
from cardsvc.provision import provision_card
from cardsvc.service import CardService, CardServiceServer
from onecard.platform import start_server
from onecard.procs import free_port
from server.app import context_of, create_app
from server.services import seed_demo, staff_auth, staff_cards
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import Role
from tests.fixtures.pcscd import VirtualCardHandle
from tests.pages import assert_accessible, chromium, page_in, shot
from tests.staff_browser import PASSWORD

pytestmark = pytest.mark.pcscd
FIELD_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
PIN = "24681357"


@pytest.fixture
def desk(virtual_card: VirtualCardHandle, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The server (its URL) and the desk's card service (its URL), the nurse's card on the reader."""
    ca = CardCA.create(tmp_path / "ca")
    with virtual_card.reader() as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection), ca.staff_issuer(), pin=PIN)
    env = {
        "ONECARD_DATABASE_URL": f"sqlite:///{tmp_path / 'onecard.db'}",
        "ONECARD_DATA_DIR": str(tmp_path / "data"),
        "ONECARD_FIELD_KEY": FIELD_KEY,
        "ONECARD_CARD_CA_CERT": str(ca.certificate_path),
        "ONECARD_COOKIE_SECURE": "0",  # plain HTTP on 127.0.0.1
        "ONECARD_CARD_SIGN_IN_ROLES": "station_staff",
    }
    upgrade(env["ONECARD_DATABASE_URL"])
    app = create_app(env)
    try:
        with db.bound(app).sessionmaker() as session:
            ctx = context_of(app)
            seed_demo(session, ctx)
            staff_auth.bootstrap_user(
                session,
                ctx,
                name="nurse-card",
                role=Role.STATION_STAFF,
                region_code=None,
                password=PASSWORD,
                must_change=False,
            )
            staff_cards.assign(session, ctx, "nurse-card", issued.guid.hex())
            session.commit()
    finally:
        db.dispose(app)
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    server = start_server({**os.environ, **env}, port)
    service = CardService(virtual_card.reader_name)
    card_server = CardServiceServer(0, service, [server_url])
    thread = threading.Thread(target=card_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_url, f"http://127.0.0.1:{card_server.server_address[1]}"
    finally:
        card_server.shutdown()
        card_server.server_close()
        service.close()
        thread.join(10)
        server.stop()


def card_sign_in(page: Any, pin: str) -> None:
    page.fill("#card-pin", pin)
    page.click("#card-sign-in-button")


@pytest.mark.parametrize(
    "locale, words",
    [
        ("zh-CN", {"wrong": "PIN 不正确", "shape": "6 至 8 位", "password": "工作卡"}),
        ("en", {"wrong": "The PIN is wrong", "shape": "6 to 8 digits", "password": "staff card"}),
    ],
)
def test_a_nurse_signs_in_with_the_staff_card_and_its_pin(
    desk: tuple[str, str],
    virtual_card: VirtualCardHandle,
    tmp_path: Path,
    locale: str,
    words: dict[str, str],
) -> None:
    server_url, cardsvc_url = desk
    shots = tmp_path / "screenshots"
    with chromium() as browser, page_in(browser, locale) as page:
        page.goto(f"{server_url}/sign-in?cardsvc={cardsvc_url}")
        page.wait_for_selector("#card-sign-in:not([hidden])")
        assert_accessible(page)
        shot(page, shots, f"card-sign-in-{locale}")

        page.fill("#name", "nurse-card")  # the role must use its card: the password is refused
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        page.wait_for_selector(".error-summary")
        assert words["password"] in page.inner_text(".error-summary")

        tries = virtual_card.card.state["pin_tries"]
        page.wait_for_selector("#card-sign-in:not([hidden])")
        card_sign_in(page, "12a")
        page.wait_for_selector("#card-message[data-code=pin_malformed]")
        assert words["shape"] in page.inner_text("#card-message")
        assert virtual_card.card.state["pin_tries"] == tries

        card_sign_in(page, "11112222")
        page.wait_for_selector("#card-message[data-code=wrong_pin]")
        assert words["wrong"] in page.inner_text("#card-message")
        assert virtual_card.card.state["pin_tries"] == tries - 1
        assert_accessible(page)
        shot(page, shots, f"card-sign-in-wrong-pin-{locale}")

        card_sign_in(page, PIN)
        page.wait_for_url(f"{server_url}/station")  # a nurse's first page: the desk
        assert page.script_errors == []
        page.goto(f"{server_url}/account")
        assert "nurse-card" in page.inner_text("main")
        shot(page, shots, f"card-signed-in-{locale}")
