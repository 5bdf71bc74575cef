"""Administrators' pages: staff users (create, role and area, password reset, disable), the
entitlement rules of their area, and the region tree from a CSV file.

    GET       /admin/users                 the users in the administrator's area, paginated
    GET/POST  /admin/users/new             a new user with a first password
    GET/POST  /admin/users/<id>            role and area; reset the password; disable / enable
    GET/POST  /admin/users/<id>/cards      the user's staff cards: issue one on the desk reader
                                           (static/staff-card-issue.js), link one, revoke one
    GET/POST  /admin/rules                 the rules in force here, and a new one for this area
    GET/POST  /admin/regions               the region tree from a CSV file: preview, then write
    GET/POST  /admin/stations              a station's opening hours and capacity; enable, disable
    GET/POST  /admin/catalogue             categories, products and exam programmes, as data

Everything is checked again on the server (services.staff_auth, services.dispensing, services.regions): an
administrator of one town can neither see nor touch a user, a rule or an area of another.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import (
    BooleanField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from server import services
from server.errors import ApiError
from server.services import appointments, catalogue, kiosks, regions, staff_auth, staff_cards
from server.services import stations as station_services
from server.services.staff_auth import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from server.store.db import db
from server.store.models import Category, Kiosk, Role
from server.web.access import PAGE_SIZE, ctx, page_of, query_int, roles_required, staff_user
from server.web.base import ROLE_LABELS, register_navigation, staff_blueprint
from server.web.card_words import CARD_DESK_WORDS
from server.web.forms import REFUSALS, REGION_CODE, ButtonForm, options, put_error, submitted
from server.web.i18n import _, _l

admin = staff_blueprint("admin", __name__, url_prefix="/admin")
register_navigation(_l("Staff users"), "admin.users", Role.ADMINISTRATOR)


def _role_choices() -> list[SelectChoice]:
    return options((role.value, ROLE_LABELS[role]) for role in Role)


class UserForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        _l("User name"),
        validators=[
            DataRequired(),
            Length(max=200),
            Regexp(r"^[\w.@-]+$", message=_l("Letters, digits and . @ - _ only.")),
        ],
    )
    role = SelectField(_l("Role"), choices=_role_choices)
    region = StringField(
        _l("Area (region code)"),
        validators=[Optional(), Regexp(REGION_CODE, message=_l("A region code, such as C01-T01."))],
    )
    password = PasswordField(
        _l("First password"),
        validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH)],
    )


class ScopeForm(FlaskForm):  # type: ignore[misc]
    role = SelectField(_l("Role"), choices=_role_choices)
    region = StringField(
        _l("Area (region code)"),
        validators=[Optional(), Regexp(REGION_CODE, message=_l("A region code, such as C01-T01."))],
    )


class ResetForm(FlaskForm):  # type: ignore[misc]
    password = PasswordField(
        _l("Temporary password"),
        validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=MAX_PASSWORD_LENGTH)],
    )


@admin.get("/users")
@roles_required(Role.ADMINISTRATOR)
def users() -> str:
    rows = staff_auth.list_users(db.session, staff_user().id, after=query_int("after"), limit=26)
    db.session.rollback()
    return render_template("staff/admin_users.html", page=page_of(rows, lambda u: u["id"]))


@admin.route("/users/new", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def new_user() -> Response | str | tuple[str, int]:
    form = UserForm()
    if form.validate_on_submit():
        session = db.session
        try:
            user = staff_auth.create_user(
                session,
                ctx(),
                staff_user().id,
                name=form.name.data,
                role=Role(form.role.data),
                region_code=form.region.data or None,
                password=form.password.data,
            )
        except ApiError as exc:
            session.rollback()
            put_error(form, exc, "name")
            return render_template("staff/admin_user_new.html", form=form), 400
        session.commit()
        flash(
            _(
                "User %(name)s created. They choose their own password at first sign-in.",
                name=user.name,
            ),
            "ok",
        )
        return redirect(url_for("admin.users"))
    return render_template("staff/admin_user_new.html", form=form), 400 if form.errors else 200


@admin.route("/users/<int:user_id>", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def user(user_id: int) -> Response | str | tuple[str, int]:
    session = db.session
    me = staff_user()
    target = staff_auth.user_in_reach(session, me, user_id)
    region_code = staff_auth.region_code_of(session, target.region_id)
    scope = ScopeForm(prefix="scope", data={"role": target.role.value, "region": region_code})
    reset = ResetForm(prefix="reset")
    toggle = ButtonForm(prefix="toggle")
    status = 200
    try:
        if submitted(scope, "scope"):
            staff_auth.update_user(
                session,
                ctx(),
                me.id,
                user_id,
                role=Role(scope.role.data),
                region_code=scope.region.data or None,
            )
            session.commit()
            flash(_("Role and area saved. The user's sessions have ended."), "ok")
            return redirect(url_for("admin.user", user_id=user_id))
        if submitted(reset, "reset"):
            staff_auth.reset_password(session, ctx(), me.id, user_id, reset.password.data)
            session.commit()
            flash(_("Password reset. The user must change it at the next sign-in."), "ok")
            return redirect(url_for("admin.user", user_id=user_id))
        if submitted(toggle, "toggle"):
            staff_auth.set_active(session, ctx(), me.id, user_id, not target.active)
            session.commit()
            flash(
                _("User enabled.")
                if target.active
                else _("User disabled. Their sessions and tokens no longer work."),
                "ok",
            )
            return redirect(url_for("admin.user", user_id=user_id))
    except ApiError as exc:
        session.rollback()
        put_error(scope if exc.extra.get("field") == "region" else reset, exc)
        status = 400
    if request.method == "POST" and (scope.errors or reset.errors):
        status = 400
    return render_template(
        "staff/admin_user.html",
        target=target,
        region_code=region_code,
        scope=scope,
        reset=reset,
        toggle=toggle,
    ), status


# --- a user's staff cards (card sign-in) -----------------------------------------------------------

STAFF_CARD_REVOKE_REASONS = [
    ("", _l("Choose a reason")),
    ("lost", _l("lost")),
    ("stolen", _l("stolen")),
    ("damaged", _l("damaged")),
    ("holder_left", _l("the holder left")),
]
STAFF_CARD_STATUS = {
    staff_cards.StaffCardStatus.ACTIVE: _l("active"),
    staff_cards.StaffCardStatus.EXPIRED: _l("expired"),
    staff_cards.StaffCardStatus.REVOKED: _l("revoked"),
}
STAFF_CARD_REASONS = {**dict(STAFF_CARD_REVOKE_REASONS[1:]), "revoked": _l("no reason given")}
STAFF_CARD_REFUSALS = {
    "card_text_invalid": _l(
        "Give the card's GUID (32 hexadecimal digits) or its certificate (PEM)."
    ),
    "certificate_malformed": _l("This certificate cannot be read."),
    "certificate_untrusted": _l("This certificate is not from the city card CA."),
    "certificate_expired": _l("This certificate is not valid now."),
    "not_staff_card": _l("This is a resident's card, not a staff card."),
    "card_assigned": _l("This card is already linked to a user."),
    "card_revoked": _l("This card is revoked and cannot be linked again."),
    "card_ca_not_configured": _l("The server has no card CA: link the card by its GUID."),
    "card_unknown": _l("This user has no such card."),
    "out_of_scope": REFUSALS["out_of_scope"],
}


# What static/staff-card-issue.js says while it issues a staff card on the desk reader: the
# resident card desk's words where the step is the same, and the staff card's own.
STAFF_CARD_ISSUE_WORDS = {
    **{
        key: CARD_DESK_WORDS[key]
        for key in (
            "step.identify",
            "step.check",
            "step.secrets",
            "busy",
            "error.pin",
            "error.cardsvc_unreachable",
            "error.server_unreachable",
            "error.no_card",
            "error.no_reader",
            "error.card_removed",
            "error.management_key_refused",
            "error.wrong_pin",
            "error.pin_blocked",
            "error.server",
            "error.card",
        )
    },
    "step.generate": _l("The card makes its two keys: one for kiosks, one for signing in"),
    "step.certify": _l("The server certifies the card's keys as a staff card's"),
    "step.write": _l("Writing the certificates, the PIN and the card's own key"),
    "step.link": _l("Linking the card to this user"),
    "error.issued_staff": _l(
        "This card is a staff card already (%(status)s): put a blank card on the reader."
    ),
    "error.issued_resident": _l("This is a resident's card: put a blank card on the reader."),
    "error.not_linked": _l(
        "The card is written but the server did not link it (%(detail)s). Press the button "
        "again with the same card."
    ),
    **{f"state.{status.value}": words for status, words in STAFF_CARD_STATUS.items()},
    **{
        f"refusal.{code}": STAFF_CARD_REFUSALS[code]
        for code in ("card_assigned", "card_revoked", "not_staff_card", "out_of_scope")
    },
    "refusal.user_disabled": _l("This user is disabled: enable them before issuing a card."),
}


def staff_card_issue_words() -> dict[str, str]:
    """The staff-card issuing words in the page's language, for static/staff-card-issue.js."""
    return {key: str(words) for key, words in STAFF_CARD_ISSUE_WORDS.items()}


