"""Technicians' pages: enrol a resident, find one in the technician's area, see a resident (every
person shown is an audited read) and record couples.

    GET/POST  /technician/enrol              a new resident; the same ID number twice is refused
    GET       /technician/residents          find by ID number (full or masked), phone or name,
                                             paginated
    GET       /technician/residents/<id>     one resident (audited), their cards, their couple
    POST      /technician/residents/<id>/couple   record the resident's partner
    POST      /technician/residents/<id>/cards/<guid>/revoke   revoke a lost or stolen card
    (the resident's page also issues, replaces, renews and unblocks cards on the desk reader:
    static/card-desk.js drives the local card service and the JSON calls of /api/v1, with the
    words of CARD_DESK_WORDS, server/web/card_words.py; a replacement asks why, REPLACE_REASONS)
    GET/POST  /technician/devices            register or re-key a kiosk or station in the area
    GET       /technician/devices/<id>/refills   a kiosk's refills and test dispenses
    POST      /technician/devices/<id>/toggle    (administrators) enable or disable a device

ID numbers are only ever shown masked (the last four characters); the full number is used once,
to compute its keyed hash, and never stored or echoed back (the form field is emptied; a masked
number typed in the find form stays, it shows nothing more than the page does).
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import DateField, RadioField, StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp

from server.errors import ApiError, NotFound
from server.services import kiosks, people, stations
from server.store.db import db
from server.store.models import CardStatus, Kiosk, Region, Role
from server.web.access import ctx, page_of, query_int, roles_required, staff_user
from server.web.base import register_navigation, staff_blueprint
from server.web.card_words import CARD_DESK_WORDS
from server.web.forms import (
    ID_NUMBER,
    ID_NUMBER_OR_MASKED,
    PHONE,
    REGION_CODE,
    options,
    put_error,
)
from server.web.i18n import _, _l

technician = staff_blueprint("technician", __name__, url_prefix="/technician")
register_navigation(_l("Find a resident"), "technician.find", Role.TECHNICIAN, Role.ADMINISTRATOR)
register_navigation(_l("Enrol"), "technician.enrol", Role.TECHNICIAN, Role.ADMINISTRATOR)

PEOPLE = (Role.TECHNICIAN, Role.ADMINISTRATOR)
PAGE = 25


class EnrolForm(FlaskForm):  # type: ignore[misc]
    name = StringField(_l("Full name"), validators=[DataRequired(), Length(max=200)])
    sex = RadioField(
        _l("Sex"),
        choices=options([("F", _l("female")), ("M", _l("male"))]),
        validators=[DataRequired()],
    )
    birth_date = DateField(_l("Date of birth"), validators=[DataRequired()])
    id_number = StringField(
        _l("ID number"),
        validators=[DataRequired(), Regexp(ID_NUMBER, message=_l("6 to 32 letters and digits."))],
    )
    phone = StringField(
        _l("Phone"),
        validators=[Optional(), Regexp(PHONE, message=_l("Digits, spaces and dashes only."))],
    )
    region = StringField(
        _l("Registered residence (region code)"),
        validators=[
            DataRequired(),
            Regexp(REGION_CODE, message=_l("A region code, such as C01-T01.")),
        ],
    )
    current_region = StringField(
        _l("Lives now in (region code)"),
        validators=[Optional(), Regexp(REGION_CODE, message=_l("A region code, such as C01-T01."))],
    )


class FindForm(FlaskForm):  # type: ignore[misc]
    class Meta:
        csrf = False  # a search changes nothing (each person shown is audited all the same)

    id_number = StringField(
        _l("ID number, full or masked"),
        validators=[
            Optional(),
            Regexp(
                ID_NUMBER_OR_MASKED,
                message=_l("The full number, or as masked: 110105********1234 or ****1234."),
            ),
        ],
    )
    phone = StringField(
        _l("Phone"),
        validators=[Optional(), Regexp(PHONE, message=_l("Digits, spaces and dashes only."))],
    )
    name = StringField(_l("Full name"), validators=[Optional(), Length(max=200)])
    birth_date = DateField(_l("Date of birth"), validators=[Optional()])


class CoupleForm(FlaskForm):  # type: ignore[misc]
    partner_id_number = StringField(
        _l("Partner's ID number"),
        validators=[DataRequired(), Regexp(ID_NUMBER, message=_l("6 to 32 letters and digits."))],
    )
    planning_since = DateField(_l("Planning a pregnancy since"), validators=[Optional()])


@technician.route("/enrol", methods=["GET", "POST"])
@roles_required(*PEOPLE)
def enrol() -> Response | str | tuple[str, int]:
    form = EnrolForm()
    if form.validate_on_submit():
        session = db.session
        try:
            resident = people.enrol_for_staff(
                session,
                ctx(),
                staff_user(),
                name=form.name.data.strip(),
                sex=form.sex.data,
                birth_date=form.birth_date.data,
                phone=form.phone.data or None,
                id_number=form.id_number.data,
                region_code=form.region.data,
                current_region_code=form.current_region.data or None,
            )
        except ApiError as exc:
            session.rollback()
            put_error(form, exc, "id_number" if exc.code == "resident_exists" else None)
            form.id_number.data = ""
            return render_template("staff/enrol.html", form=form), 409 if exc.status == 409 else 400
        session.commit()
        flash(_("Enrolled. ID number %(masked)s.", masked=resident["id_number"]), "ok")
        return redirect(url_for("technician.resident", resident_id=resident["resident_id"]))
    form.id_number.data = ""  # never echoed back
    return render_template("staff/enrol.html", form=form), 400 if form.errors else 200


@technician.get("/residents")
@roles_required(*PEOPLE)
def find() -> str | tuple[str, int]:
    form = FindForm(request.args)
    given = bool(
        form.id_number.data or form.phone.data or form.name.data or request.args.get("birth_date")
    )
    rows: list[dict] = []
    if given and form.validate():
        session = db.session
        try:
            rows = people.search_residents(
                session,
                ctx(),
                staff_user(),
                id_number=form.id_number.data or None,
                phone=form.phone.data or None,
                name=(form.name.data or "").strip() or None,
                birth_date=form.birth_date.data,
                after=query_int("after"),
                limit=PAGE,
                one_more=True,  # only to know that a next page follows: not read, not audited
            )
        except ApiError as exc:
            session.rollback()
            put_error(form, exc, "id_number")
        else:
            session.commit()  # the audited reads
    page = page_of(rows, lambda r: r["resident_id"], PAGE)
    typed = (form.id_number.data or "").replace("\uff0a", "*")
    if "*" not in typed and len(typed.strip()) > 4:
        form.id_number.data = ""  # a full number is never echoed back; a masked one may stay
    searched = given and not form.errors  # a refused search shows its reason, not "nobody"
    html = render_template("staff/find.html", form=form, page=page, searched=searched)
    return (html, 400) if form.errors else html


@technician.get("/residents/<int:resident_id>")
@roles_required(*PEOPLE)
def resident(resident_id: int) -> str:
    session = db.session
    view = people.resident_for_staff(session, ctx(), staff_user(), resident_id)
    session.commit()
    return resident_page(view, CoupleForm())


@technician.post("/residents/<int:resident_id>/couple")
@roles_required(*PEOPLE)
def couple(resident_id: int) -> Response | tuple[str, int]:
    form = CoupleForm()
    session = db.session
    if form.validate_on_submit():
        try:
            user = staff_user()
            partner_id = people.resident_id_by_number(
                session, ctx(), user, form.partner_id_number.data, field="partner_id_number"
            )
            stations.register_couple(
                session, ctx(), user, resident_id, partner_id, form.planning_since.data
            )
        except ApiError as exc:
            session.rollback()
            put_error(form, exc, "partner_id_number")
        else:
            session.commit()
            flash(_("Couple recorded."), "ok")
            return redirect(url_for("technician.resident", resident_id=resident_id))
    form.partner_id_number.data = ""
    view = people.resident_for_staff(session, ctx(), staff_user(), resident_id)
    session.commit()
    return resident_page(view, form), 400


def resident_page(view: dict, couple_form: CoupleForm) -> str:
    return render_template(
        "staff/resident.html",
        resident=view,
        couple=couple_form,
        reasons=REVOKE_REASONS,
        replace_reasons=REPLACE_REASONS,
        revoked_before_replacing=REVOKED_BEFORE_REPLACING,
        card_states=CARD_STATES,
        card_words=card_desk_words(),
    )


def card_desk_words() -> dict[str, str]:
    """The card desk's words in the page's language, for static/card-desk.js."""
    states = {f"state.{status}": words for status, words in CARD_STATES.items()}
    return {key: str(words) for key, words in {**CARD_DESK_WORDS, **states}.items()}


REVOKE_REASONS = [
    ("lost", _l("lost")),
    ("stolen", _l("stolen")),
    ("damaged", _l("damaged")),
    ("holder_left", _l("the holder left")),
]

# Why a card is replaced from the card desk, as `onecard card replace [--reason lost|stolen]`:
# a lost or stolen card is revoked before anything else (so kiosks refuse it even if the new
# card then fails); a damaged card, handed in, becomes `replaced` when the new card is recorded.
REPLACE_REASONS = [(value, words) for value, words in REVOKE_REASONS if value != "holder_left"]
REVOKED_BEFORE_REPLACING = frozenset({"lost", "stolen"})

CARD_STATES = {
    CardStatus.ACTIVE.value: _l("active"),
    CardStatus.REVOKED.value: _l("revoked"),
    CardStatus.REPLACED.value: _l("replaced"),
}


@technician.post("/residents/<int:resident_id>/cards/<guid>/revoke")
@roles_required(*PEOPLE)
def revoke_card(resident_id: int, guid: str) -> Response:
    """Revoke a card (lost, stolen, ...): kiosks refuse it from their next revocation update."""
    reason = request.form.get("reason", "")
    session = db.session
    if reason not in dict(REVOKE_REASONS):
        flash(_("Choose why the card is revoked."), "bad")
        return redirect(url_for("technician.resident", resident_id=resident_id))
    try:
        user = staff_user()
        view = people.resident_for_staff(session, ctx(), user, resident_id)
        if guid not in {c["card_guid"] for c in view["cards"]}:
            raise NotFound("not this resident's card", code="card_unknown")
        people.revoke_card(session, ctx(), guid, reason, user)
    except ApiError:
        session.rollback()
        flash(_("This card cannot be revoked here."), "bad")
    else:
        session.commit()
        flash(_("Card revoked. Kiosks refuse it from their next update."), "ok")
    return redirect(url_for("technician.resident", resident_id=resident_id))


# --- kiosks and stations ----------------------------------------------------------------------------

register_navigation(_l("Devices"), "technician.devices", Role.TECHNICIAN, Role.ADMINISTRATOR)

DEVICE_ID = r"^[A-Za-z0-9_.-]{1,64}$"
SLOTS = r"^\s*(\d{1,4}\s*=\s*[A-Za-z0-9_.-]{1,64}\s*)(,\s*\d{1,4}\s*=\s*[A-Za-z0-9_.-]{1,64}\s*)*$"


class DeviceForm(FlaskForm):  # type: ignore[misc]
    kind = RadioField(
        _l("Kind"),
        choices=options([("kiosk", _l("kiosk")), ("station", _l("service station desk"))]),
        default="kiosk",
        validators=[DataRequired()],
    )
    device_id = StringField(
        _l("Device id"),
        validators=[
            DataRequired(),
            Regexp(DEVICE_ID, message=_l("Letters, digits and . - _ only.")),
        ],
    )
    public_key = StringField(
        _l("Device key (base64, from the device's set-up)"),
        validators=[DataRequired(), Length(max=64)],
    )
    region = StringField(
        _l("Where it stands (region code)"),
        validators=[
            DataRequired(),
            Regexp(REGION_CODE, message=_l("A region code, such as C01-T01.")),
        ],
    )
    slots = StringField(
        _l("Slots (kiosks: 1=SKU, 2=SKU)"),
        validators=[Optional(), Regexp(SLOTS, message=_l("Write slots as 1=SKU, 2=SKU."))],
    )


@technician.route("/devices", methods=["GET", "POST"])
@roles_required(*PEOPLE)
def devices() -> Response | str | tuple[str, int]:
    session = db.session
    user = staff_user()
    form = DeviceForm()
    status = 200
    if form.validate_on_submit():
        slots = {
            int(number): sku.strip()
            for number, _, sku in (
                part.partition("=") for part in (form.slots.data or "").split(",") if part.strip()
            )
        }
        try:
            kiosks.register_device(
                session,
                ctx(),
                user,
                kind=form.kind.data,
                device_id=form.device_id.data,
                public_key_b64=form.public_key.data.strip(),
                region_code=form.region.data,
                slots=slots,
            )
        except ApiError as exc:
            session.rollback()
            field = {"public_key_invalid": "public_key", "sku_unknown": "slots"}.get(exc.code)
            put_error(form, exc, field)
            status = 400
        else:
            flash(_("Registered. The device can now sign its requests."), "ok")
            return redirect(url_for("technician.devices"))
    elif request.method == "POST":
        status = 400
    query = select(Kiosk.id, Kiosk.kind, Kiosk.enabled, Region.code).join(
        Region, Region.id == Kiosk.region_id
    )
    if user.region_id is not None:
        query = query.where(Kiosk.region_id.in_(people.subtree_ids(session, user.region_id)))
    listed = session.execute(
        query.where(Kiosk.id > request.args.get("after", "")).order_by(Kiosk.id).limit(51)
    ).all()
    session.rollback()
    return render_template(
        "staff/devices.html", form=form, page=page_of(listed, lambda row: row[0], 50)
    ), status


@technician.post("/devices/<device_id>/toggle")
@roles_required(Role.ADMINISTRATOR)
def toggle_device(device_id: str) -> Response:
    """An administrator enables or disables a kiosk or station of their area."""
    session = db.session
    device = session.get(Kiosk, device_id)
    try:
        if device is None:
            raise NotFound(f"no device {device_id}", code="kiosk_unknown")
        kiosks.set_device_enabled(session, ctx(), staff_user(), device_id, not device.enabled)
    except ApiError:
        session.rollback()
        flash(_("This device is not yours to change."), "bad")
    else:
        session.commit()
        flash(_("Saved."), "ok")
    return redirect(url_for("technician.devices"))


@technician.get("/devices/<device_id>/refills")
@roles_required(*PEOPLE)
def refills(device_id: str) -> str:
    session = db.session
    events = kiosks.stock_events(session, staff_user(), device_id)
    session.rollback()
    return render_template("staff/refills.html", device_id=device_id, events=events)
