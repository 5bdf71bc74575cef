"""The JSON API `/api/v1` (docs/interfaces.md): kiosks' authorize/capture/void, technicians'
card registration, health, the open-reservation list and the OpenAPI document.

Boundary rules: bodies are parsed here (invalid JSON is a 400 problem, never a 500), every field
is checked for type and range before a service sees it, kiosk requests are authenticated before
their body is parsed, and every kiosk POST needs an Idempotency-Key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cardsvc import requestsig
from server import services
from server.db import db
from server.errors import Forbidden, InvalidJson, InvalidRequest, NotFound
from server.fieldcrypto import mask_id_number
from server.metrics import registry_of
from server.models import PeriodKindColumn, Region, Role, StaffUser

log = logging.getLogger(__name__)

api = Blueprint("api_v1", __name__, url_prefix="/api/v1")


@api.before_request
def _refuse_nul_in_query() -> None:
    if any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        raise InvalidRequest(
            "the query must not contain the NUL character (U+0000)", code="text_invalid"
        )


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
U32 = (1 << 32) - 1
MAX_QUANTITY = 100
MAX_SLOT = 10_000
NONCE_PRUNE_EVERY = 1000


def _ctx() -> services.Context:
    from server.app import context_of

    return context_of(current_app)


# --- request parsing ---------------------------------------------------------------------------


def json_body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    if _holds_nul(body):
        # PostgreSQL text cannot hold U+0000; refuse it here for every field, on every database.
        raise InvalidRequest(
            "text must not contain the NUL character (U+0000)", code="text_invalid"
        )
    return body


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def field_int(
    body: dict[str, Any],
    name: str,
    low: int,
    high: int,
    *,
    default: int | None = None,
    optional: bool = False,
) -> Any:
    value = body.get(name, default)
    if value is None:
        if optional:
            return None
        raise InvalidRequest(f"{name} is required", code="field_missing", field=name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an integer", code="field_invalid", field=name)
    if not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be between {low} and {high}", code="field_invalid", field=name
        )
    return value


def field_str(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"{name} is required", code="field_missing", field=name)
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise InvalidRequest(
            f"{name} must be a string of 1 to {max_length} characters",
            code="field_invalid",
            field=name,
        )
    return value


def signed_path() -> str:
    path = request.script_root + request.path
    if request.query_string:
        path += "?" + request.query_string.decode("latin-1")
    return path


def authenticated_kiosk() -> services.AuthenticatedDevice:
    ctx = _ctx()
    kiosk = services.authenticate_kiosk(
        db.session,
        ctx,
        services.SignedRequest(
            kiosk_id=request.headers.get(requestsig.HEADER_KIOSK),
            timestamp=request.headers.get(requestsig.HEADER_TIMESTAMP),
            nonce=request.headers.get(requestsig.HEADER_NONCE),
            signature=request.headers.get(requestsig.HEADER_SIGNATURE),
            method=request.method,
            path=signed_path(),
            body=request.get_data(cache=True),
        ),
    )
    # Committed with the request's own transaction; if that never commits, _spend_nonce_anyway.
    g.unspent_nonce = (kiosk.id, request.headers[requestsig.HEADER_NONCE])
    return kiosk


@api.after_request
def _spend_nonce_anyway(response: Response) -> Response:
    """A signed request that failed after authentication still uses up its nonce."""
    unspent = g.pop("unspent_nonce", None)
    if unspent is not None:
        session = db.session
        session.rollback()
        services.spend_nonce(session, _ctx(), *unspent)
    counter = current_app.extensions.setdefault("onecard_nonce_counter", [0])
    counter[0] += 1
    if counter[0] % NONCE_PRUNE_EVERY == 0:
        session = db.session
        session.rollback()
        try:
            services.prune_nonces(session, _ctx())
            session.commit()
        except SQLAlchemyError:  # housekeeping must never fail the answer; the next try will do
            session.rollback()
            log.warning("pruning spent nonces failed", exc_info=True)
    return response


def authenticated_device(kind: str) -> services.AuthenticatedDevice:
    """An authenticated kiosk or station, refused (403) when it is the other kind of device."""
    device = authenticated_kiosk()
    if device.kind != kind:
        raise Forbidden(
            f"this call is for a {kind}, and {device.id} is a {device.kind}", code="wrong_device"
        )
    return device


def idempotency_key(required: bool = True) -> str | None:
    key = request.headers.get(requestsig.HEADER_IDEMPOTENCY)
    if key is None:
        if required:
            raise InvalidRequest(
                "every kiosk POST needs an Idempotency-Key header", code="idempotency_key_missing"
            )
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            code="idempotency_key_invalid",
        )
    return key


def answer_once(
    scope: str,
    key: str | None,
    operation: Callable[[], tuple[int, dict[str, Any]]],
    *,
    look_first: bool = True,
    answered: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Response, int]:
    """Run `operation` in the request's transaction, once per Idempotency-Key
    (services.run_idempotent, which says when `look_first=False` may be used); `answered` is
    called with the answer when it is this request's own, committed, not a replayed one."""
    session = db.session
    if key is None:
        try:
            status, body = operation()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        g.pop("unspent_nonce", None)
        if answered is not None:
            answered(body)
        return jsonify(body), status
    fingerprint = services.request_hash(request.method, signed_path(), request.get_data(cache=True))
    stored = services.run_idempotent(
        session, _ctx(), scope, key, fingerprint, operation, look_first=look_first
    )
    if stored.committed:
        g.pop("unspent_nonce", None)
    if answered is not None and not stored.replayed:
        answered(stored.body)
    return jsonify(stored.body), stored.status


