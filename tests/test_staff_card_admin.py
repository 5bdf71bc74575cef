"""The administrator's staff-card page in process (SQLite and PostgreSQL): a user's staff cards
listed (GUID shortened, dates, state; paginated), a card linked by its GUID or its certificate,
one revoked with a reason, each audited with the administrator as actor; bad input refused next
to its field with nothing written; a town administrator cannot reach a user of another town; CSRF;
a revoked card no longer signs in (server.web.admin, server.services.staff_cards)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from server import cli
from server.services import staff_cards
from server.store.models import AuditEntry, CardRevocation, Role
from server.store.models import StaffCard as StaffCardRow
from tests.fixtures.database import CityCA, ServerWorld, TestCard
from tests.fixtures.staff_card import StaffCard
from tests.staff_browser import StaffBrowser, make_staff
from tests.test_staff_card_sign_in import answer, challenge_of

TOWN = "C01-T01"
OTHER_TOWN = "C01-T02"


def pem(card: TestCard) -> str:
    return x509.load_der_x509_certificate(card.certificate_der).public_bytes(Encoding.PEM).decode()


def audited(world: ServerWorld, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    with world.sessionmaker() as session:
        return [
            (e.actor, e.subject, json.loads(e.detail) if e.detail else {})
            for e in session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        ]


def linked_guids(world: ServerWorld) -> set[str]:
    with world.sessionmaker() as session:
        return set(session.scalars(select(StaffCardRow.guid)))


def card_rows(page: str) -> dict[str, str]:
    """The cards table's rows: GUID → its state (data-status)."""
    return dict(re.findall(r'<tr data-card="([0-9a-f]{32})" data-status="(\w+)"', page))


@pytest.fixture
def admin(server_world: ServerWorld) -> StaffBrowser:
    make_staff(server_world, "admin-city", Role.ADMINISTRATOR, None)
    browser = StaffBrowser(server_world.app, address="10.0.0.7")
    browser.client.set_cookie("onecard_language", "en", domain="localhost")
    assert browser.sign_in("admin-city").status_code == 302
    return browser


@pytest.fixture
def nurse(server_world: ServerWorld) -> int:
    return make_staff(server_world, "nurse-li", Role.STATION_STAFF, TOWN)


def test_an_administrator_links_cards_by_certificate_and_by_guid_and_sees_them(
    server_world: ServerWorld, admin: StaffBrowser, nurse: int
) -> None:
    page = f"/admin/users/{nurse}/cards"
    assert f'href="{page}"' in admin.get(f"/admin/users/{nurse}").get_data(as_text=True)
    empty = admin.get(page)
    assert empty.status_code == 200 and card_rows(admin.last_page) == {}

    by_certificate, by_guid = StaffCard(server_world.ca), StaffCard(server_world.ca)
    done = admin.post(page, {"action": "link", "link-card": pem(by_certificate)})
    assert done.status_code == 302, admin.last_page
    done = admin.post(
        page, {"action": "link", "link-card": str(uuid.UUID(bytes=by_guid.guid)).upper()}
    )
    assert done.status_code == 302, admin.last_page

    listing = admin.get(page).get_data(as_text=True)
    assert card_rows(listing) == {by_certificate.guid.hex(): "active", by_guid.guid.hex(): "active"}
    short = f"{by_certificate.guid.hex()[:8]}…{by_certificate.guid.hex()[-4:]}"
    assert short in listing
    row = listing.split(f'data-card="{by_certificate.guid.hex()}"')[1].split("</tr>")[0]
    assert "2021-01-01" in row and "2036-01-01" in row  # the certificate's dates
    row = listing.split(f'data-card="{by_guid.guid.hex()}"')[1].split("</tr>")[0]
    assert "2036-01-01" not in row  # a GUID alone says nothing of the dates...

    nurse_browser = StaffBrowser(server_world.app)
    assert answer(nurse_browser, by_guid, challenge_of(nurse_browser)).status_code == 200
    listing = admin.get(page).get_data(as_text=True)
    row = listing.split(f'data-card="{by_guid.guid.hex()}"')[1].split("</tr>")[0]
    assert "2036-01-01" in row  # ...until the card signs in with its certificate

    admin_id = admin_user_id(server_world)
    assert audited(server_world, "staff_card.assign") == [
        (
            f"user:{admin_id}",
            f"staff-card:{by_certificate.guid.hex()}",
            {"user": nurse, "by": "certificate"},
        ),
        (f"user:{admin_id}", f"staff-card:{by_guid.guid.hex()}", {"user": nurse, "by": "guid"}),
    ]


def admin_user_id(world: ServerWorld) -> int:
    from server.store.models import StaffUser

    with world.sessionmaker() as session:
        found = session.scalar(select(StaffUser.id).where(StaffUser.name == "admin-city"))
        assert found is not None
        return found


