"""Who is signed in to the staff pages, and the rules of access every page view uses.

- `Principal`: the Flask-Login user, made from a live server-side session
  (services.staff_auth.live_session); `get_id()` is the session's token, so Flask-Login keeps
  nothing else in the cookie.
- `roles_required(*roles)`: a view for these roles only (others get 403; a stranger is sent to
  sign in).
- `staff_user()`: the signed-in user's database row in the request's session.
- `Page`: one page of a list (keyset pagination: `?after=<last id>`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import abort, current_app, request, url_for
from flask_login import UserMixin, current_user

from server.errors import Forbidden
from server.http.framework import ctx
from server.services.staff_auth import SignedIn
from server.store.db import db
from server.store.models import Role, StaffUser

PAGE_SIZE = 25

View = TypeVar("View", bound=Callable[..., Any])


class Principal(UserMixin):  # type: ignore[misc]
    """The signed-in staff member of this request."""

    def __init__(self, token: str, signed_in: SignedIn) -> None:
        self.token = token
        self.session_id = signed_in.session_id
        self.user_id = signed_in.user_id
        self.name = signed_in.name
        self.role = signed_in.role
        self.region_id = signed_in.region_id
        self.must_change_password = signed_in.must_change_password
        self.signed_in = signed_in

    def get_id(self) -> str:
        return self.token

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}"


def roles_required(*roles: Role) -> Callable[[View], View]:
    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def staff_user() -> StaffUser:
    """The signed-in user's row, in the request's database session."""
    user = db.session.get(StaffUser, current_user.user_id)
    if user is None or not user.active:
        raise Forbidden("this user is disabled", code="user_disabled")
    return user


def query_int(name: str, default: int = 0, high: int = 2**62) -> int:
    raw = request.args.get(name, "")
    return int(raw) if raw.isdigit() and int(raw) <= high else default


@dataclass(frozen=True)
class Page:
    items: Sequence[Any]
    next_url: str | None
    first_url: str | None


def page_of(items: Sequence[Any], key: Callable[[Any], int], size: int = PAGE_SIZE) -> Page:
    """The first `size` of `items` (the query asked for size + 1, to know if more follow)."""
    endpoint = request.endpoint or ""
    args = {k: v for k, v in request.args.items() if k != "after"}
    shown = items[:size]
    next_url = (
        url_for(endpoint, **(request.view_args or {}), **args, after=key(shown[-1]))
        if len(items) > size
        else None
    )
    first_url = (
        url_for(endpoint, **(request.view_args or {}), **args) if "after" in request.args else None
    )
    return Page(shown, next_url, first_url)


__all__ = [
    "PAGE_SIZE",
    "Page",
    "Principal",
    "ctx",
    "page_of",
    "query_int",
    "roles_required",
    "staff_user",
]