# --- endpoints ---------------------------------------------------------------------------------


@api.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@api.post("/authorizations")
def create_authorization() -> tuple[Response, int]:
    kiosk = authenticated_device("kiosk")
    key = idempotency_key()
    body = json_body()
    proof = body.get("proof")
    if not isinstance(proof, dict):
        raise InvalidRequest(
            "proof must be an object",
            code="field_missing" if proof is None else "field_invalid",
            field="proof",
        )
    slot = field_int(body, "slot", 0, MAX_SLOT)
    quantity = field_int(body, "quantity", 1, MAX_QUANTITY, default=1)
    kiosk_id = kiosk.id
    metrics = registry_of(current_app)

    def counted(answer: dict[str, Any]) -> None:
        metrics.authorization("approved" if answer["approved"] else answer["reason"])

    return answer_once(
        f"kiosk:{kiosk_id}",
        key,
        lambda: (200, services.authorize(db.session, _ctx(), kiosk_id, proof, slot, quantity)),
        look_first=False,
        answered=counted,
    )


@api.post("/authorizations/<authorization_id>/capture")
def capture_authorization(authorization_id: str) -> tuple[Response, int]:
    kiosk = authenticated_device("kiosk")
    key = idempotency_key()
    body = json_body()
    board_txn = field_int(body, "board_txn", 0, U32, optional=True)
    kiosk_id = kiosk.id
    return answer_once(
        f"kiosk:{kiosk_id}",
        key,
        lambda: (200, services.capture(db.session, _ctx(), kiosk_id, authorization_id, board_txn)),
        look_first=False,
    )


@api.post("/authorizations/<authorization_id>/void")
def void_authorization(authorization_id: str) -> tuple[Response, int]:
    kiosk = authenticated_device("kiosk")
    key = idempotency_key()
    body = json_body()
    reason = field_str(body, "reason", 64)
    kiosk_id = kiosk.id
    return answer_once(
        f"kiosk:{kiosk_id}",
        key,
        lambda: (200, services.void(db.session, _ctx(), kiosk_id, authorization_id, reason)),
        look_first=False,
    )


@api.post("/cards")
def register_card() -> tuple[Response, int]:
    session = db.session
    user = services.authenticate_staff(
        session, request.headers.get("Authorization"), Role.TECHNICIAN, Role.ADMINISTRATOR
    )
    session.rollback()
    key = idempotency_key(required=False)
    body = json_body()
    resident_id = field_int(body, "resident_id", 1, 2**63 - 1)
    certificate_b64 = field_str(body, "certificate", 16_384)
    try:
        certificate = base64.b64decode(certificate_b64, validate=True)
    except ValueError:
        raise InvalidRequest(
            "certificate must be base64 of DER", code="field_invalid", field="certificate"
        ) from None
    user_id = user.id

    def operation() -> tuple[int, dict[str, Any]]:
        from server.models import StaffUser

        issuer = session.get(StaffUser, user_id)
        card = services.issue_card(session, _ctx(), resident_id, certificate, issuer)
        return 201, {"card_guid": card.guid, "status": card.status.value}

    return answer_once(f"user:{user_id}", key, operation)