@pytest.mark.parametrize(
    "case, words",
    [
        ("empty", "This field is required"),
        ("nonsense", "32 hexadecimal digits"),
        ("other_ca", "not from the city card CA"),
        ("resident_certificate", "a resident's card"),
        ("resident_guid", "a resident's card"),
        ("linked_elsewhere", "already linked"),
        ("garbled_certificate", "cannot be read"),
    ],
)
def test_a_card_that_cannot_be_linked_is_refused_next_to_the_field(
    server_world: ServerWorld, admin: StaffBrowser, nurse: int, case: str, words: str
) -> None:
    other = make_staff(server_world, "tech-zhao", Role.TECHNICIAN, TOWN)
    taken = StaffCard(server_world.ca)
    with server_world.sessionmaker() as session:
        staff_cards.assign(session, server_world.ctx, "tech-zhao", taken.guid.hex())
        session.commit()
    text = {
        "empty": "",
        "nonsense": "not a card",
        "other_ca": pem(StaffCard(CityCA())),
        "resident_certificate": pem(TestCard(server_world.ca)),
        "resident_guid": server_world.card.guid.hex(),
        "linked_elsewhere": taken.guid.hex(),
        "garbled_certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    }[case]
    before = audited(server_world, "staff_card.assign")
    refused = admin.post(f"/admin/users/{nurse}/cards", {"action": "link", "link-card": text})
    assert refused.status_code == 400
    error = re.search(r'<p class="error" id="link-card-error">([^<]*)</p>', admin.last_page)
    assert error is not None and words in error.group(1), admin.last_page
    assert 'aria-invalid="true"' in admin.last_page
    assert linked_guids(server_world) == {taken.guid.hex()}
    assert audited(server_world, "staff_card.assign") == before
    assert other  # the other user keeps their card


def test_a_revoked_card_no_longer_signs_in_and_is_on_the_revocation_list(
    server_world: ServerWorld, admin: StaffBrowser, nurse: int
) -> None:
    card = StaffCard(server_world.ca)
    page = f"/admin/users/{nurse}/cards"
    assert admin.post(page, {"action": "link", "link-card": card.guid.hex()}).status_code == 302
    nurse_browser = StaffBrowser(server_world.app)
    assert answer(nurse_browser, card, challenge_of(nurse_browser)).status_code == 200

    # No reason chosen: refused next to this card's reason, the card still active.
    token = admin.csrf(admin.get(page).get_data(as_text=True))
    refused = admin.post(
        page,
        {
            "action": "revoke",
            "revoke-guid": card.guid.hex(),
            "revoke-reason": "",
            "revoke-csrf_token": token,
        },
        csrf=False,
    )
    assert refused.status_code == 400
    assert f'id="revoke-reason-{card.guid.hex()}-error"' in admin.last_page
    assert card_rows(admin.last_page) == {card.guid.hex(): "active"}

    done = admin.post(
        page,
        {
            "action": "revoke",
            "revoke-guid": card.guid.hex(),
            "revoke-reason": "lost",
            "revoke-csrf_token": token,
        },
        csrf=False,
    )
    assert done.status_code == 302, admin.last_page
    listing = admin.get(page).get_data(as_text=True)
    assert card_rows(listing) == {card.guid.hex(): "revoked"}
    assert "lost" in listing.split(f'data-card="{card.guid.hex()}"')[1].split("</tr>")[0]
    with server_world.sessionmaker() as session:
        assert (
            session.scalar(
                select(CardRevocation.reason).where(CardRevocation.card_guid == card.guid.hex())
            )
            == "lost"
        )
    assert audited(server_world, "staff_card.revoke") == [
        (
            f"user:{admin_user_id(server_world)}",
            f"staff-card:{card.guid.hex()}",
            {"user": nurse, "reason": "lost"},
        )
    ]
    again = StaffBrowser(server_world.app, address="10.0.0.3")
    refused = answer(again, card, challenge_of(again))
    assert refused.status_code == 401 and refused.get_json()["code"] == "card_revoked"
    assert again.get("/account").status_code == 302
    # A revoked card cannot be linked again, to this user or another.
    relinked = admin.post(page, {"action": "link", "link-card": card.guid.hex()})
    assert relinked.status_code == 400 and "already linked" in admin.last_page


def test_a_card_of_another_user_is_not_revoked_from_this_users_page(
    server_world: ServerWorld, admin: StaffBrowser, nurse: int
) -> None:
    make_staff(server_world, "tech-zhao", Role.TECHNICIAN, TOWN)
    theirs = StaffCard(server_world.ca)
    with server_world.sessionmaker() as session:
        staff_cards.assign(session, server_world.ctx, "tech-zhao", theirs.guid.hex())
        session.commit()
    page = f"/admin/users/{nurse}/cards"
    token = admin.csrf(admin.get(page).get_data(as_text=True))
    refused = admin.post(
        page,
        {
            "action": "revoke",
            "revoke-guid": theirs.guid.hex(),
            "revoke-reason": "stolen",
            "revoke-csrf_token": token,
        },
        csrf=False,
    )
    assert refused.status_code == 400 and "This user has no such card" in admin.last_page
    assert audited(server_world, "staff_card.revoke") == []


def test_a_town_administrator_reaches_only_their_towns_users_cards(
    server_world: ServerWorld, nurse: int
) -> None:
    far = make_staff(server_world, "tech-far", Role.TECHNICIAN, OTHER_TOWN)
    far_card = StaffCard(server_world.ca)
    with server_world.sessionmaker() as session:
        staff_cards.assign(session, server_world.ctx, "tech-far", far_card.guid.hex())
        session.commit()
    make_staff(server_world, "admin-town", Role.ADMINISTRATOR, TOWN)
    town = StaffBrowser(server_world.app, address="10.0.0.8")
    assert town.sign_in("admin-town").status_code == 302
    assert town.get(f"/admin/users/{far}/cards").status_code == 403
    token = town.csrf(town.get(f"/admin/users/{nurse}/cards").get_data(as_text=True))
    for data in (
        {"action": "link", "link-card": StaffCard(server_world.ca).guid.hex()},
        {"action": "revoke", "revoke-guid": far_card.guid.hex(), "revoke-reason": "lost"},
    ):
        prefix = data["action"]
        refused = town.post(
            f"/admin/users/{far}/cards", {**data, f"{prefix}-csrf_token": token}, csrf=False
        )
        assert refused.status_code == 403
    assert linked_guids(server_world) == {far_card.guid.hex()}
    assert audited(server_world, "staff_card.revoke") == []
    # Their own town's user: linked.
    mine = StaffCard(server_world.ca)
    done = town.post(
        f"/admin/users/{nurse}/cards", {"action": "link", "link-card": mine.guid.hex()}
    )
    assert done.status_code == 302
    # Other roles do not see the page at all.
    make_staff(server_world, "tech-town", Role.TECHNICIAN, TOWN)
    technician = StaffBrowser(server_world.app, address="10.0.0.9")
    assert technician.sign_in("tech-town").status_code == 302
    assert technician.get(f"/admin/users/{nurse}/cards").status_code == 403


def test_a_link_without_the_forms_token_is_refused(
    server_world: ServerWorld, admin: StaffBrowser, nurse: int
) -> None:
    refused = admin.post(
        f"/admin/users/{nurse}/cards",
        {"action": "link", "link-card": StaffCard(server_world.ca).guid.hex()},
        csrf=False,
    )
    assert refused.status_code == 400
    assert linked_guids(server_world) == set()


def test_many_cards_are_shown_a_page_at_a_time(
    server_world: ServerWorld, admin: StaffBrowser, nurse: int
) -> None:
    guids = []
    with server_world.sessionmaker() as session:
        for _ in range(27):
            guids.append(
                staff_cards.assign(session, server_world.ctx, "nurse-li", uuid.uuid4().hex)
            )
            server_world.clock.advance(60)
        session.commit()
    first = admin.get(f"/admin/users/{nurse}/cards").get_data(as_text=True)
    assert list(card_rows(first)) == guids[::-1][:25]  # newest first
    following = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert following is not None
    second = admin.get(following.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert list(card_rows(second)) == guids[::-1][25:]
    assert re.search(r'rel="next"', second) is None


def test_the_command_line_links_by_certificate_and_revokes_with_a_reason(
    server_world: ServerWorld, database_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("ONECARD_DATABASE_URL", database_url)
    monkeypatch.setenv("ONECARD_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("ONECARD_FIELD_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    ca_file = tmp_path / "ca.der"
    ca_file.write_bytes(server_world.ca.der)
    monkeypatch.setenv("ONECARD_CARD_CA_CERT", str(ca_file))
    make_staff(server_world, "tech-zhao", Role.TECHNICIAN, None)
    card = StaffCard(server_world.ca)
    certificate = tmp_path / "card.der"
    certificate.write_bytes(card.certificate_der)
    assert (
        cli.main(["staff-card", "assign", "--name", "tech-zhao", "--certificate", str(certificate)])
        == 0
    )
    resident = tmp_path / "resident.der"
    resident.write_bytes(TestCard(server_world.ca).certificate_der)
    assert (
        cli.main(["staff-card", "assign", "--name", "tech-zhao", "--certificate", str(resident)])
        != 0
    )
    assert cli.main(["staff-card", "revoke", "--guid", card.guid.hex(), "--reason", "stolen"]) == 0
    with server_world.sessionmaker() as session:
        row = session.get(StaffCardRow, card.guid.hex())
        assert row is not None and row.revoke_reason == "stolen" and row.expires_at is not None
    assert [(a, d) for a, _s, d in audited(server_world, "staff_card.revoke")] == [
        ("cli", {"user": row.user_id, "reason": "stolen"})
    ]
