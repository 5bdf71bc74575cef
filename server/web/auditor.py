"""Auditors' pages: the audit log with filters, and its hash chain verified on demand.

    GET  /audit            entries, newest first, filtered by who / what / which record / when
    POST /audit/verify     recompute the chain; the first broken link is shown, if any

The log holds identifiers (user:3, resident:41), never a person's data, so reading it is not a
read of a person; verifying it is itself recorded.
"""

from __future__ import annotations

from flask import render_template, request
from flask_wtf import FlaskForm
from wtforms import DateField, StringField
from wtforms.validators import Length, Optional

from server.services import audit_log
from server.store.db import db
from server.store.models import Role
from server.web.access import ctx, page_of, query_int, roles_required, staff_user
from server.web.base import register_navigation, staff_blueprint
from server.web.i18n import _l

auditor = staff_blueprint("auditor", __name__, url_prefix="/audit")
register_navigation(_l("Audit log"), "auditor.log", Role.AUDITOR, Role.ADMINISTRATOR)

PAGE = 50


class FilterForm(FlaskForm):  # type: ignore[misc]
    class Meta:
        csrf = False  # a GET search: it changes nothing

    actor = StringField(_l("Who (e.g. user:3)"), validators=[Optional(), Length(max=120)])
    action = StringField(_l("What (e.g. resident.read)"), validators=[Optional(), Length(max=64)])
    subject = StringField(
        _l("Which record (e.g. resident:41)"), validators=[Optional(), Length(max=120)]
    )
    since = DateField(_l("From (day)"), validators=[Optional()])
    until = DateField(_l("To (day)"), validators=[Optional()])


class VerifyForm(FlaskForm):  # type: ignore[misc]
    """The button; its CSRF token only."""


def _log_page(form: FilterForm, verified: audit_log.ChainCheck | None = None) -> str:
    valid = form.validate() if request.args else True
    rows: list[audit_log.EntryView] = []
    if valid:
        rows = audit_log.entries(
            db.session,
            ctx(),
            actor=form.actor.data or None,
            action=form.action.data or None,
            subject=form.subject.data or None,
            since=form.since.data,
            until=form.until.data,
            before=query_int("after") or None,
            limit=PAGE + 1,
        )
    db.session.rollback()
    return render_template(
        "staff/audit_log.html",
        form=form,
        page=page_of(rows, lambda e: e.id, PAGE),
        verify=VerifyForm(),
        verified=verified,
    )


@auditor.get("")
@roles_required(Role.AUDITOR, Role.ADMINISTRATOR)
def log() -> str | tuple[str, int]:
    form = FilterForm(request.args)
    page = _log_page(form)
    return (page, 400) if form.errors else page


@auditor.post("/verify")
@roles_required(Role.AUDITOR, Role.ADMINISTRATOR)
def verify() -> str:
    VerifyForm().validate_on_submit()
    session = db.session
    checked = audit_log.verify(session, ctx(), staff_user())
    session.commit()
    return _log_page(FilterForm(request.args), checked)