def _commit_with_nonce() -> None:
    db.session.commit()
    g.pop("unspent_nonce", None)


MAX_SYNC_ITEMS = 500


@api.post("/sync")
def sync_offline_transactions() -> tuple[Response, int]:
    """A batch of taps the kiosk served offline; each applied exactly once."""
    kiosk = authenticated_device("kiosk")
    key = idempotency_key()
    body = json_body()
    raw_items = body.get("transactions")
    if not isinstance(raw_items, list) or not 1 <= len(raw_items) <= MAX_SYNC_ITEMS:
        raise InvalidRequest(
            f"transactions must be a list of 1 to {MAX_SYNC_ITEMS} items",
            code="field_invalid",
            field="transactions",
        )
    items = []
    for index, raw in enumerate(raw_items):
        if not isinstance(raw, dict) or not isinstance(raw.get("proof"), dict):
            raise InvalidRequest(
                f"transactions[{index}] must be an object with a proof",
                code="field_invalid",
                field="transactions",
            )
        outcome = raw.get("outcome")
        if not isinstance(outcome, str) or outcome not in services.DISPENSE_OUTCOMES:
            raise InvalidRequest(
                f"transactions[{index}].outcome must be one of {sorted(services.DISPENSE_OUTCOMES)}",
                code="field_invalid",
                field="outcome",
            )
        txn_id = raw.get("txn_id")
        if txn_id is not None and (not isinstance(txn_id, str) or len(txn_id) > 64):
            raise InvalidRequest(
                "txn_id must be a string of at most 64 characters",
                code="field_invalid",
                field="txn_id",
            )
        items.append(
            services.OfflineDispense(
                proof=raw["proof"],
                slot=field_int(raw, "slot", 0, MAX_SLOT),
                quantity=field_int(raw, "quantity", 1, MAX_QUANTITY, default=1),
                outcome=outcome,
                board_txn=field_int(raw, "board_txn", 0, U32, optional=True),
                txn_id=txn_id,
            )
        )
    kiosk_id = kiosk.id
    return answer_once(
        f"kiosk:{kiosk_id}",
        key,
        lambda: (200, services.sync_offline(db.session, _ctx(), kiosk_id, items)),
    )


@api.get("/kiosks/me/config")
def kiosk_configuration() -> Response:
    """The calling kiosk's slots, offline rules and revocation list version, signed by the server."""
    kiosk = authenticated_kiosk()
    config = services.kiosk_config(db.session, _ctx(), kiosk.id)
    _commit_with_nonce()
    return jsonify(config)


@api.post("/telemetry")
def kiosk_telemetry() -> tuple[Response, int]:
    """Heartbeat: stock per slot, faults, door, temperature, board counters."""
    kiosk = authenticated_device("kiosk")
    key = idempotency_key()
    body = json_body()
    raw_stock = body.get("stock", {})
    if not isinstance(raw_stock, dict):
        raise InvalidRequest(
            "stock must map slot numbers to counts", code="field_invalid", field="stock"
        )
    stock: dict[int, int] = {}
    for slot, count in raw_stock.items():
        if not (isinstance(slot, str) and slot.isdigit() and int(slot) <= MAX_SLOT):
            raise InvalidRequest(
                f"stock: {slot!r} is not a slot number", code="field_invalid", field="stock"
            )
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 100_000:
            raise InvalidRequest(
                f"stock[{slot}] must be a count", code="field_invalid", field="stock"
            )
        stock[int(slot)] = count
    raw_events = body.get("events", [])
    if not isinstance(raw_events, list) or len(raw_events) > 100:
        raise InvalidRequest(
            "events must be a list of at most 100", code="field_invalid", field="events"
        )
    events: list[tuple[str, dict[str, Any]]] = []
    for event in raw_events:
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("kind"), str)
            or event["kind"] not in services.TELEMETRY_KINDS
            or not isinstance(event.get("detail", {}), dict)
        ):
            raise InvalidRequest(
                f"each event needs a kind among {sorted(services.TELEMETRY_KINDS)} and an object detail",
                code="field_invalid",
                field="events",
            )
        events.append((event["kind"], event.get("detail", {})))
    kiosk_id = kiosk.id
    return answer_once(
        f"kiosk:{kiosk_id}",
        key,
        lambda: (
            200,
            services.record_telemetry(db.session, _ctx(), kiosk_id, stock=stock, events=events),
        ),
    )


