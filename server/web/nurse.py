"""Nurses' pages: appointments at a station, by day (book, move, cancel, list), with each
station's opening hours and capacity as data (services.appointments), and the link to the
station desk (/station), which works under the same sign-in.

    GET   /nurse/appointments?station=&date=     the day: slots with room left, and bookings
    POST  /nurse/appointments                    book (the person by ID number, in the area)
    POST  /nurse/appointments/<id>/cancel        cancel
    POST  /nurse/appointments/<id>/move          move to another slot of the same station

Each booked person shown is an audited read (masked ID numbers only).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import HiddenField, SelectField, StringField
from wtforms.validators import DataRequired, Regexp

from server.errors import ApiError
from server.services import appointments, people, stations
from server.store.db import db
from server.store.models import ExamProgramme, Role
from server.web.access import ctx, roles_required, staff_user
from server.web.base import register_navigation, staff_blueprint
from server.web.forms import ID_NUMBER, options, put_error
from server.web.i18n import _, _l

nurse = staff_blueprint("nurse", __name__, url_prefix="/nurse")
register_navigation(_l("Station desk"), "pages.station_page", Role.STATION_STAFF)
register_navigation(_l("Appointments"), "nurse.day", Role.STATION_STAFF, Role.ADMINISTRATOR)

BOOKERS = (Role.STATION_STAFF, Role.ADMINISTRATOR)


class BookForm(FlaskForm):  # type: ignore[misc]
    station = HiddenField()
    date = HiddenField()
    id_number = StringField(
        _l("Resident's ID number"),
        validators=[DataRequired(), Regexp(ID_NUMBER, message=_l("6 to 32 letters and digits."))],
    )
    programme = SelectField(_l("Exam programme"), validators=[DataRequired()])
    starts_at = SelectField(_l("Time"), validators=[DataRequired()])


class MoveForm(FlaskForm):  # type: ignore[misc]
    starts_at = SelectField(_l("New time"), validators=[DataRequired()])


def _day(raw: str | None) -> dt.date:
    try:
        return dt.date.fromisoformat(raw or "")
    except ValueError:
        return ctx().today()


def _programme_choices() -> list[tuple[str, str]]:
    return [
        (code, name)
        for code, name in db.session.execute(
            select(ExamProgramme.code, ExamProgramme.name)
            .where(ExamProgramme.active.is_(True))
            .order_by(ExamProgramme.id)
        )
    ]


def _page(station: str | None, day: dt.date, book: BookForm | None = None) -> tuple[str, int]:
    session = db.session
    user = staff_user()
    choices = stations.desk_stations(session, user)
    station = station if station in choices else (choices[0] if choices else None)
    slots: list[dict[str, Any]] = []
    booked: list[dict[str, Any]] = []
    status = 200 if book is None or not book.errors else 400
    if station is not None:
        slots = appointments.station_slots(session, ctx(), user, station, day)
        booked = appointments.day_list(session, ctx(), user, station, day)
        session.commit()  # the audited reads of the people booked
    free = [(s["starts_at"], s["starts_at"][11:16]) for s in slots if s["available"]]
    form = book or BookForm()
    form.station.data, form.date.data = station, day.isoformat()
    form.programme.choices = options(_programme_choices())
    form.starts_at.choices = options(free)
    move = MoveForm()
    move.starts_at.choices = options(free)
    html = render_template(
        "staff/appointments.html",
        stations=choices,
        station=station,
        day=day,
        slots=slots,
        booked=booked,
        book=form,
        move=move,
        week=appointments.week_hours(session, station) if station else {},
    )
    return html, status


@nurse.get("/appointments")
@roles_required(*BOOKERS)
def day() -> tuple[str, int]:
    return _page(request.args.get("station"), _day(request.args.get("date")))


@nurse.post("/appointments")
@roles_required(*BOOKERS)
def book() -> Response | tuple[str, int]:
    form = BookForm()
    day = _day(form.date.data)
    form.programme.choices = options(_programme_choices())
    form.starts_at.choices = options([(form.starts_at.data, form.starts_at.data)])
    if form.validate_on_submit():
        session = db.session
        try:
            user = staff_user()
            resident_id = people.resident_id_by_number(session, ctx(), user, form.id_number.data)
            appointments.book_appointment(
                session,
                ctx(),
                user,
                station_id=form.station.data,
                programme_code=form.programme.data,
                resident_id=resident_id,
                starts_at=dt.datetime.fromisoformat(form.starts_at.data),
            )
        except (ApiError, ValueError) as exc:
            session.rollback()
            if isinstance(exc, ApiError):
                put_error(form, exc, "id_number" if exc.code == "resident_unknown" else None)
            else:
                form.starts_at.errors = [_("Choose a time from the list.")]
        else:
            session.commit()
            flash(_("Appointment booked."), "ok")
            return redirect(url_for("nurse.day", station=form.station.data, date=day.isoformat()))
    form.id_number.data = ""
    return _page(form.station.data, day, form)


@nurse.post("/appointments/<int:appointment_id>/cancel")
@roles_required(*BOOKERS)
def cancel(appointment_id: int) -> Response:
    session = db.session
    answer = appointments.cancel_appointment(session, ctx(), staff_user(), appointment_id)
    session.commit()
    flash(_("Appointment cancelled."), "ok")
    return redirect(
        url_for("nurse.day", station=answer["station_id"], date=answer["starts_at"][:10])
    )


@nurse.post("/appointments/<int:appointment_id>/move")
@roles_required(*BOOKERS)
def move(appointment_id: int) -> Response:
    raw = request.form.get("starts_at", "")
    session = db.session
    try:
        answer = appointments.move_appointment(
            session, ctx(), staff_user(), appointment_id, dt.datetime.fromisoformat(raw)
        )
    except (ApiError, ValueError):
        session.rollback()
        flash(_("The appointment could not be moved to that time."), "bad")
        return redirect(request.referrer or url_for("nurse.day"))
    session.commit()
    flash(_("Appointment moved."), "ok")
    return redirect(
        url_for("nurse.day", station=answer["station_id"], date=answer["starts_at"][:10])
    )
