"""Staff sign-in in process (SQLite and PostgreSQL): passwords, revocable sessions in a strict
cookie, CSRF, idle timeout, the failure throttle, administrators' user operations, bearer tokens
with expiry, and every step in the audit log (server.services.staff_auth, server.web.auth)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from sqlalchemy import select

from server import cli
from server.services import staff_auth
from server.store.models import AuditEntry, Role, StaffUser
from tests.fixtures.database import ServerWorld
from tests.staff_browser import StaffBrowser, make_staff

TOWN = "C01-T01"
OTHER_TOWN = "C01-T02"


def audit_actions(world: ServerWorld, prefix: str = "") -> list[tuple[str, str, str]]:
    with world.sessionmaker() as session:
        return [
            (e.actor, e.action, e.subject)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
            if e.action.startswith(prefix)
        ]


def signed_in_page(browser: StaffBrowser, path: str = "/account") -> bool:
    response = browser.get(path)
    return response.status_code == 200 and "/sign-in" not in response.headers.get("Location", "")


@pytest.fixture
def admin(server_world: ServerWorld) -> int:
    return make_staff(server_world, "admin-wang", Role.ADMINISTRATOR, None, must_change=False)


def test_sign_in_gives_a_strict_cookie_and_sign_out_ends_the_session_on_the_server(
    server_world: ServerWorld, admin: int
) -> None:
    browser = StaffBrowser(server_world.app)
    assert browser.get("/account").status_code == 302  # a stranger is sent to sign in
    page = browser.get("/sign-in")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"

    signed = browser.sign_in("admin-wang")
    assert signed.status_code == 302, signed.get_data(as_text=True)
    set_cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "Secure" in set_cookie and "SameSite=Strict" in set_cookie
    assert signed_in_page(browser)
    stolen = browser.cookie().value  # what an attacker who copied the cookie would replay

    out = browser.post("/sign-out", {}, csrf_from="/account")
    assert out.status_code == 302
    replay = StaffBrowser(server_world.app)
    replay.client.set_cookie("onecard_staff", stolen, domain="localhost")
    assert replay.get("/account").status_code == 302  # the server ended it: the cookie is dead

    actions = audit_actions(server_world, "staff.")
    assert actions == [
        (f"user:{admin}", "staff.sign_in", f"user:{admin}"),
        (f"user:{admin}", "staff.sign_out", f"user:{admin}"),
    ]


def test_a_wrong_password_is_refused_alike_for_known_and_unknown_names(
    server_world: ServerWorld, admin: int
) -> None:
    browser = StaffBrowser(server_world.app)
    wrong = browser.sign_in("admin-wang", "not the password")
    nobody = browser.sign_in("nobody-at-all", "not the password")
    assert wrong.status_code == nobody.status_code == 401
    assert (
        "The user name or the password is wrong." in browser.last_page
        or "用户名或密码不正确" in browser.last_page
    )
    assert not signed_in_page(browser)
    assert [a[1:] for a in audit_actions(server_world, "staff.")] == [
        ("staff.sign_in.failed", f"user:{admin}"),
        ("staff.sign_in.failed", "user:unknown"),
    ]


def test_failures_lock_the_guessing_address_and_not_the_colleague(
    server_world: ServerWorld, admin: int
) -> None:
    stranger = StaffBrowser(server_world.app, address="10.9.9.9")
    for _ in range(staff_auth.PAIR_FREE_FAILURES):
        assert stranger.sign_in("admin-wang", "guess").status_code == 401
    # Locked from that address, even with the right password.
    assert stranger.sign_in("admin-wang").status_code == 401
    assert "10:00:30" in stranger.last_page  # the page says until when (city time)
    # The colleague at their own desk is not locked out by the stranger.
    colleague = StaffBrowser(server_world.app, address="10.0.0.7")
    assert colleague.sign_in("admin-wang").status_code == 302
    # The lock is short: after it, the right password works from there too.
    server_world.clock.advance(31)
    assert stranger.sign_in("admin-wang").status_code == 302
    assert ("address:10.9.9.9", "staff.sign_in.locked", f"user:{admin}") in audit_actions(
        server_world, "staff."
    )


def test_guessing_from_many_addresses_is_slowed_for_a_minute_only(
    server_world: ServerWorld, admin: int
) -> None:
    for n in range(staff_auth.USER_FREE_FAILURES):
        StaffBrowser(server_world.app, address=f"10.1.0.{n}").sign_in("admin-wang", "guess")
    colleague = StaffBrowser(server_world.app, address="10.0.0.7")
    assert colleague.sign_in("admin-wang").status_code == 401  # held for a minute
    server_world.clock.advance(61)
    assert colleague.sign_in("admin-wang").status_code == 302


def test_an_idle_session_ends(server_world: ServerWorld, admin: int) -> None:
    browser = StaffBrowser(server_world.app)
    browser.sign_in("admin-wang")
    server_world.clock.advance(29 * 60)
    assert signed_in_page(browser)  # used: the idle clock starts again
    server_world.clock.advance(29 * 60)
    assert signed_in_page(browser)
    server_world.clock.advance(31 * 60)
    assert not signed_in_page(browser)
    assert ("system", "staff.session.ended", f"user:{admin}") in audit_actions(server_world)


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    server_world: ServerWorld, admin: int
) -> None:
    browser = StaffBrowser(server_world.app)
    browser.sign_in("admin-wang")
    forged = browser.post(
        "/admin/users/new",
        {"name": "mallory", "role": "administrator", "region": "", "password": "0123456789ab"},
        csrf=False,
    )
    assert forged.status_code == 400
    assert "did not come from this site" in browser.last_page or "并非来自本站" in browser.last_page
    with server_world.sessionmaker() as session:
        assert session.scalar(select(StaffUser).where(StaffUser.name == "mallory")) is None
    # Sign-out without the token is refused too (a page elsewhere cannot sign you out).
    assert browser.post("/sign-out", {}, csrf=False).status_code == 400
    assert signed_in_page(browser)


def test_an_administrator_creates_a_user_who_must_choose_a_password(
    server_world: ServerWorld, admin: int
) -> None:
    browser = StaffBrowser(server_world.app)
    browser.sign_in("admin-wang")
    bad = browser.post(
        "/admin/users/new",
        {"name": "tech-li", "role": "technician", "region": "C01-T09", "password": "short"},
    )
    assert bad.status_code == 400
    assert 'id="password-error"' in browser.last_page  # the message is next to the field
    made = browser.post(
        "/admin/users/new",
        {"name": "tech-li", "role": "technician", "region": TOWN, "password": "first-password-1"},
    )
    assert made.status_code == 302, browser.last_page

    tech = StaffBrowser(server_world.app, address="10.0.0.8")
    assert tech.sign_in("tech-li", "first-password-1").status_code == 302
    assert tech.get("/technician/residents").headers["Location"].endswith("/account/password")
    changed = tech.post(
        "/account/password",
        {"current": "first-password-1", "password": "my-own-password", "repeat": "my-own-password"},
    )
    assert changed.status_code == 302, tech.last_page
    assert tech.get("/technician/residents").status_code == 200


def test_disabling_a_user_ends_their_sessions_at_once(
    server_world: ServerWorld, admin: int
) -> None:
    nurse = make_staff(server_world, "nurse-zhao", Role.STATION_STAFF, TOWN, must_change=False)
    at_desk = StaffBrowser(server_world.app, address="10.0.0.9")
    at_desk.sign_in("nurse-zhao")
    assert signed_in_page(at_desk)
    boss = StaffBrowser(server_world.app)
    boss.sign_in("admin-wang")
    done = boss.post(
        f"/admin/users/{nurse}", {"action": "toggle"}, csrf_from=f"/admin/users/{nurse}"
    )
    assert done.status_code == 302, boss.last_page
    assert not signed_in_page(at_desk)
    assert at_desk.sign_in("nurse-zhao").status_code == 401
    actions = audit_actions(server_world)
    assert (f"user:{admin}", "user.disable", f"user:{nurse}") in actions
    assert ("system", "staff.session.ended", f"user:{nurse}") in actions


def test_a_town_administrator_manages_only_their_town(server_world: ServerWorld) -> None:
    make_staff(server_world, "admin-town", Role.ADMINISTRATOR, TOWN, must_change=False)
    far = make_staff(server_world, "tech-far", Role.TECHNICIAN, OTHER_TOWN, must_change=False)
    browser = StaffBrowser(server_world.app)
    browser.sign_in("admin-town")
    assert browser.get(f"/admin/users/{far}").status_code == 403
    listing = browser.get("/admin/users").get_data(as_text=True)
    assert "tech-far" not in listing and "admin-town" in listing
    made = browser.post(
        "/admin/users/new",
        {"name": "x-city", "role": "administrator", "region": "", "password": "first-password-1"},
    )
    assert made.status_code == 400 and 'id="region-error"' in browser.last_page
    made = browser.post(
        "/admin/users/new",
        {
            "name": "x-far",
            "role": "technician",
            "region": OTHER_TOWN,
            "password": "first-password-1",
        },
    )
    assert made.status_code == 400 and 'id="region-error"' in browser.last_page


def bearer(world: ServerWorld, token: str) -> Any:
    return world.client.get("/api/v1/rules", headers={"Authorization": f"Bearer {token}"})


def test_bearer_tokens_expire_and_can_be_revoked_and_rotated(server_world: ServerWorld) -> None:
    w = server_world
    assert bearer(w, w.token).status_code == 200  # the fixture's token (create-user) works
    with w.sessionmaker() as session:
        user_id = session.scalar(select(StaffUser.id).where(StaffUser.name == "tech"))
        token = staff_auth.issue_token(session, w.ctx, user_id, label="script", days=1)
        session.commit()
        [row] = [t for t in staff_auth.list_tokens(session, w.ctx) if t["label"] == "script"]
    assert bearer(w, token).status_code == 200
    w.clock.advance(86_401)
    expired = bearer(w, token)
    assert expired.status_code == 401 and expired.get_json()["code"] == "token_expired"
    with w.sessionmaker() as session:
        fresh = staff_auth.rotate_token(session, w.ctx, row["id"], days=30)
        session.commit()
        states = {t["id"]: t["state"] for t in staff_auth.list_tokens(session, w.ctx)}
    assert states[row["id"]] == "revoked"
    assert bearer(w, fresh).status_code == 200
    with w.sessionmaker() as session:
        [new_row] = [
            t
            for t in staff_auth.list_tokens(session, w.ctx)
            if t["label"] == "script" and t["state"] == "live"
        ]
        staff_auth.revoke_token(session, w.ctx, new_row["id"])
        session.commit()
    assert bearer(w, fresh).status_code == 401


def test_the_command_line_makes_the_first_administrator_and_manages_tokens(
    server_world: ServerWorld, database_url: str, tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    monkeypatch.setenv("ONECARD_DATABASE_URL", database_url)
    monkeypatch.setenv("ONECARD_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.setenv("ONECARD_FIELD_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    monkeypatch.setattr("sys.stdin", io.StringIO("first-admin-pass\n"))
    assert (
        cli.main(
            ["create-user", "--name", "root-admin", "--role", "administrator", "--password-stdin"]
        )
        == 0
    )
    browser = StaffBrowser(server_world.app)
    assert browser.sign_in("root-admin", "first-admin-pass").status_code == 302
    assert browser.get("/admin/users").headers["Location"].endswith("/account/password")

    capsys.readouterr()
    assert cli.main(["tokens", "issue", "--name", "root-admin", "--label", "backup job"]) == 0
    token = capsys.readouterr().out.strip()
    assert bearer(server_world, token).status_code == 200
    assert cli.main(["tokens", "list"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if "backup job" in line]
    [row] = listed
    assert '"state": "live"' in row and '"user": "root-admin"' in row
    token_id = int(row.split('"id": ')[1].split(",")[0])
    assert cli.main(["tokens", "revoke", "--id", str(token_id)]) == 0
    assert bearer(server_world, token).status_code == 401


def test_the_station_desk_works_with_the_sign_in_session_and_its_csrf_token(
    server_world: ServerWorld,
) -> None:
    make_staff(server_world, "nurse-qian", Role.STATION_STAFF, TOWN, must_change=False)
    nurse = StaffBrowser(server_world.app)
    assert nurse.sign_in("nurse-qian").status_code == 302
    assert nurse.get("/").headers["Location"].endswith("/station")  # a nurse's first page
    desk = nurse.get("/station").get_data(as_text=True)
    csrf_token = nurse.csrf(desk.replace('name="csrf-token" content=', 'name="csrf_token" value='))
    me = nurse.get("/staff/v1/me")
    assert me.status_code == 200 and me.get_json()["name"] == "nurse-qian"
    body = {"station_id": "ST-NONE", "proof": {}}
    forged = nurse.client.post(
        "/staff/v1/exams/eligibility", json=body, base_url="https://localhost"
    )
    assert forged.status_code == 400  # no CSRF header: refused before anything is read
    sent = nurse.client.post(
        "/staff/v1/exams/eligibility",
        json=body,
        headers={"X-CSRFToken": csrf_token},
        base_url="https://localhost",
    )
    assert sent.status_code in (400, 404) and sent.get_json()["code"] != "bad_request"
    stranger = StaffBrowser(server_world.app)
    assert stranger.get("/staff/v1/me").get_json()["code"] == "token_missing"