@api.get("/server-key")
def server_public_key() -> Response:
    """The Ed25519 key kiosk configurations are signed with (pin it when installing a kiosk)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = _ctx().server_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return jsonify({"algorithm": "Ed25519", "public_key": base64.b64encode(raw).decode()})


STAFF_WHO_ENROL = (Role.ADMINISTRATOR, Role.STATION_STAFF, Role.TECHNICIAN)


def _staff(*roles: Role) -> StaffUser:
    user = services.authenticate_staff(db.session, request.headers.get("Authorization"), *roles)
    return user


def _query_int(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, str(default)))
    except ValueError:
        raise InvalidRequest(
            f"{name} must be an integer", code="field_invalid", field=name
        ) from None
    if not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be between {low} and {high}", code="field_invalid", field=name
        )
    return value


@api.post("/residents")
def enrol_resident() -> tuple[Response, int]:
    """Enrol a person (station staff, technicians, administrators; within their area)."""
    session = db.session
    user = _staff(*STAFF_WHO_ENROL)
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    name = field_str(body, "name", 200)
    sex = field_str(body, "sex", 1)
    if sex not in services.SEXES:
        raise InvalidRequest("sex must be F or M", code="field_invalid", field="sex")
    try:
        birth_date = dt.date.fromisoformat(field_str(body, "birth_date", 10))
    except ValueError:
        raise InvalidRequest(
            "birth_date must be YYYY-MM-DD", code="field_invalid", field="birth_date"
        ) from None
    phone = body.get("phone")
    if phone is not None and (
        not isinstance(phone, str) or not re.fullmatch(r"\+?[0-9 -]{5,20}", phone)
    ):
        raise InvalidRequest("phone must be digits", code="field_invalid", field="phone")
    id_number = field_str(body, "id_number", 32)
    if not re.fullmatch(r"[0-9A-Za-z -]{6,32}", id_number):
        raise InvalidRequest(
            "id_number must be 6 to 32 letters and digits", code="field_invalid", field="id_number"
        )
    region_code = field_str(body, "region", 40)
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        issuer = session.get(StaffUser, user_id)
        assert issuer is not None
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
        if not services.in_scope(session, issuer, region_id):
            raise Forbidden("this region is outside your area", code="out_of_scope")
        resident = services.enrol_resident(
            session,
            _ctx(),
            name=name,
            sex=sex,
            birth_date=birth_date,
            phone=phone,
            id_number=id_number,
            region_id=region_id,
            actor=f"user:{user_id}",
        )
        return 201, {
            "resident_id": resident.id,
            "id_number": mask_id_number(resident.id_number_last4),
        }

    return answer_once(f"user:{user_id}", key, operation)


@api.get("/residents")
def search_residents() -> Response:
    """Residents by exact ID number, or by region (paginated), within the user's area. Audited."""
    session = db.session
    user = _staff(Role.ADMINISTRATOR, Role.STATION_STAFF, Role.TECHNICIAN)
    id_number = request.args.get("id_number")
    region_code = request.args.get("region")
    if id_number is None and region_code is None:
        raise InvalidRequest("give id_number or region", code="field_missing", field="id_number")
    limit = _query_int("limit", 50, 1, 500)
    after = _query_int("after", 0, 0, 2**62)
    items = services.find_residents(
        session,
        _ctx(),
        user,
        id_number=id_number,
        region_code=region_code,
        limit=limit,
        after=after,
    )
    session.commit()  # the audit entries of these reads
    next_after = items[-1]["resident_id"] if len(items) == limit else None
    return jsonify({"items": items, "next_after": next_after})


@api.post("/cards/<guid>/revoke")
def revoke_card(guid: str) -> tuple[Response, int]:
    """Revoke a card (technicians, administrators). Idempotent."""
    session = db.session
    user = _staff(Role.TECHNICIAN, Role.ADMINISTRATOR)
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    reason = field_str(body, "reason", 64)
    if not re.fullmatch(r"[0-9a-fA-F]{32}", guid):
        raise NotFound(f"no card {guid}", code="card_unknown")
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        issuer = session.get(StaffUser, user_id)
        assert issuer is not None
        card = services.revoke_card(session, _ctx(), guid, reason, issuer)
        return 200, {"card_guid": card.guid, "status": card.status.value}

    return answer_once(f"user:{user_id}", key, operation)


