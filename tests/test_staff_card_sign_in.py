"""Staff-card sign-in in process (SQLite and PostgreSQL): the server's challenge, the card's
answer checked against the city card CA, the staff policy (the PIN-bound 9A certificate only,
never the 9E one), revocation and the card's link to a user; single use and expiry; a role that
must use its card is refused its password; every refusal audited (server.services.staff_cards,
server.web.auth)."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from cardsvc.signin import SignInChallenge
from server import cli
from server.config import ConfigError
from server.services import staff_cards
from server.store.models import AuditEntry, CardRevocation, Role, StaffUser
from server.web.base import EXTENSION
from server.web.setup import settings_from
from tests.fixtures.database import CityCA, ServerWorld, TestCard
from tests.fixtures.staff_card import StaffCard
from tests.staff_browser import StaffBrowser, make_staff


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def challenge_of(browser: StaffBrowser) -> bytes:
    """A challenge from the server, asked as the sign-in page asks (CSRF header)."""
    browser.get("/sign-in")
    response = browser.client.post(
        "/auth/card/challenge",
        base_url="https://localhost",
        headers={"X-CSRFToken": browser.csrf()},
        environ_base={"REMOTE_ADDR": browser.address},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return base64.b64decode(response.get_json()["challenge"])


def answer(
    browser: StaffBrowser,
    card: TestCard,
    challenge: bytes,
    *,
    signed: bytes | None = None,
    key_9e: bool = False,
) -> Any:
    """What the card service hands the page: a staff card's 9A certificate and signature (with
    `key_9e`, its 9E pair instead, which signs without a PIN); a resident's card has only 9E."""
    key, certificate = (
        card.sign_in_pair()
        if isinstance(card, StaffCard) and not key_9e
        else (card.key, card.certificate_der)
    )
    signature = key.sign(signed or challenge, ec.ECDSA(hashes.SHA256()))
    browser.get("/sign-in")
    return browser.client.post(
        "/auth/card/verify",
        json={
            "challenge": _b64(challenge),
            "certificate": _b64(certificate),
            "signature": _b64(signature),
        },
        base_url="https://localhost",
        headers={"X-CSRFToken": browser.csrf()},
        environ_base={"REMOTE_ADDR": browser.address},
    )


def refusals(world: ServerWorld) -> list[str]:
    with world.sessionmaker() as session:
        return [
            json.loads(e.detail)["reason"]
            for e in session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == "staff.sign_in.failed")
                .order_by(AuditEntry.id)
            )
        ]


@pytest.fixture
def nurse_card(server_world: ServerWorld) -> StaffCard:
    make_staff(server_world, "nurse-li", Role.STATION_STAFF, None)
    card = StaffCard(server_world.ca)
    with server_world.sessionmaker() as session:
        staff_cards.assign(session, server_world.ctx, "nurse-li", card.guid.hex())
        session.commit()
    return card


def signed_in_as(browser: StaffBrowser) -> str:
    page = browser.get("/account")
    assert page.status_code == 200, page.status_code
    return page.get_data(as_text=True)


def test_a_linked_staff_card_signs_in_and_opens_a_server_side_session(
    server_world: ServerWorld, nurse_card: StaffCard
) -> None:
    browser = StaffBrowser(server_world.app)
    response = answer(browser, nurse_card, challenge_of(browser))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "signed_in"
    assert "nurse-li" in signed_in_as(browser)
    with server_world.sessionmaker() as session:
        actions = [
            (e.action, e.detail)
            for e in session.scalars(select(AuditEntry).where(AuditEntry.action.like("staff.%")))
        ]
    assert len(actions) == 1 and actions[0][0] == "staff.sign_in"
    assert "card" in str(actions[0][1])


def test_a_challenge_is_used_once(server_world: ServerWorld, nurse_card: StaffCard) -> None:
    browser = StaffBrowser(server_world.app)
    challenge = challenge_of(browser)
    assert answer(browser, nurse_card, challenge).status_code == 200
    replay = StaffBrowser(server_world.app, address="10.0.0.9")
    refused = answer(replay, nurse_card, challenge)
    assert refused.status_code == 401
    assert refused.get_json()["code"] == "challenge_used"
    assert replay.get("/account").status_code == 302


