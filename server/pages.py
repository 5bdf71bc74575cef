"""The staff pages: the station desk page (`/station`) and the staff-authenticated JSON calls it
makes (`/staff/v1/...`).

A nurse at a service station opens `/station`, signs in with a station-staff bearer token and
picks the station. The page asks the local card service on the desk (`onecard cardsvc serve`,
http://127.0.0.1, cardsvc/service.py) for a tap proof made for that station (kiosk_id = the
station's id, counter = a number that only grows: the desk's time in ms), and posts the proof
here. The card service never talks to the server; the server never talks to the card service.

    GET  /station                        the page (server/templates/station.html, static/station.*)
    GET  /staff/v1/me                    the signed-in user's role and the stations in their area
    POST /staff/v1/exams/eligibility     {station_id, proof} → each programme, eligible or not
    POST /staff/v1/exams/records         {station_id, programme, proof} → an exam was given

Authentication: `Authorization: Bearer <token>` of a station_staff user, and the station must
lie in the user's region scope. The tap itself is checked exactly as for a station device
(services.exam_eligibility / record_exam: registered active card, fresh, signature, the
station's counter only grows), so a proof is used once. The answers carry programmes only —
nothing about the person; each read of a person's eligibility and each record is audited with
the staff user as actor. Errors are `application/problem+json` (server.problems).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from sqlalchemy import select

from server import audit, services
from server.api import answer_once, field_str, idempotency_key, json_body
from server.db import db
from server.errors import Forbidden, InvalidRequest, NotFound
from server.models import Card, Kiosk, Role, StaffUser

pages = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)

STATION_ROLES = (Role.STATION_STAFF,)
STATION_KIND = "station"
CARD_GUID = re.compile(r"^[0-9a-f]{32}$")

# The page talks to its own server and to the card service on the desk's loopback address.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' http://127.0.0.1:* http://localhost:*; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _ctx() -> services.Context:
    from server.app import context_of

    return context_of(current_app)


@pages.after_request
def _private(response: Response) -> Response:
    """Eligibility is health information: nothing here is cached or framed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


# --- the page ------------------------------------------------------------------------------------


@pages.get("/station")
def station_page() -> str:
    return render_template("station.html")


# --- staff calls ---------------------------------------------------------------------------------


def _station_staff() -> StaffUser:
    return services.authenticate_staff(
        db.session, request.headers.get("Authorization"), *STATION_ROLES
    )


def _station_in_scope(user: StaffUser, station_id: str) -> Kiosk:
    """The station, when it exists, is enabled and lies in the user's area (403/404 otherwise)."""
    session = db.session
    station = session.get(Kiosk, station_id)
    if station is None or station.kind != STATION_KIND:
        raise NotFound(f"no station {station_id}", code="station_unknown")
    if not services.in_scope(session, user, station.region_id):
        raise Forbidden("this station is outside your area", code="out_of_scope")
    if not station.enabled:
        raise Forbidden(f"station {station_id} is disabled", code="station_disabled")
    return station


def _proof(body: dict[str, Any]) -> dict[str, Any]:
    proof = body.get("proof")
    if not isinstance(proof, dict):
        raise InvalidRequest(
            "proof must be an object",
            code="field_missing" if proof is None else "field_invalid",
            field="proof",
        )
    return proof


def _audit_person(user_id: int, action: str, proof: dict[str, Any], detail: dict[str, Any]) -> None:
    """Audit a read or record of the person behind a proof that services already verified."""
    session = db.session
    guid = proof.get("card_guid")
    resident_id = (
        session.scalar(select(Card.resident_id).where(Card.guid == guid.lower()))
        if isinstance(guid, str) and CARD_GUID.match(guid.lower())
        else None
    )
    audit.append(
        session,
        at=_ctx().now(),
        actor=f"user:{user_id}",
        action=action,
        subject=f"resident:{resident_id}" if resident_id is not None else f"card:{guid}",
        detail=detail,
    )


@pages.get("/staff/v1/me")
def whoami() -> Response:
    """The signed-in user and the stations they may work at (ids only)."""
    session = db.session
    user = _station_staff()
    query = select(Kiosk.id).where(Kiosk.kind == STATION_KIND, Kiosk.enabled.is_(True))
    if user.region_id is not None:
        query = query.where(Kiosk.region_id.in_(services.subtree_ids(session, user.region_id)))
    stations = list(session.scalars(query.order_by(Kiosk.id)))
    answer = {"name": user.name, "role": user.role.value, "stations": stations}
    session.rollback()
    return jsonify(answer)


@pages.post("/staff/v1/exams/eligibility")
def exam_eligibility() -> tuple[Response, int]:
    """The card on the desk reader: each exam programme, eligible or not, why, from when."""
    session = db.session
    user = _station_staff()
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    station_id = field_str(body, "station_id", 64)
    proof = _proof(body)
    _station_in_scope(user, station_id)
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        answer = services.exam_eligibility(session, _ctx(), station_id, proof)
        _audit_person(user_id, "exam.eligibility.read", proof, {"station": station_id})
        return 200, answer

    return answer_once(f"user:{user_id}", key, operation)


@pages.post("/staff/v1/exams/records")
def record_exam() -> tuple[Response, int]:
    """Record that an exam was given here today (the card is tapped again); never results."""
    session = db.session
    user = _station_staff()
    user_id = user.id
    key = idempotency_key(required=False)
    body = json_body()
    station_id = field_str(body, "station_id", 64)
    programme = field_str(body, "programme", 40)
    proof = _proof(body)
    _station_in_scope(user, station_id)
    session.rollback()

    def operation() -> tuple[int, dict[str, Any]]:
        answer = services.record_exam(
            session, _ctx(), station_id, proof, programme, f"user:{user_id}"
        )
        _audit_person(
            user_id,
            "exam.record",
            proof,
            {"station": station_id, "programme": programme, "record_id": answer["record_id"]},
        )
        return 201, answer

    return answer_once(f"user:{user_id}", key, operation)
