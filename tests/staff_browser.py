"""A staff member's browser in process (Flask's test client over https, with cookies), for the
staff pages' tests: reads a form's CSRF token from the page and sends it back, as a browser would.
"""

from __future__ import annotations

import html
import re
from typing import Any

from server.services import staff_auth
from server.store.models import Role

CSRF_INPUT = re.compile(
    r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"|'
    r'name="csrf_token" value="([^"]+)"'
)
PASSWORD = "correct horse battery"


class StaffBrowser:
    """One browser profile: its own cookie jar, its own address."""

    def __init__(self, app: Any, address: str = "10.0.0.1") -> None:
        self.client = app.test_client()
        self.address = address
        self.last_page = ""

    def _environ(self) -> dict[str, str]:
        return {"REMOTE_ADDR": self.address}

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(
            path, base_url="https://localhost", environ_base=self._environ(), **kwargs
        )
        self.last_page = response.get_data(as_text=True)
        return response

    def csrf(self, page: str | None = None) -> str:
        match = CSRF_INPUT.search(page if page is not None else self.last_page)
        assert match, "no CSRF token on the page"
        return html.unescape(match.group(1) or match.group(2))

    def post(
        self,
        path: str,
        data: dict[str, Any],
        *,
        csrf_from: str | None = None,
        csrf: bool = True,
        **kwargs: Any,
    ) -> Any:
        form = dict(data)
        if csrf:
            page = self.get(csrf_from or path).get_data(as_text=True)
            token_field = next(
                (m.group(0).split('"')[1] for m in re.finditer(r'name="[\w-]*csrf_token"', page)),
                "csrf_token",
            )
            form.setdefault(token_field, self.csrf(page))
        response = self.client.post(
            path, data=form, base_url="https://localhost", environ_base=self._environ(), **kwargs
        )
        self.last_page = response.get_data(as_text=True)
        return response

    def sign_in(self, name: str, password: str = PASSWORD) -> Any:
        return self.post("/sign-in", {"name": name, "password": password})

    def cookie(self) -> Any:
        return self.client.get_cookie("onecard_staff", domain="localhost")


def make_staff(
    world: Any,
    name: str,
    role: Role,
    region: str | None,
    password: str = PASSWORD,
    *,
    must_change: bool = False,
) -> int:
    """A staff user with a password (the first administrator is made this way, by the CLI)."""
    with world.sessionmaker() as session:
        user_id = staff_auth.bootstrap_user(
            session,
            world.ctx,
            name=name,
            role=role,
            region_code=region,
            password=password,
            must_change=must_change,
        )
        session.commit()
    return user_id
