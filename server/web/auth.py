"""Signing in and out of the staff pages, changing one's password, and the language switch.

GET/POST /sign-in           user name and password (services.staff_auth.sign_in)
POST     /sign-out          ends this browser's session on the server
GET/POST /account/password  a new password (required after a reset or a first password)
GET      /account           who is signed in
POST     /language          中文 / English, remembered in a cookie
GET      /                  the signed-in role's first page
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from server.errors import InvalidRequest
from server.services import staff_auth
from server.services.staff_auth import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from server.store.db import db
from server.web.access import Principal, ctx
from server.web.base import home_endpoint, staff_blueprint
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
        result = staff_auth.sign_in(
            session, ctx(), form.name.data, form.password.data, request.remote_addr or "unknown"
        )
        session.commit()
        if result.token is not None:
            signed_in = staff_auth.live_session(
                session, ctx(), result.token, staff_auth.SESSION_LIFETIME
            )
            session.commit()
            assert signed_in is not None
            login_user(Principal(result.token, signed_in))
            return redirect(_safe_next(request.args.get("next")) or url_for("auth.home"))
        if result.refusal == "locked":
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