@api.get("/rules")
def list_entitlement_rules() -> Response:
    """The entitlement rules in force (all=1: with the deactivated ones)."""
    session = db.session
    _staff(Role.ADMINISTRATOR, Role.AUDITOR, Role.TECHNICIAN, Role.STATION_STAFF)
    items = services.list_rules(session, include_inactive=request.args.get("all") == "1")
    session.rollback()
    return jsonify({"items": items})


def _optional_int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    return field_int(body, name, low, high, optional=True)  # type: ignore[no-any-return]


@api.post("/rules")
def create_entitlement_rule() -> tuple[Response, int]:
    """Add a rule (administrators). A change is a new rule plus deactivating the old one."""
    session = db.session
    user = _staff(Role.ADMINISTRATOR)
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    period_kind = field_str(body, "period_kind", 20)
    if period_kind not in {kind.value for kind in PeriodKindColumn}:
        raise InvalidRequest(
            "period_kind must be calendar_month, rolling_days or calendar_year",
            code="field_invalid",
            field="period_kind",
        )
    sexes = body.get("sexes", "")
    if not isinstance(sexes, str) or not set(sexes) <= services.SEXES:
        raise InvalidRequest(
            "sexes must be a string of F and M, or empty", code="field_invalid", field="sexes"
        )
    spec = {
        "category": field_str(body, "category", 40),
        "period_kind": period_kind,
        "period_days": _optional_int(body, "period_days", 1, 3660),
        "units": field_int(body, "units", 0, 10_000),
        "per_visit_cap": _optional_int(body, "per_visit_cap", 1, 10_000),
        "min_age": _optional_int(body, "min_age", 0, 150),
        "max_age": _optional_int(body, "max_age", 0, 150),
        "sexes": "".join(sorted(set(sexes))),
    }
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        admin = session.get(StaffUser, user_id)
        assert admin is not None
        return 201, services.create_rule(session, _ctx(), admin, spec)

    return answer_once(f"user:{user_id}", key, operation)


@api.post("/rules/<int:rule_id>/deactivate")
def deactivate_entitlement_rule(rule_id: int) -> tuple[Response, int]:
    session = db.session
    user = _staff(Role.ADMINISTRATOR)
    user_id = user.id
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        admin = session.get(StaffUser, user_id)
        assert admin is not None
        return 200, services.deactivate_rule(session, _ctx(), admin, rule_id)

    return answer_once(f"user:{user_id}", None, operation)


@api.get("/reports/monthly")
def monthly_report() -> Response:
    """Items dispensed per town per month of a year; small counts suppressed (administrators,
    auditors)."""
    session = db.session
    _staff(Role.ADMINISTRATOR, Role.AUDITOR)
    year = _query_int("year", _ctx().today().year, 2000, 2100)
    rows = services.monthly_report(session, year)
    session.rollback()
    return jsonify({"year": year, "suppressed_below": services.SMALL_COUNT, "rows": rows})


@api.post("/exams/eligibility")
def exam_eligibility() -> tuple[Response, int]:
    """A card tapped at a service station: each exam programme, eligible or not, why, from when."""
    station = authenticated_device("station")
    key = idempotency_key()
    body = json_body()
    proof = _proof_field(body)
    station_id = station.id
    return answer_once(
        f"kiosk:{station_id}",
        key,
        lambda: (200, services.exam_eligibility(db.session, _ctx(), station_id, proof)),
    )


@api.post("/exams/records")
def record_exam() -> tuple[Response, int]:
    """Record that an exam was given (programme, station, date, staff), never its results."""
    station = authenticated_device("station")
    key = idempotency_key()
    body = json_body()
    proof = _proof_field(body)
    programme = field_str(body, "programme", 40)
    staff = body.get("staff")
    if staff is not None and (not isinstance(staff, str) or not 1 <= len(staff) <= 120):
        raise InvalidRequest(
            "staff must be a string of 1 to 120 characters", code="field_invalid", field="staff"
        )
    station_id = station.id
    return answer_once(
        f"kiosk:{station_id}",
        key,
        lambda: (
            201,
            services.record_exam(db.session, _ctx(), station_id, proof, programme, staff),
        ),
    )


def _proof_field(body: dict[str, Any]) -> dict[str, Any]:
    proof = body.get("proof")
    if not isinstance(proof, dict):
        raise InvalidRequest(
            "proof must be an object",
            code="field_missing" if proof is None else "field_invalid",
            field="proof",
        )
    return proof


