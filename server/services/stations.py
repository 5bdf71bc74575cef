"""Service stations: exam eligibility and records (the rules themselves are server.domain.exams),
couples, and appointment slots.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.domain import exams
from server.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unprocessable
from server.services.context import Context
from server.services.dispensing import check_tap, holder_of, parse_tap
from server.services.people import in_scope, subtree_ids
from server.store import audit
from server.store.models import (
    Card,
    Couple,
    ExamProgramme,
    ExamRecord,
    Kiosk,
    Resident,
    StaffUser,
)

# --- exams at service stations --------------------------------------------------------------------


def _programmes(session: Session) -> list[tuple[int, exams.Programme]]:
    rows = session.scalars(
        select(ExamProgramme).where(ExamProgramme.active.is_(True)).order_by(ExamProgramme.id)
    ).all()
    return [
        (
            row.id,
            exams.Programme(
                row.code,
                row.name,
                frozenset(row.sexes or ""),
                row.min_age,
                row.max_age,
                row.interval_days,
                row.once,
                row.requires_plan,
            ),
        )
        for row in rows
    ]


def _identify(
    session: Session, ctx: Context, station_id: str, proof: Any
) -> tuple[Resident, dt.date]:
    challenge, signature = parse_tap(proof, station_id, ctx)
    checked = check_tap(session, ctx, station_id, challenge, signature)
    if isinstance(checked, dict):
        raise Unprocessable(checked["message"], code=checked["reason"])
    card, now = checked
    resident = session.get(Resident, card.resident_id)
    assert resident is not None
    return resident, ctx.today(now)


def _decisions(
    session: Session, ctx: Context, resident: Resident, today: dt.date
) -> list[tuple[int, exams.Programme, exams.ExamDecision]]:
    holder = holder_of(ctx, resident)
    history: dict[int, list[dt.date]] = defaultdict(list)
    for programme_id, given_on in session.execute(
        select(ExamRecord.programme_id, ExamRecord.given_on).where(
            ExamRecord.resident_id == resident.id
        )
    ):
        history[programme_id].append(given_on)
    plan_since = session.scalar(
        select(func.max(Couple.planning_since)).where(
            Couple.active.is_(True),
            (Couple.partner_a_id == resident.id) | (Couple.partner_b_id == resident.id),
        )
    )
    return [
        (pid, programme, exams.evaluate(programme, holder, history[pid], today, plan_since))
        for pid, programme in _programmes(session)
    ]


def _decision_view(programme: exams.Programme, decision: exams.ExamDecision) -> dict[str, Any]:
    return {
        "programme": programme.code,
        "name": programme.name,
        "eligible": decision.eligible,
        "reason": decision.reason.value if decision.reason else None,
        "next_eligible_on": decision.next_eligible_on.isoformat()
        if decision.next_eligible_on
        else None,
    }


def exam_eligibility(session: Session, ctx: Context, station_id: str, proof: Any) -> dict[str, Any]:
    """A card tapped at a station: every programme, eligible or not, why, and from when. Nothing
    about the person beyond that."""
    resident, today = _identify(session, ctx, station_id, proof)
    return {
        "programmes": [
            _decision_view(programme, decision)
            for _pid, programme, decision in _decisions(session, ctx, resident, today)
        ]
    }


def record_exam(
    session: Session,
    ctx: Context,
    station_id: str,
    proof: Any,
    programme_code: str,
    staff: str | None,
) -> dict[str, Any]:
    """Record that an exam was given today at this station (the card is tapped again: the person
    is present). Refused with 409 when the person is not eligible. Never stores results."""
    resident, today = _identify(session, ctx, station_id, proof)
    session.scalar(select(Resident.id).where(Resident.id == resident.id).with_for_update())
    for pid, programme, decision in _decisions(session, ctx, resident, today):
        if programme.code != programme_code:
            continue
        if not decision.eligible:
            raise Conflict(
                f"not eligible for {programme.name}: {decision.reason}",
                code="not_eligible",
                reason=decision.reason.value if decision.reason else None,
                next_eligible_on=decision.next_eligible_on.isoformat()
                if decision.next_eligible_on
                else None,
            )
        record = ExamRecord(
            programme_id=pid,
            resident_id=resident.id,
            station_id=station_id,
            given_on=today,
            staff=staff,
            created_at=ctx.now(),
        )
        session.add(record)
        session.flush()
        return {"record_id": record.id, "programme": programme.code, "given_on": today.isoformat()}
    raise NotFound(f"no programme {programme_code}", code="programme_unknown")


def register_couple(
    session: Session,
    ctx: Context,
    user: StaffUser,
    partner_a: int,
    partner_b: int,
    planning_since: dt.date | None,
) -> dict[str, Any]:
    """Record two residents as a couple (optionally planning a pregnancy since a date). A person
    is in at most one active couple: registering a new one ends the earlier. No commit."""
    if partner_a == partner_b:
        raise InvalidRequest("a couple is two different people", code="field_invalid")
    people = [session.get(Resident, partner_a), session.get(Resident, partner_b)]
    if any(p is None for p in people):
        raise NotFound("no such resident", code="resident_unknown")
    if not all(in_scope(session, user, p.region_id) for p in people if p is not None):
        raise Forbidden("a partner lives outside your area", code="out_of_scope")
    for earlier in session.scalars(
        select(Couple).where(
            Couple.active.is_(True),
            Couple.partner_a_id.in_([partner_a, partner_b])
            | Couple.partner_b_id.in_([partner_a, partner_b]),
        )
    ):
        earlier.active = False
    couple = Couple(
        partner_a_id=partner_a,
        partner_b_id=partner_b,
        planning_since=planning_since,
        active=True,
        created_at=ctx.now(),
    )
    session.add(couple)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="couple.register",
        subject=f"couple:{couple.id}",
        detail={"partners": [partner_a, partner_b]},
    )
    return {
        "couple_id": couple.id,
        "partners": [partner_a, partner_b],
        "planning_since": planning_since.isoformat() if planning_since else None,
    }


# --- appointments (booked through server.services.appointments) -------------------------------------


def station_row(session: Session, station_id: str, *, lock: bool = False) -> Kiosk:
    """A station (404 for anything else); `lock`: hold its row until the transaction ends."""
    query = select(Kiosk).where(Kiosk.id == station_id)
    if lock:
        query = query.with_for_update()
    station = session.scalar(query)
    if station is None or station.kind != "station":
        raise NotFound(f"no station {station_id}", code="station_unknown")
    return station


def programme_decision(
    session: Session, ctx: Context, resident: Resident, programme_code: str, day: dt.date
) -> tuple[int, str]:
    """The programme's id and code when the person is eligible for it on `day` (409 when not,
    404 for an unknown programme)."""
    for pid, programme, decision in _decisions(session, ctx, resident, day):
        if programme.code != programme_code:
            continue
        if not decision.eligible:
            raise Conflict(
                f"not eligible for {programme.name} on {day}: {decision.reason}",
                code="not_eligible",
                reason=decision.reason.value if decision.reason else None,
            )
        return pid, programme.code
    raise NotFound(f"no programme {programme_code}", code="programme_unknown")


# --- the station desk (a nurse's browser and the desk's card reader) ------------------------------


def desk_station(session: Session, user: StaffUser, station_id: str) -> Kiosk:
    """The station a nurse works at from the desk page: it exists, is enabled and lies in the
    user's area (404/403 otherwise)."""
    station = station_row(session, station_id)
    if not in_scope(session, user, station.region_id):
        raise Forbidden("this station is outside your area", code="out_of_scope")
    if not station.enabled:
        raise Forbidden(f"station {station_id} is disabled", code="station_disabled")
    return station


def desk_stations(
    session: Session, user: StaffUser, *, include_disabled: bool = False
) -> list[str]:
    """The ids of the enabled (or all) stations in the user's area."""
    query = select(Kiosk.id).where(Kiosk.kind == "station")
    if not include_disabled:
        query = query.where(Kiosk.enabled.is_(True))
    if user.region_id is not None:
        query = query.where(Kiosk.region_id.in_(subtree_ids(session, user.region_id)))
    return list(session.scalars(query.order_by(Kiosk.id)))


def audit_person_of_tap(
    session: Session,
    ctx: Context,
    user_id: int,
    action: str,
    card_guid: str,
    detail: dict[str, Any],
) -> None:
    """Audit a read or record of the person behind a tap that was already verified."""
    resident_id = session.scalar(select(Card.resident_id).where(Card.guid == card_guid.lower()))
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user_id}",
        action=action,
        subject=f"resident:{resident_id}" if resident_id is not None else f"card:{card_guid}",
        detail=detail,
    )
