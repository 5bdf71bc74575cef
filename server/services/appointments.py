"""Appointments at service stations: each station's opening hours, slot length and capacity are
data (`station_hours`, one row per weekday; no row: closed), not code.

A slot takes up to `capacity` bookings. Booking holds the station's row lock (PostgreSQL
`SELECT ... FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` write lock) while it counts the slot's
bookings, so two desks cannot overfill a slot. The person must be eligible for the programme on
that day (server.domain.exams through services.stations).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.errors import Conflict, Forbidden, InvalidRequest, NotFound
from server.services.context import Context
from server.services.people import in_scope
from server.services.stations import programme_decision, station_row
from server.store import audit
from server.store.models import Appointment, ExamProgramme, Kiosk, Resident, StaffUser, StationHours

MAX_SLOT_MINUTES = 240
MAX_CAPACITY = 100
DEFAULT_HOURS = (dt.time(8, 0), dt.time(17, 0), 30, 1)  # a station registered without hours


@dataclass(frozen=True)
class DayHours:
    opens: dt.time
    closes: dt.time
    slot_minutes: int
    capacity: int


def _scoped_station(
    session: Session, user: StaffUser, station_id: str, *, lock: bool = False
) -> Kiosk:
    row = station_row(session, station_id, lock=lock)
    if not in_scope(session, user, row.region_id):
        raise Forbidden("this station is outside your area", code="out_of_scope")
    return row


def hours_on(session: Session, station_id: str, day: dt.date) -> DayHours | None:
    row = session.get(StationHours, (station_id, day.weekday()))
    if row is None:
        return None
    return DayHours(row.opens, row.closes, row.slot_minutes, row.capacity)


def week_hours(session: Session, station_id: str) -> dict[int, DayHours]:
    return {
        row.weekday: DayHours(row.opens, row.closes, row.slot_minutes, row.capacity)
        for row in session.scalars(
            select(StationHours).where(StationHours.station_id == station_id)
        )
    }


def set_hours(
    session: Session,
    ctx: Context,
    user: StaffUser,
    station_id: str,
    week: dict[int, DayHours | None],
) -> None:
    """Replace a station's hours for the given weekdays (None: closed that day). No commit."""
    _scoped_station(session, user, station_id)
    for weekday, hours in week.items():
        if not 0 <= weekday <= 6:
            raise InvalidRequest("weekday is 0 (Monday) to 6 (Sunday)", code="field_invalid")
        if hours is not None and (
            hours.opens >= hours.closes
            or not 5 <= hours.slot_minutes <= MAX_SLOT_MINUTES
            or not 1 <= hours.capacity <= MAX_CAPACITY
        ):
            raise InvalidRequest(
                "opening before closing, slots of 5 to 240 minutes, 1 to 100 people",
                code="hours_invalid",
                field="opens",
            )
        session.execute(
            delete(StationHours).where(
                StationHours.station_id == station_id, StationHours.weekday == weekday
            )
        )
        if hours is not None:
            session.add(
                StationHours(
                    station_id=station_id,
                    weekday=weekday,
                    opens=hours.opens,
                    closes=hours.closes,
                    slot_minutes=hours.slot_minutes,
                    capacity=hours.capacity,
                )
            )
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="station.hours",
        subject=f"station:{station_id}",
        detail={
            str(d): None
            if h is None
            else [h.opens.isoformat(), h.closes.isoformat(), h.slot_minutes, h.capacity]
            for d, h in week.items()
        },
    )


def add_default_hours(session: Session, station_id: str) -> None:
    """Monday to Friday, 08:00-17:00, 30-minute slots for one person (a new station; a
    station re-keyed keeps the hours it has)."""
    if (
        session.scalar(
            select(StationHours.weekday).where(StationHours.station_id == station_id).limit(1)
        )
        is not None
    ):
        return
    opens, closes, minutes, capacity = DEFAULT_HOURS
    for weekday in range(5):
        session.add(
            StationHours(
                station_id=station_id,
                weekday=weekday,
                opens=opens,
                closes=closes,
                slot_minutes=minutes,
                capacity=capacity,
            )
        )


def slot_starts(ctx: Context, hours: DayHours | None, day: dt.date) -> list[dt.datetime]:
    """The day's slots, in the city's time zone (none on a closed day)."""
    if hours is None:
        return []
    start = dt.datetime.combine(day, hours.opens, ctx.timezone)
    end = dt.datetime.combine(day, hours.closes, ctx.timezone)
    step = dt.timedelta(minutes=hours.slot_minutes)
    slots = []
    while start + step <= end:
        slots.append(start)
        start += step
    return slots


def _booked(session: Session, station_id: str, first: dt.datetime, last: dt.datetime) -> list[Any]:
    return session.execute(
        select(
            Appointment.id, Appointment.starts_at, Appointment.programme_id, Appointment.resident_id
        )
        .where(
            Appointment.station_id == station_id,
            Appointment.status == "booked",
            # UTC: SQLite keeps the wall time and drops the offset.
            Appointment.starts_at >= first.astimezone(dt.UTC),
            Appointment.starts_at <= last.astimezone(dt.UTC),
        )
        .order_by(Appointment.starts_at, Appointment.id)
    ).all()


def station_slots(
    session: Session, ctx: Context, user: StaffUser, station_id: str, day: dt.date
) -> list[dict[str, Any]]:
    """Every slot of the day with its capacity, how many are booked, and whether one is free."""
    _scoped_station(session, user, station_id)
    hours = hours_on(session, station_id, day)
    starts = slot_starts(ctx, hours, day)
    if not starts:
        return []
    by_start: dict[dt.datetime, list[int]] = {}
    for appointment_id, at, _programme, _resident in _booked(
        session, station_id, starts[0], starts[-1]
    ):
        by_start.setdefault(audit.as_utc(at), []).append(appointment_id)
    now = ctx.now()
    assert hours is not None
    answer = []
    for start in starts:
        ids = by_start.get(start.astimezone(dt.UTC), [])
        answer.append(
            {
                "starts_at": start.isoformat(),
                "available": start > now and len(ids) < hours.capacity,
                "appointment_id": ids[0] if ids else None,
                "capacity": hours.capacity,
                "booked": len(ids),
            }
        )
    return answer


