"""Wires the staff pages into the app (`init_app`, called by server.app.create_app): the
cookie and CSRF settings, Flask-Login, the gettext catalogue, the shared static files and every
staff page blueprint (server.web.base.staff_blueprint).

Settings (ONECARD_* overrides given to create_app, else the environment):

| variable | meaning | default |
|---|---|---|
| `ONECARD_COOKIE_SECURE` | `0` lets the session cookie travel over plain HTTP (tests, the demo) | `1` |
| `ONECARD_SESSION_IDLE_MINUTES` | a session unused this long ends | `30` |
| `ONECARD_PUBLIC_ORIGIN` | the server's origin as browsers reach it (`https://onecard.city.example`): what a staff-card sign-in challenge names; needed behind a TLS proxy, where the request looks like plain HTTP | the request's own scheme and host |
| `ONECARD_CARD_SIGN_IN_ROLES` | comma-separated roles that must sign in with their staff card (their password is refused), e.g. `station_staff,technician` | none |
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from server.config import ConfigError
from server.http.framework import STAFF_SESSION_HOOK
from server.store.models import Role

# The page modules register their blueprints and navigation when imported.
from server.web import admin, auditor, auth, fleet, i18n, nurse, reports, technician  # noqa: F401
from server.web.base import (
    EXTENSION,
    ROLE_LABELS,
    STAFF_BLUEPRINTS,
    WebSettings,
    assets,
    csrf,
    login_manager,
    navigation,
    signed_in_staff_id,
)
from server.web.i18n import _l

DEFAULT_IDLE_MINUTES = 30
SESSION_COOKIE = "onecard_staff"


def settings_from(overrides: Mapping[str, Any] | None) -> WebSettings:
    given = dict(overrides or {})

    def setting(name: str) -> Any:
        return given[name] if name in given else os.environ.get(name)

    secure = str(setting("ONECARD_COOKIE_SECURE") or "1").lower() not in ("0", "false", "no")
    idle = setting("ONECARD_SESSION_IDLE_MINUTES")
    minutes = int(idle) if idle not in (None, "") else DEFAULT_IDLE_MINUTES
    names = [n.strip() for n in str(setting("ONECARD_CARD_SIGN_IN_ROLES") or "").split(",")]
    unknown = [n for n in names if n and n not in Role.__members__.values()]
    if unknown:
        raise ConfigError(
            f"ONECARD_CARD_SIGN_IN_ROLES: no role {', '.join(unknown)} "
            f"(roles: {', '.join(r.value for r in Role)})"
        )
    card_roles = frozenset(Role(n) for n in names if n)
    origin = str(setting("ONECARD_PUBLIC_ORIGIN") or "").strip().rstrip("/")
    return WebSettings(
        cookie_secure=secure,
        idle=dt.timedelta(minutes=minutes),
        card_roles=card_roles,
        public_origin=origin or None,
    )


def _on_pages_only(app: Flask, install: Callable[[], object]) -> None:
    """Run `install` (extensions' init_app), then move the request hooks it added app-wide onto
    the staff page blueprints, where they apply: Flask-WTF's CSRF hook (a no-op with
    WTF_CSRF_CHECK_DEFAULT off: the pages call `csrf.protect()` themselves) and Flask-Login's
    remember-me cookie hook would otherwise run on every kiosk call too (server.http.serving)."""
    before = list(app.before_request_funcs.get(None, ()))
    after = list(app.after_request_funcs.get(None, ()))
    install()
    added_before = [f for f in app.before_request_funcs.get(None, ()) if f not in before]
    added_after = [f for f in app.after_request_funcs.get(None, ()) if f not in after]
    app.before_request_funcs[None] = before
    app.after_request_funcs[None] = after
    for blueprint in STAFF_BLUEPRINTS:
        # Registered before the blueprint's own hooks, so they run in the order they would have
        # app-wide: these before the page's checks, and after its headers.
        app.before_request_funcs.setdefault(blueprint.name, []).extend(added_before)
        app.after_request_funcs.setdefault(blueprint.name, []).extend(added_after)


def init_app(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    """Attach the staff pages to the app. Call after the Context and the database are set."""
    settings = settings_from(overrides if isinstance(overrides, Mapping) else None)
    app.extensions[EXTENSION] = settings
    server_key = app.config["ONECARD"].server_key
    app.config.update(
        # The cookie is signed with a key derived from the server's own secret.
        SECRET_KEY=hmac.new(
            server_key, b"onecard staff session cookie v1", hashlib.sha256
        ).digest(),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        WTF_CSRF_CHECK_DEFAULT=False,  # checked per staff blueprint; the JSON API signs its calls
        WTF_CSRF_TIME_LIMIT=12 * 3600,
        # Pages send no Referer (Referrer-Policy: no-referrer), so Flask-WTF's https referrer
        # check cannot apply; the token, bound to the SameSite=Strict session, is the check.
        WTF_CSRF_SSL_STRICT=False,
    )
    i18n.init_app(app)
    _on_pages_only(app, lambda: (csrf.init_app(app), login_manager.init_app(app)))
    login_manager.session_protection = None  # the server-side session is the protection
    login_manager.login_view = "auth.sign_in"
    login_manager.login_message = _l("Please sign in to see this page.")
    login_manager.login_message_category = "info"
    app.jinja_env.globals.update(
        staff_navigation=navigation,
        role_label=lambda role: ROLE_LABELS.get(Role(role), role),
    )
    app.extensions[STAFF_SESSION_HOOK] = signed_in_staff_id
    app.register_blueprint(assets)
    for blueprint in STAFF_BLUEPRINTS:
        app.register_blueprint(blueprint)
