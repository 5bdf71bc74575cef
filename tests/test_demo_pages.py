"""Every staff page `onecard demo` prints answers its role after a sign-in with the demo's
printed name and password (the demo server's own data, real sign-in form with its CSRF token)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from onecard.demo import STAFF_PAGES
from server.app import create_app
from server.demo import PreparedDemo, prepare_demo
from server.store.db import db
from tests.fixtures.database import TestKiosk

CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
ROLE_OF = {"nurse": "station_staff", "technician": "technician", "administrator": "administrator",
           "auditor": "auditor"}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[PreparedDemo, FlaskClient]]:
    url = f"sqlite:///{tmp_path / 'server.sqlite3'}"
    config = {"ONECARD_DATA_DIR": str(tmp_path / "data"), "ONECARD_COOKIE_SECURE": "0"}
    prepared = prepare_demo(
        database_url=url, kiosk_id="K-0001", kiosk_public_key=TestKiosk().public_key_b64,
        config=config,
    )
    app = create_app({**config, "ONECARD_DATABASE_URL": url})
    try:
        yield prepared, app.test_client()
    finally:
        db.dispose(app)


def sign_in(client: FlaskClient, name: str, password: str) -> None:
    form = client.get("/sign-in").get_data(as_text=True)
    token = CSRF.search(form)
    assert token, "the sign-in form carries a CSRF token"
    answer = client.post(
        "/sign-in", data={"name": name, "password": password, "csrf_token": token.group(1)}
    )
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]


@pytest.mark.parametrize("role", sorted(ROLE_OF))
def test_every_printed_page_answers_its_role(demo: tuple[PreparedDemo, FlaskClient], role: str) -> None:
    prepared, client = demo
    name, _role, password = next(s for s in prepared.staff if s[1] == ROLE_OF[role])
    sign_in(client, name, password)
    for who, path, _what in STAFF_PAGES:
        if who in (role, "everyone", "scripts"):
            answer = client.get(path)
            assert answer.status_code in (200, 302), f"{role} {path}: {answer.status_code}"
            if who == role:
                assert answer.status_code == 200, f"{role} {path}: {answer.status_code}"