def test_an_expired_challenge_is_refused(server_world: ServerWorld, nurse_card: StaffCard) -> None:
    browser = StaffBrowser(server_world.app)
    challenge = challenge_of(browser)
    server_world.clock.advance(staff_cards.CHALLENGE_LIFETIME.total_seconds() + 1)
    refused = answer(browser, nurse_card, challenge)
    assert refused.status_code == 401
    assert refused.get_json()["code"] == "challenge_expired"


def test_a_challenge_the_server_did_not_issue_or_for_another_origin_is_refused(
    server_world: ServerWorld, nurse_card: StaffCard
) -> None:
    browser = StaffBrowser(server_world.app)
    issued = SignInChallenge.parse(challenge_of(browser))
    phished = SignInChallenge("https://onecard.example.evil", issued.nonce, issued.expires_ms)
    made_up = SignInChallenge(issued.origin, bytes(16), issued.expires_ms)
    for challenge in (phished, made_up):
        refused = answer(browser, nurse_card, challenge.to_bytes())
        assert refused.status_code == 401
        assert refused.get_json()["code"] == "challenge_unknown"


@pytest.mark.parametrize(
    "case, code",
    [
        ("other_ca", "card_untrusted_issuer"),
        ("resident_card", "not_staff_card"),
        ("key_9e", "not_pin_bound_key"),
        ("unlinked", "card_unassigned"),
        ("revoked", "card_revoked"),
        ("wrong_key", "bad_signature"),
        ("disabled_user", "user_disabled"),
    ],
)
def test_a_card_that_is_not_a_live_linked_staff_card_is_refused_and_audited(
    server_world: ServerWorld, nurse_card: StaffCard, case: str, code: str
) -> None:
    card: TestCard = nurse_card
    signed: bytes | None = None
    key_9e = case == "key_9e"  # the staff card's own 9E key: no PIN needed to sign with it
    browser = StaffBrowser(server_world.app)
    challenge = challenge_of(browser)
    if case == "other_ca":
        card = StaffCard(CityCA())
    elif case == "resident_card":
        card = TestCard(server_world.ca)
    elif case == "unlinked":
        card = StaffCard(server_world.ca)
    elif case == "revoked":
        with server_world.sessionmaker() as session:
            staff_cards.revoke(session, server_world.ctx, nurse_card.guid.hex())
            session.commit()
    elif case == "wrong_key":
        signed = challenge + b" "  # the card's key, but not over this challenge
    elif case == "disabled_user":
        with server_world.sessionmaker() as session:
            user = session.scalar(select(StaffUser).where(StaffUser.name == "nurse-li"))
            assert user is not None
            user.active = False
            session.commit()
    refused = answer(browser, card, challenge, signed=signed, key_9e=key_9e)
    assert refused.status_code == 401
    assert refused.get_json()["code"] == code
    assert browser.get("/account").status_code == 302
    assert refusals(server_world) == [code]