STAFF_WHO_BOOK = (Role.ADMINISTRATOR, Role.STATION_STAFF)


@api.get("/stations/<station_id>/slots")
def station_slots(station_id: str) -> Response:
    """A station's appointment slots on a day, with which are free (station staff)."""
    session = db.session
    user = _staff(*STAFF_WHO_BOOK)
    try:
        day = dt.date.fromisoformat(request.args.get("date", ""))
    except ValueError:
        raise InvalidRequest(
            "date must be YYYY-MM-DD", code="field_invalid", field="date"
        ) from None
    slots = services.station_slots(session, _ctx(), user, station_id, day)
    session.rollback()
    return jsonify({"station_id": station_id, "date": day.isoformat(), "slots": slots})


@api.post("/appointments")
def book_appointment() -> tuple[Response, int]:
    """Book an exam slot for a person who is eligible that day (station staff)."""
    session = db.session
    user = _staff(*STAFF_WHO_BOOK)
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    station_id = field_str(body, "station_id", 64)
    programme = field_str(body, "programme", 40)
    resident_id = field_int(body, "resident_id", 1, 2**62)
    try:
        starts_at = dt.datetime.fromisoformat(field_str(body, "starts_at", 40))
    except ValueError:
        starts_at = None
    if starts_at is None or starts_at.tzinfo is None:
        raise InvalidRequest(
            "starts_at must be an ISO 8601 time with its UTC offset",
            code="field_invalid",
            field="starts_at",
        )
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        staff = session.get(StaffUser, user_id)
        assert staff is not None
        return 201, services.book_appointment(
            session,
            _ctx(),
            staff,
            station_id=station_id,
            programme_code=programme,
            resident_id=resident_id,
            starts_at=starts_at,
        )

    return answer_once(f"user:{user_id}", key, operation)


@api.post("/appointments/<int:appointment_id>/cancel")
def cancel_appointment(appointment_id: int) -> tuple[Response, int]:
    session = db.session
    user = _staff(*STAFF_WHO_BOOK)
    user_id = user.id
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        staff = session.get(StaffUser, user_id)
        assert staff is not None
        return 200, services.cancel_appointment(session, _ctx(), staff, appointment_id)

    return answer_once(f"user:{user_id}", None, operation)


@api.post("/couples")
def register_couple() -> tuple[Response, int]:
    """Record a couple, optionally planning a pregnancy since a date (station staff)."""
    session = db.session
    user = _staff(Role.ADMINISTRATOR, Role.STATION_STAFF)
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    partners = body.get("partners")
    if (
        not isinstance(partners, list)
        or len(partners) != 2
        or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p < 2**62 for p in partners
        )
    ):
        raise InvalidRequest(
            "partners must be two resident ids", code="field_invalid", field="partners"
        )
    planning_since = None
    if body.get("planning_since") is not None:
        try:
            planning_since = dt.date.fromisoformat(field_str(body, "planning_since", 10))
        except ValueError:
            raise InvalidRequest(
                "planning_since must be YYYY-MM-DD", code="field_invalid", field="planning_since"
            ) from None
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        staff = session.get(StaffUser, user_id)
        assert staff is not None
        return 201, services.register_couple(
            session, _ctx(), staff, partners[0], partners[1], planning_since
        )

    return answer_once(f"user:{user_id}", key, operation)


@api.get("/reservations")
def list_open_reservations() -> Response:
    """Reservations never captured or voided, oldest first, with their age (staff only)."""
    session = db.session
    services.authenticate_staff(
        session,
        request.headers.get("Authorization"),
        Role.ADMINISTRATOR,
        Role.TECHNICIAN,
        Role.AUDITOR,
    )
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise InvalidRequest(
            "limit must be an integer", code="field_invalid", field="limit"
        ) from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest(
            "limit must be between 1 and 1000", code="field_invalid", field="limit"
        )
    after = request.args.get("after")
    items = services.open_reservations(session, _ctx(), limit=limit, after=after)
    session.rollback()
    next_after = items[-1]["authorization_id"] if len(items) == limit else None
    return jsonify({"items": items, "next_after": next_after})


@api.get("/openapi.json")
def openapi_document() -> Response:
    from server.openapi import document

    return jsonify(document())
