"""The staff's JSON calls for scripts and the command line: residents, cards, staff cards (issued
on a desk reader by `onecard card provision --staff` or the administrator's staff-card page),
entitlement rules, the monthly report and the open reservations. Each is scoped to the caller's
area (services.people.in_scope) and each read of a person is audited.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from flask import Blueprint, current_app
from pydantic import AfterValidator, Field, StringConstraints
from sqlalchemy import select

from server import services
from server.errors import Forbidden, InvalidRequest, NotFound
from server.http.contracts import (
    EARLIEST_YEAR,
    ID_NUMBER_PATTERN,
    LATEST_YEAR,
    MAX_AGE_YEARS,
    MAX_CERTIFICATE_B64,
    MAX_NAME,
    MAX_PAGE,
    MAX_PERIOD_DAYS,
    MAX_RESERVATION_PAGE,
    MAX_RULE_UNITS,
    PHONE_PATTERN,
    Answer,
    Code,
    Contract,
    Count,
    Day,
    DbId,
    Hex32,
    Query,
    Reason,
)
from server.http.framework import OPTIONAL, Call, endpoint, staff
from server.services import staff_cards
from server.services.provisioning import EXTENSION_KEY, ProvisioningConfig
from server.store.fieldcrypto import mask_id_number
from server.store.models import Region, Role

staff_api = Blueprint("staff_api", __name__, url_prefix="/api/v1")

ENROLLERS = staff(Role.ADMINISTRATOR, Role.STATION_STAFF, Role.TECHNICIAN)
TECHNICIANS = staff(Role.TECHNICIAN, Role.ADMINISTRATOR)
ADMINISTRATORS = staff(Role.ADMINISTRATOR)
READERS = staff(Role.ADMINISTRATOR, Role.AUDITOR)
ANY_STAFF = staff(Role.ADMINISTRATOR, Role.AUDITOR, Role.TECHNICIAN, Role.STATION_STAFF)
STAFF_ERRORS = {
    400: "invalid JSON, fields or query",
    401: "no or unknown bearer token",
    403: "the role may not, or the record lies outside the user's area",
}
Sex = Literal["F", "M"]
PeriodKind = Literal["calendar_month", "rolling_days", "calendar_year"]


def _sexes(value: str) -> str:
    if not set(value) <= {"F", "M"}:
        raise ValueError("must be a string of F and M, or empty")
    return "".join(sorted(set(value)))


def _certificate(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError("must be base64 of DER") from None


# --- contracts -----------------------------------------------------------------------------------


class CardRequest(Contract):
    resident_id: DbId
    certificate: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_CERTIFICATE_B64),
        AfterValidator(_certificate),
    ] = Field(description="base64 of the DER certificate")


Base64Der = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CERTIFICATE_B64),
    AfterValidator(_certificate),
]
StaffName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]


class StaffCardCertificateRequest(Contract):
    user_name: StaffName = Field(description="the staff user the card is for")
    public_key: Base64Der = Field(description="base64 of the card's 9E P-256 SPKI (DER)")
    sign_in_public_key: Base64Der = Field(
        description="base64 of the card's PIN-bound 9A P-256 SPKI (DER)"
    )
    card_guid: Hex32 | None = Field(
        default=None, description="the GUID already on the card, when issuing it again"
    )


class StaffCardCertificateAnswer(Answer):
    card_guid: str
    certificate: str = Field(description="base64 DER, the 9E certificate (staff policy)")
    sign_in_certificate: str = Field(description="base64 DER, the PIN-bound 9A certificate")
    chuid: str = Field(description="base64 of the signed CHUID object")
    expiry: str = Field(json_schema_extra={"format": "date"})
    management_key: str = Field(description="base64, 16 bytes")
    management_key_type: Literal["aes128"]
    puk: Annotated[str, StringConstraints(pattern=r"^[0-9]{8}$")]


class StaffCardLinkRequest(Contract):
    user_name: StaffName
    certificate: Base64Der = Field(description="base64 DER of the card's 9A certificate")


class StaffCardAnswer(Answer):
    card_guid: str
    holder: Literal["staff", "resident"]
    status: str


class CardStatusAnswer(Answer):
    card_guid: str
    status: Literal["active", "revoked", "replaced"]


class RevokeRequest(Contract):
    reason: Reason


class EnrolRequest(Contract):
    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    sex: Sex
    birth_date: Day
    phone: Annotated[str, StringConstraints(pattern=PHONE_PATTERN)] | None = None
    id_number: Annotated[str, StringConstraints(pattern=ID_NUMBER_PATTERN)]
    region: Code = Field(description="region code")


class EnrolAnswer(Answer):
    resident_id: int
    id_number: str = Field(description="masked: only the last 4")


class ResidentsQuery(Query):
    id_number: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    region: Code | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 50
    after: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class ResidentItem(Answer):
    resident_id: int
    name: str
    sex: str
    birth_date: str = Field(json_schema_extra={"format": "date"})
    phone: str | None = None
    id_number: Annotated[str, StringConstraints(pattern=r"^[*]+.{0,4}$")]
    region: str
    status: str
    cards: list[CardStatusAnswer]


class ResidentPage(Answer):
    items: list[ResidentItem]
    next_after: int | None


class RuleSpec(Contract):
    category: Code
    period_kind: PeriodKind
    period_days: Annotated[int, Field(ge=1, le=MAX_PERIOD_DAYS)] | None = None
    units: Annotated[int, Field(ge=0, le=MAX_RULE_UNITS)]
    per_visit_cap: Annotated[int, Field(ge=1, le=MAX_RULE_UNITS)] | None = None
    min_age: Annotated[int, Field(ge=0, le=MAX_AGE_YEARS)] | None = None
    max_age: Annotated[int, Field(ge=0, le=MAX_AGE_YEARS)] | None = None
    sexes: Annotated[str, StringConstraints(max_length=2), AfterValidator(_sexes)] = Field(
        default="", description="F, M, FM or empty (anyone)"
    )
    area: Code | None = Field(
        default=None,
        description="region code of the area the rule serves (taps at the kiosks there); "
        "omitted: the whole city, which only a city-wide administrator may give",
    )


class Rule(Answer):
    rule_id: int
    area: str | None
    category: str
    period_kind: PeriodKind
    period_days: int | None
    units: int
    per_visit_cap: int | None
    min_age: int | None
    max_age: int | None
    sexes: str
    active: bool


class RulesQuery(Query):
    all: Literal["0", "1"] = "0"


class RuleList(Answer):
    items: list[Rule]


class ReportQuery(Query):
    year: Annotated[int, Field(ge=EARLIEST_YEAR, le=LATEST_YEAR)] | None = None


class ReportRow(Answer):
    town: str
    town_name: str
    month: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}$")]
    dispenses: int | None
    units: int | None


class MonthlyReport(Answer):
    year: int
    suppressed_below: int
    rows: list[ReportRow]


class ReservationsQuery(Query):
    limit: Annotated[int, Field(ge=1, le=MAX_RESERVATION_PAGE)] = 100
    after: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class Reservation(Answer):
    authorization_id: str
    kiosk_id: str
    slot: int
    quantity: int
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    age_seconds: Count


class ReservationPage(Answer):
    items: list[Reservation]
    next_after: str | None


# --- calls ---------------------------------------------------------------------------------------


@endpoint(
    staff_api,
    "POST",
    "/cards",
    summary="Record a card issued to a resident (the last step of provisioning)",
    auth=TECHNICIANS,
    body=CardRequest,
    answer=CardStatusAnswer,
    status=201,
    idempotency=OPTIONAL,
    errors={
        **STAFF_ERRORS,
        404: "no such resident",
        409: "the card is already registered",
        422: "the certificate is not valid, or the Idempotency-Key was used for another request",
        503: "the card CA is not configured",
    },
)
def register_card(call: Call[CardRequest, None]) -> dict[str, Any]:
    certificate: bytes = call.body.certificate  # type: ignore[assignment]  # decoded by its contract
    card = services.issue_card(
        call.session, call.ctx, call.body.resident_id, certificate, call.user()
    )
    return {"card_guid": card.guid, "status": card.status.value}


@endpoint(
    staff_api,
    "POST",
    "/cards/<hex32:guid>/revoke",
    summary="Revoke a card (lost, stolen); idempotent",
    auth=TECHNICIANS,
    body=RevokeRequest,
    answer=CardStatusAnswer,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 404: "no such card"},
)
def revoke_card(call: Call[RevokeRequest, None], guid: str) -> dict[str, Any]:
    card = services.revoke_card(call.session, call.ctx, guid, call.body.reason, call.user())
    return {"card_guid": card.guid, "status": card.status.value}


STAFF_CARD_ERRORS = {
    **STAFF_ERRORS,
    404: "no such user",
    409: "the card is linked, revoked or a resident's already, or the user is disabled",
    422: "the Idempotency-Key was used for a different request",
    503: "this server holds no card CA key",
}


def _provisioning() -> ProvisioningConfig:
    return current_app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


@endpoint(
    staff_api,
    "POST",
    "/staff-cards/certificates",
    summary="Certify a staff card's 9E and PIN-bound 9A keys (made on the card) and its CHUID "
    "for a staff user in the administrator's area; answer its management key and PUK "
    "(links nothing)",
    auth=ADMINISTRATORS,
    body=StaffCardCertificateRequest,
    answer=StaffCardCertificateAnswer,
    status=201,
    idempotency=OPTIONAL,
    errors=STAFF_CARD_ERRORS,
)
def certify_staff_card(call: Call[StaffCardCertificateRequest, None]) -> dict[str, Any]:
    body = call.body
    return staff_cards.certify(
        call.session,
        call.ctx,
        _provisioning(),
        call.user(),
        body.user_name,
        body.public_key,  # type: ignore[arg-type]  # decoded by its contract
        body.sign_in_public_key,  # type: ignore[arg-type]
        bytes.fromhex(body.card_guid) if body.card_guid else None,
    )


@endpoint(
    staff_api,
    "POST",
    "/staff-cards",
    summary="Link a staff card just written to its user, by its 9A certificate (the last step "
    "of issuing it)",
    auth=ADMINISTRATORS,
    body=StaffCardLinkRequest,
    answer=StaffCardAnswer,
    status=201,
    idempotency=OPTIONAL,
    errors={**STAFF_CARD_ERRORS, 400: "invalid fields, or not a staff card's 9A certificate"},
)
def link_staff_card(call: Call[StaffCardLinkRequest, None]) -> dict[str, Any]:
    body = call.body
    guid = staff_cards.link_issued(
        call.session,
        call.ctx,
        call.user(),
        body.user_name,
        body.certificate,  # type: ignore[arg-type]  # decoded by its contract
    )
    return {"card_guid": guid, "holder": "staff", "status": "active"}


@endpoint(
    staff_api,
    "GET",
    "/staff-cards/<hex32:guid>",
    summary="Whom a card was issued to (a staff user or a resident) before a desk rewrites it",
    auth=ADMINISTRATORS,
    answer=StaffCardAnswer,
    errors={**STAFF_ERRORS, 404: "no card with this GUID was issued"},
)
def show_staff_card(call: Call[None, None], guid: str) -> dict[str, Any]:
    return staff_cards.card_holder(call.session, call.ctx, guid)


@endpoint(
    staff_api,
    "POST",
    "/residents",
    summary="Enrol a person within the user's area (a duplicate ID number is refused)",
    auth=ENROLLERS,
    body=EnrolRequest,
    answer=EnrolAnswer,
    status=201,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 404: "no such region", 409: "this ID number is already enrolled"},
)
def enrol_resident(call: Call[EnrolRequest, None]) -> dict[str, Any]:
    body, session = call.body, call.session
    user = call.user()
    region_id = session.scalar(select(Region.id).where(Region.code == body.region))
    if region_id is None:
        raise NotFound(f"no region {body.region}", code="region_unknown")
    if not services.in_scope(session, user, region_id):
        raise Forbidden("this region is outside your area", code="out_of_scope")
    resident = services.enrol_resident(
        session,
        call.ctx,
        name=body.name,
        sex=body.sex,
        birth_date=body.birth_date,
        phone=body.phone,
        id_number=body.id_number,
        region_id=region_id,
        actor=f"user:{user.id}",
    )
    return {"resident_id": resident.id, "id_number": mask_id_number(resident.id_number_last4)}


@endpoint(
    staff_api,
    "GET",
    "/residents",
    summary="Residents by exact ID number, or by region (paginated), within the user's area; "
    "each read audited",
    auth=ENROLLERS,
    query=ResidentsQuery,
    answer=ResidentPage,
    errors={**STAFF_ERRORS, 404: "no such region"},
)
def search_residents(call: Call[None, ResidentsQuery]) -> dict[str, Any]:
    query = call.query
    if query.id_number is None and query.region is None:
        raise InvalidRequest("give id_number or region", code="field_missing", field="id_number")
    items = services.find_residents(
        call.session,
        call.ctx,
        call.user(),
        id_number=query.id_number,
        region_code=query.region,
        limit=query.limit,
        after=query.after,
    )
    next_after = items[-1]["resident_id"] if len(items) == query.limit else None
    return {"items": items, "next_after": next_after}


@endpoint(
    staff_api,
    "GET",
    "/rules",
    summary="The entitlement rules in force (all=1: with the deactivated ones)",
    auth=ANY_STAFF,
    query=RulesQuery,
    answer=RuleList,
    errors=STAFF_ERRORS,
)
def list_entitlement_rules(call: Call[None, RulesQuery]) -> dict[str, Any]:
    return {
        "items": services.list_rules(
            call.session, include_inactive=call.query.all == "1", user=call.user()
        )
    }


@endpoint(
    staff_api,
    "POST",
    "/rules",
    summary="Add a rule (administrators); a change is a new rule plus deactivating the old one",
    auth=ADMINISTRATORS,
    body=RuleSpec,
    answer=Rule,
    status=201,
    idempotency=OPTIONAL,
    errors={**STAFF_ERRORS, 404: "no such category", 409: "the rule contradicts itself"},
)
def create_entitlement_rule(call: Call[RuleSpec, None]) -> dict[str, Any]:
    return services.create_rule(call.session, call.ctx, call.user(), call.body.model_dump())


@endpoint(
    staff_api,
    "POST",
    "/rules/<dbid:rule_id>/deactivate",
    summary="Deactivate a rule (administrators)",
    auth=ADMINISTRATORS,
    answer=Rule,
    errors={**STAFF_ERRORS, 404: "no such rule"},
)
def deactivate_entitlement_rule(call: Call[None, None], rule_id: int) -> dict[str, Any]:
    return services.deactivate_rule(call.session, call.ctx, call.user(), rule_id)


@endpoint(
    staff_api,
    "GET",
    "/reports/monthly",
    summary="Items dispensed per town per month of a year; small counts suppressed",
    auth=READERS,
    query=ReportQuery,
    answer=MonthlyReport,
    errors=STAFF_ERRORS,
)
def monthly_report(call: Call[None, ReportQuery]) -> dict[str, Any]:
    year = call.query.year or call.ctx.today().year
    rows = services.monthly_report(call.session, year, user=call.user())
    return {"year": year, "suppressed_below": services.SMALL_COUNT, "rows": rows}


@endpoint(
    staff_api,
    "GET",
    "/reservations",
    summary="Reservations never captured or voided, oldest first, with their age",
    auth=staff(Role.ADMINISTRATOR, Role.TECHNICIAN, Role.AUDITOR),
    query=ReservationsQuery,
    answer=ReservationPage,
    errors=STAFF_ERRORS,
)
def list_open_reservations(call: Call[None, ReservationsQuery]) -> dict[str, Any]:
    query = call.query
    items = services.open_reservations(call.session, call.ctx, limit=query.limit, after=query.after)
    next_after = items[-1]["authorization_id"] if len(items) == query.limit else None
    return {"items": items, "next_after": next_after}