def test_the_command_line_links_a_card_and_revokes_it_onto_the_revocation_list(
    server_world: ServerWorld, database_url: str, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("ONECARD_DATABASE_URL", database_url)
    monkeypatch.setenv("ONECARD_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("ONECARD_FIELD_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    make_staff(server_world, "tech-zhao", Role.TECHNICIAN, None)
    card = StaffCard(server_world.ca)
    guid = str(uuid.UUID(bytes=card.guid))  # the UUID form, as printed on a card's record
    assert cli.main(["staff-card", "assign", "--name", "tech-zhao", "--guid", guid]) == 0
    browser = StaffBrowser(server_world.app)
    assert answer(browser, card, challenge_of(browser)).status_code == 200
    assert cli.main(["staff-card", "assign", "--name", "tech-zhao", "--guid", guid]) != 0
    assert cli.main(["staff-card", "revoke", "--guid", card.guid.hex()]) == 0
    with server_world.sessionmaker() as session:
        assert session.scalar(
            select(CardRevocation.reason).where(CardRevocation.card_guid == card.guid.hex())
        )
    again = StaffBrowser(server_world.app, address="10.0.0.3")
    refused = answer(again, card, challenge_of(again))
    assert refused.get_json()["code"] == "card_revoked"


def test_a_role_that_must_use_its_card_is_refused_its_password(
    server_world: ServerWorld, nurse_card: StaffCard
) -> None:
    make_staff(server_world, "admin-wang", Role.ADMINISTRATOR, None)
    settings = server_world.app.extensions[EXTENSION]
    server_world.app.extensions[EXTENSION] = dataclasses.replace(
        settings, card_roles=frozenset({Role.STATION_STAFF})
    )
    nurse = StaffBrowser(server_world.app)
    refused = nurse.sign_in("nurse-li")
    assert refused.status_code == 401
    assert nurse.get("/account").status_code == 302
    assert refusals(server_world) == ["card_required"]
    admin = StaffBrowser(server_world.app, address="10.0.0.2")
    assert admin.sign_in("admin-wang").status_code == 302  # other roles keep their password
    assert answer(nurse, nurse_card, challenge_of(nurse)).status_code == 200


def test_the_card_roles_setting_is_read_from_the_environment_names() -> None:
    settings = settings_from({"ONECARD_CARD_SIGN_IN_ROLES": "station_staff, technician"})
    assert settings.card_roles == {Role.STATION_STAFF, Role.TECHNICIAN}
    assert settings_from({}).card_roles == frozenset()
    with pytest.raises(ConfigError, match="ONECARD_CARD_SIGN_IN_ROLES: no role nurse"):
        settings_from({"ONECARD_CARD_SIGN_IN_ROLES": "nurse"})


def test_the_verify_call_needs_the_csrf_token(
    server_world: ServerWorld, nurse_card: StaffCard
) -> None:
    browser = StaffBrowser(server_world.app)
    challenge = challenge_of(browser)
    signature = nurse_card.sign_in_key.sign(challenge, ec.ECDSA(hashes.SHA256()))
    response = browser.client.post(
        "/auth/card/verify",
        json={
            "challenge": _b64(challenge),
            "certificate": _b64(nurse_card.sign_in_certificate_der),
            "signature": _b64(signature),
        },
        base_url="https://localhost",
    )
    assert response.status_code == 400
    assert browser.get("/account").status_code == 302


def test_prune_forgets_expired_challenges_only(
    server_world: ServerWorld, nurse_card: StaffCard
) -> None:
    browser = StaffBrowser(server_world.app)
    old = challenge_of(browser)
    server_world.clock.advance(staff_cards.CHALLENGE_LIFETIME.total_seconds() + 1)
    fresh = challenge_of(browser)
    with server_world.sessionmaker() as session:
        assert staff_cards.prune_challenges(session, server_world.ctx) == 1
        session.commit()
    assert answer(browser, nurse_card, old).get_json()["code"] == "challenge_unknown"
    assert answer(browser, nurse_card, fresh).status_code == 200


def test_behind_a_proxy_the_challenge_names_the_configured_origin(
    server_world: ServerWorld, nurse_card: StaffCard
) -> None:
    settings = server_world.app.extensions[EXTENSION]
    server_world.app.extensions[EXTENSION] = dataclasses.replace(
        settings, public_origin="https://onecard.city.example"
    )
    assert settings_from(
        {"ONECARD_PUBLIC_ORIGIN": "https://onecard.city.example/"}
    ).public_origin == ("https://onecard.city.example")
    browser = StaffBrowser(server_world.app)
    challenge = challenge_of(browser)  # the request itself reaches https://localhost
    assert SignInChallenge.parse(challenge).origin == "https://onecard.city.example"
    assert answer(browser, nurse_card, challenge).status_code == 200