class LinkCardForm(FlaskForm):  # type: ignore[misc]
    card = TextAreaField(
        _l("The card's GUID or certificate"), validators=[DataRequired(), Length(max=8000)]
    )


class RevokeCardForm(FlaskForm):  # type: ignore[misc]
    guid = HiddenField(validators=[DataRequired(), Regexp(r"^[0-9a-f]{32}$")])
    reason = SelectField(
        _l("Why"),
        choices=options(STAFF_CARD_REVOKE_REASONS),
        validators=[DataRequired(message=_l("Choose why the card is revoked."))],
    )


@admin.route("/users/<int:user_id>/cards", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def user_cards(user_id: int) -> Response | str | tuple[str, int]:
    """The staff cards a user signs in with: link one (GUID or certificate), revoke one with a
    reason; the user must be in the administrator's area (services.staff_cards)."""
    session = db.session
    me = staff_user()
    target = staff_auth.user_in_reach(session, me, user_id)
    link = LinkCardForm(prefix="link")
    revoke = RevokeCardForm(prefix="revoke")
    action = request.form.get("action")
    status = 200
    try:
        if submitted(link, "link"):
            guid = staff_cards.link(session, ctx(), me, user_id, link.card.data)
            session.commit()
            flash(
                _(
                    "Card %(card)s linked: %(name)s signs in with it and its PIN.",
                    card=guid,
                    name=target.name,
                ),
                "ok",
            )
            return redirect(url_for("admin.user_cards", user_id=user_id))
        if submitted(revoke, "revoke"):
            guid = staff_cards.revoke_for(
                session, ctx(), me, user_id, revoke.guid.data, revoke.reason.data
            )
            session.commit()
            flash(
                _(
                    "Card %(card)s revoked: it no longer signs in, and kiosks refuse it from "
                    "their next update.",
                    card=guid,
                ),
                "ok",
            )
            return redirect(url_for("admin.user_cards", user_id=user_id))
    except ApiError as exc:
        session.rollback()
        words = STAFF_CARD_REFUSALS.get(exc.code, exc.detail)
        if action == "link":
            link.card.errors = [*list(link.card.errors or []), words]
        else:  # about the card, not the reason: above the table
            revoke.form_errors.append(words)
        status = 403 if exc.status == 403 else 400
    if request.method == "POST" and status == 200:
        status = 400  # a form with a message next to its field, or no known action
    rows = staff_cards.cards_of(
        session, ctx(), me, user_id, after=query_int("after"), limit=PAGE_SIZE + 1
    )
    session.rollback()
    # The desk reader's issuing script comes back here with ?issued=<guid> once it is linked.
    issued = next((c["guid"] for c in rows if c["guid"] == request.args.get("issued")), None)
    return render_template(
        "staff/admin_user_cards.html",
        target=target,
        page=page_of(rows, lambda card: card["n"]),
        link=link,
        revoke=revoke,
        status_words=STAFF_CARD_STATUS,
        reason_words=STAFF_CARD_REASONS,
        issued=issued,
        issue_words=staff_card_issue_words(),
    ), status


# --- entitlement rules ----------------------------------------------------------------------------

register_navigation(_l("Rules"), "admin.rules", Role.ADMINISTRATOR)

PERIODS = [
    ("calendar_month", _l("calendar month")),
    ("rolling_days", _l("rolling days")),
    ("calendar_year", _l("calendar year")),
]
SEXES = [("", _l("anyone")), ("F", _l("women")), ("M", _l("men"))]


class RuleForm(FlaskForm):  # type: ignore[misc]
    area = StringField(
        _l("Area (region code)"),
        validators=[Optional(), Regexp(REGION_CODE, message=_l("A region code, such as C01-T01."))],
    )
    category = SelectField(_l("Category"))
    period_kind = SelectField(_l("Period"), choices=options(PERIODS))
    period_days = IntegerField(
        _l("Days (rolling period only)"), validators=[Optional(), NumberRange(1, 3660)]
    )
    units = IntegerField(
        _l("Units per period"), validators=[InputRequired(), NumberRange(0, 10_000)]
    )
    per_visit_cap = IntegerField(
        _l("At most per visit"), validators=[Optional(), NumberRange(1, 10_000)]
    )
    min_age = IntegerField(_l("From age"), validators=[Optional(), NumberRange(0, 150)])
    max_age = IntegerField(_l("To age"), validators=[Optional(), NumberRange(0, 150)])
    sexes = SelectField(_l("Who"), choices=options(SEXES))

    def validate_period_days(self, field: IntegerField) -> None:
        if (self.period_kind.data == "rolling_days") != (field.data is not None):
            raise ValidationError(_("Give the days for a rolling period, and only for one."))

    def validate_max_age(self, field: IntegerField) -> None:
        if (
            field.data is not None
            and self.min_age.data is not None
            and field.data < self.min_age.data
        ):
            raise ValidationError(_("The upper age is below the lower one."))


def _categories() -> list[tuple[str, str]]:
    return [
        (code, name)
        for code, name in db.session.execute(
            select(Category.code, Category.name).order_by(Category.code)
        )
    ]


@admin.route("/rules", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def rules() -> Response | str | tuple[str, int]:
    session = db.session
    me = staff_user()
    form = RuleForm()
    form.category.choices = options(_categories())
    if request.method == "GET":
        form.area.data = staff_auth.region_code_of(session, me.region_id) or ""
    status = 200
    if submitted(form, "create"):
        spec = {
            "area": form.area.data or None,
            "category": form.category.data,
            "period_kind": form.period_kind.data,
            "period_days": form.period_days.data,
            "units": form.units.data,
            "per_visit_cap": form.per_visit_cap.data,
            "min_age": form.min_age.data,
            "max_age": form.max_age.data,
            "sexes": form.sexes.data,
        }
        try:
            services.create_rule(session, ctx(), me, spec)
        except ApiError as exc:
            session.rollback()
            put_error(form, exc)
            status = 400
        else:
            session.commit()
            flash(_("Rule added. Kiosks follow it within seconds."), "ok")
            return redirect(url_for("admin.rules"))
    elif request.method == "POST" and request.form.get("action") == "create":
        status = 400
    elif request.method == "POST" and request.form.get("action") == "deactivate":
        try:
            services.deactivate_rule(session, ctx(), me, int(request.form.get("rule_id", "0")))
        except (ApiError, ValueError):
            session.rollback()
            flash(_("This rule is not yours to retire."), "bad")
            status = 403
        else:
            session.commit()
            flash(_("Rule retired."), "ok")
            return redirect(url_for("admin.rules"))
    items = services.list_rules(session, user=me)
    retirable = services.retirable_rule_ids(session, me)
    session.rollback()
    return render_template("staff/rules.html", form=form, rules=items, retirable=retirable), status


# --- the region tree -------------------------------------------------------------------------------

register_navigation(_l("Regions"), "admin.regions_page", Role.ADMINISTRATOR)


REGION_PROBLEMS = {
    "missing_column": _l("a column is missing"),
    "too_many_rows": _l("too many rows"),
    "code_invalid": _l("the code is not valid"),
    "code_repeated": _l("the code is repeated"),
    "name_missing": _l("the name is missing"),
    "kind_invalid": _l("the kind is not valid"),
    "parent_invalid": _l("the parent is not valid"),
    "parent_unknown": _l("the parent is unknown"),
    "region_moved": _l("the file would move a region"),
    "out_of_scope": _l("outside your area"),
}


class RegionsForm(FlaskForm):  # type: ignore[misc]
    csv_file = FileField(_l("CSV file (code,name,kind,parent)"))
    csv_text = TextAreaField(_l("Or paste its lines here"))


def _csv_text(form: RegionsForm) -> str | None:
    upload = form.csv_file.data
    if upload is not None and getattr(upload, "filename", ""):
        raw = upload.read()
        try:
            return str(raw.decode("utf-8"))
        except UnicodeDecodeError:
            form.csv_file.errors = [_("The file must be UTF-8 text.")]
            return None
    if form.csv_text.data and form.csv_text.data.strip():
        return str(form.csv_text.data)
    form.csv_file.errors = [_("Choose a file or paste its lines.")]
    return None


@admin.route("/regions", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def regions_page() -> Response | str | tuple[str, int]:
    session = db.session
    me = staff_user()
    form = RegionsForm()
    checked = None
    text = None
    status = 200
    if form.validate_on_submit():
        text = _csv_text(form)
        if text is not None and request.form.get("action") == "import":
            try:
                done = regions.apply(session, ctx(), me, text)
            except ApiError:
                session.rollback()
                checked = regions.plan(session, me, text)
                status = 400
            else:
                session.commit()
                flash(
                    _(
                        "Regions written: %(added)s added, %(renamed)s renamed.",
                        added=done.count("add"),
                        renamed=done.count("rename"),
                    ),
                    "ok",
                )
                return redirect(url_for("admin.regions_page"))
        elif text is not None:
            checked = regions.plan(session, me, text)
            status = 400 if checked.problems else 200
        else:
            status = 400
    elif request.method == "POST":
        status = 400
    session.rollback()
    return render_template(
        "staff/regions.html", form=form, plan=checked, text=text, problem_words=REGION_PROBLEMS
    ), status


# --- stations: opening hours, capacity, enabled ------------------------------------------------------

register_navigation(_l("Stations"), "admin.stations", Role.ADMINISTRATOR)

WEEKDAYS = [
    _l("Monday"),
    _l("Tuesday"),
    _l("Wednesday"),
    _l("Thursday"),
    _l("Friday"),
    _l("Saturday"),
    _l("Sunday"),
]


@admin.route("/stations", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def stations() -> Response | str | tuple[str, int]:
    """Each station of the area: enabled or not, and its week of opening hours (slot length and
    people per slot); saving a week replaces it (a day left without hours is closed)."""
    session = db.session
    me = staff_user()
    ids = station_services.desk_stations(session, me, include_disabled=True)
    chosen = request.values.get("station") or (ids[0] if ids else None)
    status = 200
    problems: dict[int, str] = {}
    if request.method == "POST" and chosen in ids:
        try:
            if request.form.get("action") == "toggle":
                device = session.get(Kiosk, chosen)
                assert device is not None
                kiosks.set_device_enabled(session, ctx(), me, chosen, not device.enabled)
            else:
                week, problems = _week_from(request.form)
                if not problems:
                    appointments.set_hours(session, ctx(), me, chosen, week)
        except ApiError as exc:
            session.rollback()
            flash(str(REFUSALS.get(exc.code, exc.detail)), "bad")
            status = 400
        else:
            if not problems:
                session.commit()
                flash(_("Saved."), "ok")
                return redirect(url_for("admin.stations", station=chosen))
            session.rollback()
            status = 400
    device = session.get(Kiosk, chosen) if chosen else None
    week = appointments.week_hours(session, chosen) if chosen else {}
    session.rollback()
    return render_template(
        "staff/stations.html",
        ids=ids,
        station=device,
        week=week,
        weekdays=WEEKDAYS,
        form=request.form if status == 400 else None,
        problems=problems,
    ), status


def _week_from(form: Any) -> tuple[dict[int, appointments.DayHours | None], dict[int, str]]:
    week: dict[int, appointments.DayHours | None] = {}
    problems: dict[int, str] = {}
    for day in range(7):
        if form.get(f"open-{day}") != "1":
            week[day] = None
            continue
        try:
            hours = appointments.DayHours(
                dt.time.fromisoformat(form.get(f"opens-{day}", "")),
                dt.time.fromisoformat(form.get(f"closes-{day}", "")),
                int(form.get(f"minutes-{day}", "")),
                int(form.get(f"capacity-{day}", "")),
            )
        except ValueError:
            problems[day] = _("Give the opening and closing times, minutes and people as numbers.")
            continue
        if not (
            hours.opens < hours.closes
            and 5 <= hours.slot_minutes <= appointments.MAX_SLOT_MINUTES
            and 1 <= hours.capacity <= appointments.MAX_CAPACITY
        ):
            problems[day] = _("Opening before closing, slots of 5 to 240 minutes, 1 to 100 people.")
            continue
        week[day] = hours
    return week, problems


# --- the catalogue: categories, products, exam programmes ------------------------------------------

register_navigation(_l("Catalogue"), "admin.catalogue_page", Role.ADMINISTRATOR)

CODE = r"^[A-Za-z0-9_.-]{1,40}$"


class CategoryForm(FlaskForm):  # type: ignore[misc]
    code = StringField(
        _l("Code"),
        validators=[DataRequired(), Regexp(CODE, message=_l("Letters, digits and . - _ only."))],
    )
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    unit = StringField(_l("Unit"), default="piece", validators=[DataRequired(), Length(max=40)])


class ProductForm(FlaskForm):  # type: ignore[misc]
    sku = StringField(
        _l("SKU"),
        validators=[DataRequired(), Regexp(CODE, message=_l("Letters, digits and . - _ only."))],
    )
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    category = SelectField(_l("Category"))
    units = IntegerField(
        _l("Counts as units"), default=1, validators=[InputRequired(), NumberRange(1, 1000)]
    )


class ProgrammeForm(FlaskForm):  # type: ignore[misc]
    code = StringField(
        _l("Code"),
        validators=[DataRequired(), Regexp(CODE, message=_l("Letters, digits and . - _ only."))],
    )
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    sexes = SelectField(_l("Who"), choices=options(SEXES))
    min_age = IntegerField(_l("From age"), validators=[Optional(), NumberRange(0, 150)])
    max_age = IntegerField(_l("To age"), validators=[Optional(), NumberRange(0, 150)])
    interval_days = IntegerField(
        _l("Again after (days)"), validators=[Optional(), NumberRange(1, 36600)]
    )
    once = BooleanField(_l("Once in a life (or per pregnancy plan)"))
    requires_plan = BooleanField(_l("Only couples planning a pregnancy"))


@admin.route("/catalogue", methods=["GET", "POST"])
@roles_required(Role.ADMINISTRATOR)
def catalogue_page() -> Response | str | tuple[str, int]:
    session = db.session
    me = staff_user()
    category = CategoryForm(prefix="category")
    product = ProductForm(prefix="product")
    programme = ProgrammeForm(prefix="programme")
    product.category.choices = options(_categories())
    status = 200
    action = request.form.get("action")
    try:
        if submitted(category, "category"):
            catalogue.add_category(
                session,
                ctx(),
                me,
                code=category.code.data,
                name=category.name.data,
                unit=category.unit.data,
            )
        elif submitted(product, "product"):
            catalogue.add_product(
                session,
                ctx(),
                me,
                sku=product.sku.data,
                name=product.name.data,
                category=product.category.data,
                units=product.units.data,
            )
        elif submitted(programme, "programme"):
            catalogue.add_programme(
                session,
                ctx(),
                me,
                catalogue.ProgrammeSpec(
                    code=programme.code.data,
                    name=programme.name.data,
                    sexes=programme.sexes.data,
                    min_age=programme.min_age.data,
                    max_age=programme.max_age.data,
                    interval_days=programme.interval_days.data,
                    once=programme.once.data,
                    requires_plan=programme.requires_plan.data,
                ),
            )
        elif action == "programme-toggle":
            code = request.form.get("code", "")
            catalogue.set_programme_active(
                session, ctx(), me, code, request.form.get("active") == "1"
            )
        elif request.method == "POST":
            status = 400
    except ApiError as exc:
        session.rollback()
        target = {"category": category, "product": product}.get(action or "", programme)
        put_error(target, exc)
        status = 400 if exc.status != 403 else 403
    else:
        if request.method == "POST" and status == 200:
            session.commit()
            flash(_("Saved."), "ok")
            return redirect(url_for("admin.catalogue_page"))
    items = catalogue.listing(session)
    session.rollback()
    return render_template(
        "staff/catalogue.html",
        items=items,
        category=category,
        product=product,
        programme=programme,
        city_wide=me.region_id is None,
    ), status
