"""What every staff page shares (issues 11 and 12): the blueprint factory with its checks, the
navigation, Flask-Login over server-side sessions, CSRF, the security headers and HTML error
pages. `server.web.setup.init_app` wires it into the app.

Every staff page blueprint is made with `staff_blueprint(name, import_name, prefix)` and listed
with `register_navigation`: it then gets a CSRF check on every POST, the must-change-password
gate, the strict content security policy, no caching, and HTML error pages in the person's
language. Templates extend `base.html`; forms use the macros of `macros.html`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from server.errors import ApiError
from server.http.framework import context_of
from server.services.staff_auth import live_session
from server.store.db import db
from server.store.models import Role
from server.web.access import Principal
from server.web.i18n import _, _l

EXTENSION = "onecard_web"

# Pages talk to their own server and, on a desk, to the local card service on 127.0.0.1.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' http://127.0.0.1:* http://localhost:*; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

login_manager = LoginManager()
csrf = CSRFProtect()

ROLE_LABELS = {
    Role.ADMINISTRATOR: _l("administrator"),
    Role.TECHNICIAN: _l("technician"),
    Role.STATION_STAFF: _l("nurse"),
    Role.AUDITOR: _l("auditor"),
}


@dataclass(frozen=True)
class WebSettings:
    cookie_secure: bool
    idle: dt.timedelta
    card_roles: frozenset[Role] = frozenset()  # roles that must sign in with a staff card
    public_origin: str | None = None  # https://host as browsers reach the server (behind a proxy)


@dataclass(frozen=True)
class NavItem:
    label: Any  # a lazy gettext string
    endpoint: str
    roles: tuple[Role, ...]


NAVIGATION: list[NavItem] = []
STAFF_BLUEPRINTS: list[Blueprint] = []


def register_navigation(label: Any, endpoint: str, *roles: Role) -> None:
    """A link in the top bar for these roles (in the order registered)."""
    NAVIGATION.append(NavItem(label, endpoint, tuple(roles)))


def staff_blueprint(name: str, import_name: str, url_prefix: str | None = None) -> Blueprint:
    """A blueprint of staff pages, with the checks every staff page has (see the docstring)."""
    blueprint = Blueprint(name, import_name, url_prefix=url_prefix, template_folder="templates")
    blueprint.before_request(_page_checks)
    blueprint.after_request(_page_headers)
    blueprint.register_error_handler(HTTPException, _html_error)
    blueprint.register_error_handler(ApiError, _html_error)
    STAFF_BLUEPRINTS.append(blueprint)
    return blueprint


# Shared static files (staff.css, the pages' scripts): /web/assets/...
assets = Blueprint("staff_assets", __name__, static_folder="static", static_url_path="/web/assets")


@login_manager.user_loader
def _load_principal(token: str) -> Principal | None:
    """The session behind the cookie, checked and committed before the page's own work (it may
    end an idle session). Flask-Login asks at the request's first look at `current_user`: the
    page checks and the desk's calls look first, so the request's database session is free;
    should it hold work already, the check runs on a session of its own."""
    settings: WebSettings = current_app.extensions[EXTENSION]
    ctx = context_of(current_app)
    session = db.session
    if session.new or session.dirty or session.deleted:
        with db.bound(current_app).sessionmaker() as own:
            signed_in = live_session(own, ctx, token, settings.idle)
            own.commit()
    else:
        signed_in = live_session(session, ctx, token, settings.idle)
        session.commit()
    return Principal(token, signed_in) if signed_in is not None else None


def signed_in_staff_id() -> int | None:
    """For the staff JSON calls (server.http.framework's STAFF_SESSION_HOOK): the signed-in
    user's id when the request carries a live session cookie, after checking the CSRF header
    (X-CSRFToken) of a state-changing call; None when nobody is signed in."""
    if not current_user.is_authenticated:
        return None
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()
    return int(current_user.user_id)


def _page_checks() -> Response | None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()
    if (
        current_user.is_authenticated
        and current_user.must_change_password
        and request.endpoint not in ("auth.change_password", "auth.sign_out", "auth.language")
    ):
        return redirect(url_for("auth.change_password"))
    return None


def _page_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


def _html_error(error: Exception) -> tuple[str, int]:
    if isinstance(error, CSRFError):
        status, title = 400, _("This form has expired or did not come from this site.")
        detail = _("Nothing was changed. Open the page again and repeat what you did.")
    elif isinstance(error, ApiError):
        status, title, detail = error.status, _("This cannot be done."), error.detail
    else:
        assert isinstance(error, HTTPException)
        status = error.code or 500
        title = {
            403: _("Your role or your area does not allow this page."),
            404: _("There is no such page."),
        }.get(status, _("The request could not be served."))
        detail = ""
    return render_template("staff/error.html", status=status, title=title, detail=detail), status


def navigation() -> list[dict[str, Any]]:
    if not current_user.is_authenticated:
        return []
    return [
        {
            "label": item.label,
            "url": url_for(item.endpoint),
            "current": request.endpoint == item.endpoint,
        }
        for item in NAVIGATION
        if current_user.role in item.roles
    ]


def home_endpoint(role: Role) -> str:
    """The first page a role sees after signing in."""
    for item in NAVIGATION:
        if role in item.roles:
            return item.endpoint
    return "auth.account"
