"""Signing in and out of the staff pages, changing one's password, and the language switch.

GET/POST /sign-in           user name and password (services.staff_auth.sign_in)
POST     /sign-out          ends this browser's session on the server
GET/POST /account/password  a new password (required after a reset or a first password)
GET      /account           who is signed in
POST     /language          中文 / English, remembered in a cookie
GET      /                  the signed-in role's first page
POST     /auth/card/challenge  a staff-card sign-in challenge (JSON; services.staff_cards)
POST     /auth/card/verify     the card's certificate and signature → a session (JSON)
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from server.errors import InvalidRequest
from server.services import staff_auth, staff_cards
from server.services.staff_auth import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from server.store.db import db
from server.web.access import Principal, ctx
from server.web.base import EXTENSION, WebSettings, home_endpoint, staff_blueprint
from server.web.i18n import LANGUAGE_COOKIE, LANGUAGES, _, _l

auth = staff_blueprint("auth", __name__)

ONE_YEAR = 365 * 24 * 3600


class SignInForm(FlaskForm):  # type: ignore[misc]
    name = StringField(_l("User name"), validators=[DataRequired(), Length(max=200)])
    password = PasswordField(
        _l("Password"), validators=[DataRequired(), Length(max=MAX_PASSWORD_LENGTH)]
    )


class ChangePasswordForm(FlaskForm):  # type: ignore[misc]
    current = PasswordField(_l("Current password"), validators=[DataRequired()])
    password = PasswordField(
        _l("New password"),
        validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH)],
    )
    repeat = PasswordField(
        _l("New password again"),
        validators=[DataRequired(), EqualTo("password", message=_l("The two do not match."))],
    )


PASSWORD_PROBLEMS = {
    "password_too_short": _l("At least 10 characters."),
    "password_too_long": _l("At most 200 characters."),
    "password_is_name": _l("The password must not be your user name."),
    "password_unchanged": _l("Choose a password you have not used here."),
    "password_wrong": _l("The current password is wrong."),
}


def _safe_next(target: str | None) -> str | None:
    """Only a path on this site (never another origin) is followed after signing in."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@auth.get("/")
def home() -> Response:
    if not current_user.is_authenticated:
        return redirect(url_for("auth.sign_in"))
    return redirect(url_for(home_endpoint(current_user.role)))


@auth.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | str | tuple[str, int]:
    if current_user.is_authenticated:
        return redirect(url_for("auth.home"))
    form = SignInForm()
    if form.validate_on_submit():
        session = db.session
        settings: WebSettings = current_app.extensions[EXTENSION]
        result = staff_auth.sign_in(
            session,
            ctx(),
            form.name.data,
            form.password.data,
            request.remote_addr or "unknown",
            card_roles=settings.card_roles,
        )
        session.commit()
        if result.token is not None:
            _log_in(result.token)
            return redirect(_safe_next(request.args.get("next")) or url_for("auth.home"))
        if result.refusal == "card_required":
            form.form_errors.append(_("Your role signs in with your staff card and its PIN."))
        elif result.refusal == "locked":
            form.form_errors.append(
                _(
                    "Too many failed attempts. Try again after %(time)s.",
                    time=result.locked_until.astimezone(ctx().timezone).strftime("%H:%M:%S"),
                )
                if result.locked_until
                else _("Too many failed attempts. Try again later.")
            )
        else:
            form.form_errors.append(_("The user name or the password is wrong."))
        return render_template("staff/sign_in.html", form=form), 401
    return render_template("staff/sign_in.html", form=form)


def _log_in(token: str) -> None:
    """The browser's Flask-Login session for a server-side session just opened."""
    session = db.session
    signed_in = staff_auth.live_session(session, ctx(), token, staff_auth.SESSION_LIFETIME)
    session.commit()
    assert signed_in is not None
    login_user(Principal(token, signed_in))


def _origin() -> str:
    """This server as the browser reaches it (scheme://host[:port]): what a challenge names.
    Behind a TLS proxy the request looks like plain HTTP, so the configured origin wins."""
    settings: WebSettings = current_app.extensions[EXTENSION]
    return settings.public_origin or request.host_url.rstrip("/")


@auth.post("/auth/card/challenge")
def card_challenge() -> Response:
    """A single-use challenge for the staff card (the page hands it to the card service)."""
    session = db.session
    challenge = staff_cards.issue_challenge(session, ctx(), _origin())
    session.commit()
    return jsonify(
        {
            "challenge": base64.b64encode(challenge.to_bytes()).decode(),
            "expires_ms": challenge.expires_ms,
        }
    )


def _b64_field(body: object, name: str) -> bytes | None:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


@auth.post("/auth/card/verify")
def card_verify() -> tuple[Response, int]:
    """The card's answer: {challenge, certificate, signature} (base64) → a session."""
    body = request.get_json(silent=True)
    fields = [_b64_field(body, name) for name in ("challenge", "certificate", "signature")]
    challenge, certificate, signature = fields
    if challenge is None or certificate is None or signature is None:
        return jsonify({"status": "refused", "code": "field_invalid"}), 400
    session = db.session
    result = staff_cards.sign_in_with_card(
        session,
        ctx(),
        origin=_origin(),
        challenge_bytes=challenge,
        certificate_der=certificate,
        signature=signature,
        address=request.remote_addr or "unknown",
    )
    session.commit()
    if result.token is None:
        return jsonify({"status": "refused", "code": result.refusal}), 401
    _log_in(result.token)
    return jsonify({"status": "signed_in", "next": url_for("auth.home")}), 200


@auth.post("/sign-out")
def sign_out() -> Response:
    if current_user.is_authenticated:
        session = db.session
        staff_auth.sign_out(session, ctx(), current_user.token)
        session.commit()
        logout_user()
    flash(_("You have signed out."), "ok")
    return redirect(url_for("auth.sign_in"))


@auth.route("/account/password", methods=["GET", "POST"])
def change_password() -> Response | str | tuple[str, int]:
    if not current_user.is_authenticated:
        return redirect(url_for("auth.sign_in"))
    form = ChangePasswordForm()
    if form.validate_on_submit():
        session = db.session
        try:
            staff_auth.change_password(
                session, ctx(), current_user.signed_in, form.current.data, form.password.data
            )
        except InvalidRequest as exc:
            session.rollback()
            target = form.current if exc.code == "password_wrong" else form.password
            target.errors = [PASSWORD_PROBLEMS.get(exc.code, exc.detail)]
            return render_template("staff/change_password.html", form=form), 400
        session.commit()
        flash(_("Your password is changed. Your other sessions have ended."), "ok")
        return redirect(url_for("auth.home"))
    status = 400 if form.errors else 200
    return render_template("staff/change_password.html", form=form), status


@auth.get("/account")
def account() -> Response | str:
    if not current_user.is_authenticated:
        return redirect(url_for("auth.sign_in"))
    return render_template("staff/account.html")


@auth.post("/language")
def language() -> Response:
    chosen = request.form.get("language")
    response = redirect(_safe_next(request.form.get("next")) or url_for("auth.home"))
    if chosen in LANGUAGES:
        response.set_cookie(
            LANGUAGE_COOKIE, chosen, max_age=ONE_YEAR, samesite="Strict", httponly=True
        )
    return response