def day_list(
    session: Session, ctx: Context, user: StaffUser, station_id: str, day: dt.date
) -> list[dict[str, Any]]:
    """The day's booked appointments (masked ID numbers; each person shown is an audited read)."""
    _scoped_station(session, user, station_id)
    start = dt.datetime.combine(day, dt.time(0), ctx.timezone)
    rows = session.execute(
        select(Appointment, ExamProgramme.code, Resident.id_number_last4)
        .join(ExamProgramme, ExamProgramme.id == Appointment.programme_id)
        .join(Resident, Resident.id == Appointment.resident_id)
        .where(
            Appointment.station_id == station_id,
            Appointment.status == "booked",
            Appointment.starts_at >= start.astimezone(dt.UTC),
            Appointment.starts_at < (start + dt.timedelta(days=1)).astimezone(dt.UTC),
        )
        .order_by(Appointment.starts_at, Appointment.id)
    ).all()
    items = []
    for appointment, programme, last4 in rows:
        items.append(
            {
                "appointment_id": appointment.id,
                "starts_at": audit.as_utc(appointment.starts_at).astimezone(ctx.timezone),
                "programme": programme,
                "resident_id": appointment.resident_id,
                "id_number": "*" * 14 + last4,
            }
        )
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="resident.read",
            subject=f"resident:{appointment.resident_id}",
            detail={"appointment": appointment.id},
        )
    return items


def book_appointment(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    station_id: str,
    programme_code: str,
    resident_id: int,
    starts_at: dt.datetime,
) -> dict[str, Any]:
    """Book a slot for a person's exam; the person must be eligible that day. No commit."""
    row = _scoped_station(session, user, station_id, lock=True)
    local = starts_at.astimezone(ctx.timezone)
    hours = hours_on(session, station_id, local.date())
    if local not in slot_starts(ctx, hours, local.date()):
        raise InvalidRequest(
            "the station takes no appointment at that time (see its hours)",
            code="slot_invalid",
            field="starts_at",
        )
    assert hours is not None
    if starts_at <= ctx.now():
        raise InvalidRequest("that slot has passed", code="slot_invalid", field="starts_at")
    resident = session.get(Resident, resident_id)
    if resident is None:
        raise NotFound(f"no resident {resident_id}", code="resident_unknown")
    if not (
        in_scope(session, user, resident.region_id)
        or (
            resident.current_region_id is not None
            and in_scope(session, user, resident.current_region_id)
        )
    ):
        raise Forbidden("the resident is outside your area", code="out_of_scope")
    programme_id, programme = programme_decision(
        session, ctx, resident, programme_code, local.date()
    )
    taken = session.scalar(
        select(func.count()).where(
            Appointment.station_id == row.id,
            Appointment.status == "booked",
            Appointment.starts_at == starts_at.astimezone(dt.UTC),
        )
    )
    if (taken or 0) >= hours.capacity:
        raise Conflict("that slot is full", code="slot_taken", field="starts_at")
    appointment = Appointment(
        station_id=station_id,
        programme_id=programme_id,
        resident_id=resident_id,
        starts_at=starts_at.astimezone(dt.UTC),
        status="booked",
        booked_by=user.id,
        created_at=ctx.now(),
    )
    session.add(appointment)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="appointment.book",
        subject=f"resident:{resident_id}",
        detail={"appointment": appointment.id, "station": station_id},
    )
    return {
        "appointment_id": appointment.id,
        "station_id": station_id,
        "programme": programme,
        "starts_at": local.isoformat(),
        "status": "booked",
    }


def cancel_appointment(
    session: Session, ctx: Context, user: StaffUser, appointment_id: int
) -> dict[str, Any]:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        raise NotFound(f"no appointment {appointment_id}", code="appointment_unknown")
    _scoped_station(session, user, appointment.station_id)
    if appointment.status == "booked":
        appointment.status = "cancelled"
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="appointment.cancel",
            subject=f"resident:{appointment.resident_id}",
            detail={"appointment": appointment.id},
        )
    programme = session.scalar(
        select(ExamProgramme.code).where(ExamProgramme.id == appointment.programme_id)
    )
    return {
        "appointment_id": appointment.id,
        "station_id": appointment.station_id,
        "programme": programme,
        "starts_at": audit.as_utc(appointment.starts_at).astimezone(ctx.timezone).isoformat(),
        "status": "cancelled",
    }


def move_appointment(
    session: Session, ctx: Context, user: StaffUser, appointment_id: int, starts_at: dt.datetime
) -> dict[str, Any]:
    """Move a booking to another slot of the same station: a new booking, the old one
    cancelled, in one transaction (so a full or invalid slot leaves the old one as it was)."""
    old = session.get(Appointment, appointment_id)
    if old is None or old.status != "booked":
        raise NotFound(f"no booked appointment {appointment_id}", code="appointment_unknown")
    programme = session.scalar(
        select(ExamProgramme.code).where(ExamProgramme.id == old.programme_id)
    )
    cancel_appointment(session, ctx, user, appointment_id)
    return book_appointment(
        session,
        ctx,
        user,
        station_id=old.station_id,
        programme_code=programme or "",
        resident_id=old.resident_id,
        starts_at=starts_at,
    )
