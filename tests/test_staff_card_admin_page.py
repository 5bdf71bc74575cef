"""The administrator's staff-card page in Debian's Chromium against the real server (its own
process, real HTTP, the city card CA configured), in Simplified Chinese and English: from the
user's page to their staff cards, a GUID of the wrong shape refused next to the field, a card
linked by pasting its certificate (its dates shown), a revocation without a reason refused next
to the card's reason, then revoked as lost; the card signs in before and is refused after
(`POST /auth/card/challenge` and `/auth/card/verify` called from the sign-in page, the card's
answer made by its test key). axe-core on every state, screenshots kept (tests/pages.py)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from onecard.platform import start_server
from onecard.procs import free_port
from server.app import context_of, create_app
from server.services import seed_demo, staff_auth
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import Role
from tests.fixtures.database import CityCA
from tests.fixtures.staff_card import StaffCard
from tests.pages import assert_accessible, chromium, page_in, shot
from tests.staff_browser import PASSWORD

FIELD_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@dataclass
class Stage:
    url: str
    ca: CityCA
    shots: Path


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("staff-card-admin")
    ca = CityCA()
    ca_file = base / "card-ca.der"
    ca_file.write_bytes(ca.der)
    env = {
        "ONECARD_DATABASE_URL": f"sqlite:///{base / 'onecard.db'}",
        "ONECARD_DATA_DIR": str(base / "data"),
        "ONECARD_FIELD_KEY": FIELD_KEY,
        "ONECARD_CARD_CA_CERT": str(ca_file),
        "ONECARD_COOKIE_SECURE": "0",  # plain HTTP on 127.0.0.1
    }
    upgrade(env["ONECARD_DATABASE_URL"])
    app = create_app(env)
    try:
        with db.bound(app).sessionmaker() as session:
            ctx = context_of(app)
            seed_demo(session, ctx)
            for name, role in [
                ("admin-city", Role.ADMINISTRATOR),
                ("nurse-zh-CN", Role.STATION_STAFF),
                ("nurse-en", Role.STATION_STAFF),
            ]:
                staff_auth.bootstrap_user(
                    session,
                    ctx,
                    name=name,
                    role=role,
                    region_code=None,
                    password=PASSWORD,
                    must_change=False,
                )
            session.commit()
    finally:
        db.dispose(app)
    port = free_port()
    server = start_server({**os.environ, **env}, port)
    try:
        yield Stage(f"http://127.0.0.1:{port}", ca, base / "screenshots")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def card_sign_in(page: Any, stage: Stage, card: StaffCard) -> dict[str, Any]:
    """From the sign-in page, as its script does: a challenge from the server (CSRF header),
    the card's answer, the server's verdict."""
    page.goto(f"{stage.url}/sign-in")
    challenge = page.evaluate(
        """async () => {
            const token = document.querySelector("meta[name=csrf-token]").content;
            const r = await fetch("/auth/card/challenge",
                {method: "POST", headers: {"X-CSRFToken": token}});
            return (await r.json()).challenge;
        }"""
    )
    key, certificate = card.sign_in_pair()
    signature = key.sign(base64.b64decode(challenge), ec.ECDSA(hashes.SHA256()))
    answer = {
        "challenge": challenge,
        "certificate": base64.b64encode(certificate).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    return dict(
        page.evaluate(
            """async (answer) => {
                const token = document.querySelector("meta[name=csrf-token]").content;
                const r = await fetch("/auth/card/verify", {method: "POST",
                    headers: {"X-CSRFToken": token, "Content-Type": "application/json"},
                    body: JSON.stringify(answer)});
                return {http: r.status, ...(await r.json())};
            }""",
            answer,
        )
    )


WORDS = {
    "zh-CN": {
        "title": "的工作卡",
        "shape": "32 位十六进制数字",
        "linked": "已关联",
        "reason": "请选择注销原因",
        "revoked": "已注销",
        "lost": "丢失",
    },
    "en": {
        "title": "Staff cards of",
        "shape": "32 hexadecimal digits",
        "linked": "linked",
        "reason": "Choose why the card is revoked.",
        "revoked": "revoked",
        "lost": "lost",
    },
}


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_an_administrator_links_and_revokes_a_staff_card(
    stage: Stage, browser: Any, locale: str
) -> None:
    words = WORDS[locale]
    nurse = f"nurse-{locale}"
    card = StaffCard(stage.ca)
    guid = card.guid.hex()
    with page_in(browser, locale) as page:
        page.goto(f"{stage.url}/sign-in")
        page.fill("#name", "admin-city")
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        page.click(f"a:text-is('{nurse}')")
        page.click("#staff-cards-link")
        assert words["title"] in page.inner_text("h1") and nurse in page.inner_text("h1")
        assert page.locator("tr[data-card]").count() == 0
        assert_accessible(page)

        page.fill("#link-card", "0123-not-a-guid")
        page.click("#link-card-submit")
        assert words["shape"] in page.inner_text("#link-card-error")
        assert page.get_attribute("#link-card", "aria-invalid") == "true"
        assert page.locator("tr[data-card]").count() == 0
        assert_accessible(page)
        shot(page, stage.shots, f"staff-card-link-refused-{locale}")

        pem = x509.load_der_x509_certificate(card.certificate_der).public_bytes(Encoding.PEM)
        page.fill("#link-card", pem.decode())
        page.click("#link-card-submit")
        assert words["linked"] in page.inner_text(".flashes")
        row = page.locator(f"tr[data-card='{guid}']")
        assert row.get_attribute("data-status") == "active"
        assert f"{guid[:8]}…{guid[-4:]}" in row.inner_text()
        assert "2021-01-01" in row.inner_text() and "2036-01-01" in row.inner_text()
        assert_accessible(page)
        shot(page, stage.shots, f"staff-card-linked-{locale}")

        with page_in(browser, locale) as desk:
            signed_in = card_sign_in(desk, stage, card)
            assert signed_in["http"] == 200 and signed_in["status"] == "signed_in", signed_in

        row.locator("button[value=revoke]").click()
        assert words["reason"] in page.inner_text(f"#revoke-reason-{guid}-error")
        assert page.locator(f"tr[data-card='{guid}']").get_attribute("data-status") == "active"
        assert_accessible(page)
        shot(page, stage.shots, f"staff-card-revoke-refused-{locale}")

        page.select_option(f"#revoke-reason-{guid}", "lost")
        page.locator(f"tr[data-card='{guid}'] button[value=revoke]").click()
        assert words["revoked"] in page.inner_text(".flashes")
        row = page.locator(f"tr[data-card='{guid}']")
        assert row.get_attribute("data-status") == "revoked"
        assert words["lost"] in row.inner_text()
        assert row.locator("button").count() == 0
        assert_accessible(page)
        shot(page, stage.shots, f"staff-card-revoked-{locale}")
        assert page.script_errors == []

    with page_in(browser, locale) as desk:
        refused = card_sign_in(desk, stage, card)
        assert refused["http"] == 401 and refused["code"] == "card_revoked", refused
        desk.goto(f"{stage.url}/account")
        assert "/sign-in" in desk.url
