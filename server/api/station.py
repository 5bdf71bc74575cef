"""The service stations' calls: exam eligibility and exam records (from a station device, or from
the desk page through a nurse's sign-in), appointments and couples.

The desk page (`/station`, server.web.station) asks the local card service on the desk for a tap
proof made for the station, and posts it to `/staff/v1/exams/...`. The tap is checked exactly as
for a station device (services.stations: registered active card, fresh, signed, the station's
counter only grows), so a proof is used once. Answers carry programmes only, nothing about the
person; each read of a person's eligibility and each record is audited with the nurse as actor.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint
from pydantic import Field, StringConstraints

from server import services
from server.http.contracts import (
    MAX_STAFF_NAME,
    Answer,
    Code,
    Contract,
    Day,
    DbId,
    DeviceId,
    Moment,
    Proof,
    Query,
)
from server.http.framework import OPTIONAL, REQUIRED, Call, device, endpoint, staff
from server.services import stations
from server.store.models import Role

station_api = Blueprint("station_api", __name__, url_prefix="/api/v1")
desk_api = Blueprint("desk_api", __name__, url_prefix="/staff/v1")

STATION = device("station")
NURSES = staff(Role.STATION_STAFF)
BOOKERS = staff(Role.ADMINISTRATOR, Role.STATION_STAFF)
DEVICE_ERRORS = {
    400: "invalid JSON, fields or headers",
    401: "the request is not signed by a known, enabled station",
    403: "the call is for another kind of device, or the proof was made at another device",
    422: "the Idempotency-Key was used for a different request",
}
STAFF_ERRORS = {
    400: "invalid JSON, fields or query",
    401: "no or unknown bearer token",
    403: "the role may not, or the station lies outside the user's area",
    404: "no such station, programme, person or appointment",
}
PROOF_CODES = {"proof": "proof_malformed"}
ExamReason = Literal[
    "inactive", "sex_not_served", "too_young", "too_old", "already_given", "too_soon", "no_plan"
]


class TapRequest(Contract):
    proof: Proof


class ExamRecordRequest(Contract):
    proof: Proof
    programme: Code
    staff: Annotated[str, StringConstraints(min_length=1, max_length=MAX_STAFF_NAME)] | None = None


class DeskTapRequest(Contract):
    station_id: DeviceId
    proof: Proof


class DeskRecordRequest(DeskTapRequest):
    programme: Code


class ProgrammeDecision(Answer):
    programme: str
    name: str
    eligible: bool
    reason: ExamReason | None
    next_eligible_on: str | None = Field(json_schema_extra={"format": "date"})


class ExamEligibility(Answer):
    programmes: list[ProgrammeDecision]


class ExamRecordAnswer(Answer):
    record_id: int
    programme: str
    given_on: str = Field(json_schema_extra={"format": "date"})


class SlotsQuery(Query):
    date: Day


class StationSlot(Answer):
    starts_at: str = Field(json_schema_extra={"format": "date-time"})
    available: bool
    appointment_id: int | None = Field(description="the slot's first booking, if any")
    capacity: int = Field(description="how many people the slot takes (the station's hours)")
    booked: int


class SlotList(Answer):
    station_id: str
    date: str = Field(json_schema_extra={"format": "date"})
    slots: list[StationSlot]


class AppointmentRequest(Contract):
    station_id: DeviceId
    programme: Code
    resident_id: DbId
    starts_at: Moment


class Appointment(Answer):
    appointment_id: int
    station_id: str
    programme: str | None
    starts_at: str = Field(json_schema_extra={"format": "date-time"})
    status: Literal["booked", "cancelled"]


class CoupleRequest(Contract):
    partners: Annotated[list[DbId], Field(min_length=2, max_length=2)]
    planning_since: Day | None = None


class Couple(Answer):
    couple_id: int
    partners: list[int]
    planning_since: str | None = Field(json_schema_extra={"format": "date"})


class Me(Answer):
    name: str
    role: str
    stations: list[str]


# --- a station device ----------------------------------------------------------------------------


@endpoint(
    station_api,
    "POST",
    "/exams/eligibility",
    summary="A card tapped at a station: each exam programme, eligible or not, why, from when",
    auth=STATION,
    body=TapRequest,
    answer=ExamEligibility,
    idempotency=REQUIRED,
    errors={**DEVICE_ERRORS, 503: "the card CA is not configured"},
    field_codes=PROOF_CODES,
)
def exam_eligibility(call: Call[TapRequest, None]) -> dict[str, Any]:
    return services.exam_eligibility(call.session, call.ctx, call.device_id, call.body.proof.as_dict())


@endpoint(
    station_api,
    "POST",
    "/exams/records",
    summary="Record that an exam was given (programme, station, date, staff), never its results",
    auth=STATION,
    body=ExamRecordRequest,
    answer=ExamRecordAnswer,
    status=201,
    idempotency=REQUIRED,
    errors={**DEVICE_ERRORS, 404: "no such programme", 409: "not eligible now", 503: "no card CA"},
    field_codes=PROOF_CODES,
)
def record_exam(call: Call[ExamRecordRequest, None]) -> dict[str, Any]:
    body = call.body
    return services.record_exam(
        call.session, call.ctx, call.device_id, body.proof.as_dict(), body.programme, body.staff
    )


# --- appointments and couples (station staff) ----------------------------------------------------


@endpoint(
    station_api,
    "GET",
    "/stations/<station_id>/slots",
    summary="A station's appointment slots on a day, with which are free",
    auth=BOOKERS,
    query=SlotsQuery,
    answer=SlotList,
    errors=STAFF_ERRORS,
)
def station_slots(call: Call[None, SlotsQuery], station_id: str) -> dict[str, Any]:
    day = call.query.date
    slots = services.station_slots(call.session, call.ctx, call.user(), station_id, day)
    return {"station_id": station_id, "date": day.isoformat(), "slots": slots}


@endpoint(
    station_api,
    "POST",
    "/appointments",
    summary="Book an exam slot for a person who is eligible that day",
    auth=BOOKERS,
    body=AppointmentRequest,
    answer=Appointment,
    status=201,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 409: "the slot is taken", 422: "not a slot, or not eligible"},
)
def book_appointment(call: Call[AppointmentRequest, None]) -> dict[str, Any]:
    body = call.body
    return services.book_appointment(
        call.session,
        call.ctx,
        call.user(),
        station_id=body.station_id,
        programme_code=body.programme,
        resident_id=body.resident_id,
        starts_at=body.starts_at,
    )


@endpoint(
    station_api,
    "POST",
    "/appointments/<dbid:appointment_id>/cancel",
    summary="Cancel an appointment",
    auth=BOOKERS,
    answer=Appointment,
    errors=STAFF_ERRORS,
)
def cancel_appointment(call: Call[None, None], appointment_id: int) -> dict[str, Any]:
    return services.cancel_appointment(call.session, call.ctx, call.user(), appointment_id)


@endpoint(
    station_api,
    "POST",
    "/couples",
    summary="Record a couple, optionally planning a pregnancy since a date",
    auth=BOOKERS,
    body=CoupleRequest,
    answer=Couple,
    status=201,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 409: "already a couple"},
)
def register_couple(call: Call[CoupleRequest, None]) -> dict[str, Any]:
    first, second = call.body.partners
    return services.register_couple(
        call.session, call.ctx, call.user(), first, second, call.body.planning_since
    )


# --- the station desk page's calls ---------------------------------------------------------------


@endpoint(
    desk_api,
    "GET",
    "/me",
    summary="The signed-in nurse and the stations they may work at (ids only)",
    auth=NURSES,
    answer=Me,
    errors=STAFF_ERRORS,
)
def whoami(call: Call[None, None]) -> dict[str, Any]:
    user = call.user()
    return {
        "name": user.name,
        "role": user.role.value,
        "stations": stations.desk_stations(call.session, user),
    }


@endpoint(
    desk_api,
    "POST",
    "/exams/eligibility",
    summary="The card on the desk reader: each exam programme, eligible or not, why, from when",
    auth=NURSES,
    body=DeskTapRequest,
    answer=ExamEligibility,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 503: "the card CA is not configured"},
    field_codes=PROOF_CODES,
)
def desk_exam_eligibility(call: Call[DeskTapRequest, None]) -> dict[str, Any]:
    body, session = call.body, call.session
    stations.desk_station(session, call.user(), body.station_id)
    answer = services.exam_eligibility(session, call.ctx, body.station_id, body.proof.as_dict())
    stations.audit_person_of_tap(
        session,
        call.ctx,
        call.user_id,  # type: ignore[arg-type]
        "exam.eligibility.read",
        body.proof.card_guid,
        {"station": body.station_id},
    )
    return answer


@endpoint(
    desk_api,
    "POST",
    "/exams/records",
    summary="Record that an exam was given here today (the card is tapped again); never results",
    auth=NURSES,
    body=DeskRecordRequest,
    answer=ExamRecordAnswer,
    status=201,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 409: "not eligible now", 503: "the card CA is not configured"},
    field_codes=PROOF_CODES,
)
def desk_record_exam(call: Call[DeskRecordRequest, None]) -> dict[str, Any]:
    body, session = call.body, call.session
    stations.desk_station(session, call.user(), body.station_id)
    answer = services.record_exam(
        session,
        call.ctx,
        body.station_id,
        body.proof.as_dict(),
        body.programme,
        f"user:{call.user_id}",
    )
    stations.audit_person_of_tap(
        session,
        call.ctx,
        call.user_id,  # type: ignore[arg-type]
        "exam.record",
        body.proof.card_guid,
        {"station": body.station_id, "programme": body.programme, "record_id": answer["record_id"]},
    )
    return answer
