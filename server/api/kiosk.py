"""The kiosks' calls (docs/interfaces.md): authorize, capture and void a dispense, sync the taps
served offline, the signed configuration and revocation list, and the heartbeat.

Every call is signed with the kiosk's device key (server.http.framework.device) and every POST
carries an Idempotency-Key.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Blueprint, current_app
from pydantic import Field, RootModel, StringConstraints

from server import services
from server.domain.rules import Reason
from server.http.contracts import (
    MAX_REVOCATION_VERSION,
    MAX_STOCK,
    MAX_SYNC_ITEMS,
    MAX_TELEMETRY_DETAIL_KEYS,
    MAX_TELEMETRY_EVENTS,
    Answer,
    BoardTxn,
    Contract,
    Count,
    Proof,
    Quantity,
    Query,
    Remaining,
    Slot,
)
from server.http.contracts import (
    Reason as ReasonText,
)
from server.http.framework import PUBLIC, REQUIRED, Call, device, endpoint
from server.http.metrics import registry_of
from server.services import choices, provisioning, stock

kiosk_api = Blueprint("kiosk_api", __name__, url_prefix="/api/v1")

KIOSK = device("kiosk")
ANY_DEVICE = device()
KIOSK_ERRORS = {
    400: "invalid JSON, fields or headers",
    401: "the request is not signed by a known, enabled kiosk, or its nonce was used",
    403: "the call is for another kind of device, or the proof was made at another device",
    422: "the Idempotency-Key was used for a different request",
}
PROOF_CODES = {"proof": "proof_malformed"}

Outcome = Literal["ok", "empty", "jammed", "motor_fault", "no_drop"]
TelemetryKind = Literal["heartbeat", "fault", "door", "temperature", "power_up", "stock", "board"]
SlotKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}$")]


class Product(Answer):
    sku: str
    name: str
    category: str


class AuthorizeRequest(Contract):
    proof: Proof
    slot: Slot
    quantity: Quantity = 1


class Approved(Answer):
    approved: Literal[True]
    authorization_id: str
    product: Product
    remaining: Remaining


class Refused(Answer):
    approved: Literal[False]
    reason: Reason
    message: str
    remaining: Remaining
    next_allowed_on: str | None = Field(json_schema_extra={"format": "date"})


class AuthorizeAnswer(RootModel[Approved | Refused]):
    """Approved (with the reservation) or refused (with the reason and the next date)."""


class CaptureRequest(Contract):
    board_txn: BoardTxn | None = None


class Settled(Answer):
    status: Literal["captured", "voided"]
    remaining: Remaining


class VoidRequest(Contract):
    reason: ReasonText


class OfflineTransaction(Contract):
    txn_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    proof: Proof
    slot: Slot
    quantity: Quantity = 1
    outcome: Outcome
    board_txn: BoardTxn | None = None


class SyncRequest(Contract):
    transactions: Annotated[list[OfflineTransaction], Field(min_length=1, max_length=MAX_SYNC_ITEMS)]


class SyncResult(Answer):
    txn_id: str | None
    counter: int
    status: Literal["applied", "duplicate", "unattributed"]
    authorization_id: str | None = None
    charged: int | None = None
    flags: list[Literal["overdraft", "stale", "card_revoked"]] | None = None
    reason: str | None = None


class SyncAnswer(Answer):
    results: list[SyncResult]


class TelemetryEvent(Contract):
    kind: TelemetryKind
    detail: Annotated[dict[str, Any], Field(max_length=MAX_TELEMETRY_DETAIL_KEYS)] = {}


class TelemetryRequest(Contract):
    stock: dict[SlotKey, Annotated[int, Field(ge=0, le=MAX_STOCK)]] = {}
    events: Annotated[list[TelemetryEvent], Field(max_length=MAX_TELEMETRY_EVENTS)] = []


class TelemetryAnswer(Answer):
    status: Literal["ok"]
    revocation_version: Annotated[str, StringConstraints(pattern=r"^[0-9]+$")] = Field(
        description="the revocation list's current version in decimal"
    )


class ConfigSlot(Answer):
    slot: int
    sku: str
    name: str
    category: str
    units: int
    stock: int | None


class OfflinePolicy(Answer):
    units_per_card_per_day: int
    max_offline_hours: int


class RevocationVersion(Answer):
    version: Count


class KioskConfig(Answer):
    kiosk_id: str
    issued_at: str = Field(json_schema_extra={"format": "date-time"})
    slots: list[ConfigSlot]
    offline: OfflinePolicy
    revocation: RevocationVersion
    signature: str = Field(
        description="base64 Ed25519 over the canonical JSON of the other fields, by the key at "
        "/api/v1/server-key"
    )


class RevocationsQuery(Query):
    since: Annotated[int, Field(ge=0, le=MAX_REVOCATION_VERSION)] = 0


class RevokedCard(Answer):
    seq: int
    card_guid: str
    reason: str


class RevocationDelta(Answer):
    since: int
    version: int
    full: bool
    issued_at: str = Field(json_schema_extra={"format": "date-time"})
    added: list[RevokedCard]
    signature: str


class ServerKey(Answer):
    algorithm: Literal["Ed25519"]
    public_key: str


def _count_authorization(answer: dict[str, Any]) -> None:
    registry_of(current_app).authorization("approved" if answer["approved"] else answer["reason"])


@endpoint(
    kiosk_api,
    "POST",
    "/authorizations",
    summary="Decide a tap for a slot: verify the card's proof, apply the rules, reserve the units",
    auth=KIOSK,
    body=AuthorizeRequest,
    answer=AuthorizeAnswer,
    idempotency=REQUIRED,
    look_first=False,
    errors={**KIOSK_ERRORS, 503: "the card CA is not configured"},
    field_codes=PROOF_CODES,
    on_answer=_count_authorization,
)
def create_authorization(call: Call[AuthorizeRequest, None]) -> dict[str, Any]:
    body = call.body
    return services.authorize(
        call.session, call.ctx, call.device_id, body.proof.as_dict(), body.slot, body.quantity
    )


@endpoint(
    kiosk_api,
    "POST",
    "/authorizations/<authorization_id>/capture",
    summary="The board saw the item drop: charge the reserved units",
    auth=KIOSK,
    body=CaptureRequest,
    answer=Settled,
    idempotency=REQUIRED,
    look_first=False,
    errors={**KIOSK_ERRORS, 404: "no such authorization of this kiosk", 409: "already voided"},
)
def capture_authorization(call: Call[CaptureRequest, None], authorization_id: str) -> dict[str, Any]:
    return services.capture(
        call.session, call.ctx, call.device_id, authorization_id, call.body.board_txn
    )


@endpoint(
    kiosk_api,
    "POST",
    "/authorizations/<authorization_id>/void",
    summary="Nothing was dispensed: release the reserved units",
    auth=KIOSK,
    body=VoidRequest,
    answer=Settled,
    idempotency=REQUIRED,
    look_first=False,
    errors={**KIOSK_ERRORS, 404: "no such authorization of this kiosk", 409: "already captured"},
)
def void_authorization(call: Call[VoidRequest, None], authorization_id: str) -> dict[str, Any]:
    return services.void(call.session, call.ctx, call.device_id, authorization_id, call.body.reason)


@endpoint(
    kiosk_api,
    "POST",
    "/sync",
    summary="The taps a kiosk served offline, each applied exactly once",
    auth=KIOSK,
    body=SyncRequest,
    answer=SyncAnswer,
    idempotency=REQUIRED,
    errors={**KIOSK_ERRORS, 503: "the card CA is not configured"},
    field_codes=PROOF_CODES,
)
def sync_offline_transactions(call: Call[SyncRequest, None]) -> dict[str, Any]:
    items = [
        services.OfflineDispense(
            proof=item.proof.as_dict(),
            slot=item.slot,
            quantity=item.quantity,
            outcome=item.outcome,
            board_txn=item.board_txn,
            txn_id=item.txn_id,
        )
        for item in call.body.transactions
    ]
    return services.sync_offline(call.session, call.ctx, call.device_id, items)


@endpoint(
    kiosk_api,
    "GET",
    "/kiosks/me/config",
    summary="The calling kiosk's slots, offline rules and revocation list version, signed",
    auth=KIOSK,
    answer=KioskConfig,
    errors=KIOSK_ERRORS,
)
def kiosk_configuration(call: Call[None, None]) -> dict[str, Any]:
    return services.kiosk_config(call.session, call.ctx, call.device_id)


@endpoint(
    kiosk_api,
    "POST",
    "/telemetry",
    summary="Heartbeat: stock per slot, faults, door, temperature, board counters",
    auth=KIOSK,
    body=TelemetryRequest,
    answer=TelemetryAnswer,
    idempotency=REQUIRED,
    errors=KIOSK_ERRORS,
)
def kiosk_telemetry(call: Call[TelemetryRequest, None]) -> dict[str, Any]:
    body = call.body
    return services.record_telemetry(
        call.session,
        call.ctx,
        call.device_id,
        stock={int(slot): count for slot, count in body.stock.items()},
        events=[(event.kind, event.detail) for event in body.events],
    )


@endpoint(
    kiosk_api,
    "GET",
    "/revocations",
    summary="The revocation list after version `since`, signed by the server key",
    auth=ANY_DEVICE,
    query=RevocationsQuery,
    answer=RevocationDelta,
    errors={**KIOSK_ERRORS, 503: "the list changed under the request; ask again"},
)
def revocations(call: Call[None, RevocationsQuery]) -> dict[str, Any]:
    return provisioning.revocations_since(call.session, call.ctx, call.query.since)


@endpoint(
    kiosk_api,
    "GET",
    "/server-key",
    summary="The Ed25519 key kiosk configurations are signed with (pin it when installing)",
    auth=PUBLIC,
    answer=ServerKey,
)
def server_public_key(call: Call[None, None]) -> dict[str, Any]:
    raw = call.ctx.server_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"algorithm": "Ed25519", "public_key": base64.b64encode(raw).decode()}


# --- the kiosk's screen: what a card may take now; maintenance stock events (issue 10) ---------


class EntitlementsRequest(Contract):
    proof: Proof


class CategoryAllowance(Answer):
    category: str
    left: Count
    allowed: bool
    reason: str | None = None
    next_allowed_on: str | None = Field(default=None, json_schema_extra={"format": "date"})


class EntitlementsAnswer(Answer):
    accepted: bool
    categories: list[CategoryAllowance] = []
    reason: str | None = None
    message: str | None = None


@endpoint(
    kiosk_api,
    "POST",
    "/entitlements",
    summary="What the tapped card may take at this kiosk now: per category what is left, "
    "whether one may be taken, why not, and the next date (nothing is reserved)",
    auth=KIOSK,
    body=EntitlementsRequest,
    answer=EntitlementsAnswer,
    idempotency=REQUIRED,
    errors={**KIOSK_ERRORS, 503: "the card CA is not configured"},
    field_codes=PROOF_CODES,
)
def card_entitlements(call: Call[EntitlementsRequest, None]) -> dict[str, Any]:
    return choices.entitlements(call.session, call.ctx, call.device_id, call.body.proof.as_dict())


class StockEventRequest(Contract):
    kind: Literal["refill", "test_dispense"]
    slot: Slot
    sku: Annotated[str, StringConstraints(max_length=64)] | None = None
    count_before: Annotated[int, Field(ge=0, le=MAX_STOCK)] | None = None
    count_after: Annotated[int, Field(ge=0, le=MAX_STOCK)] | None = None
    at_ms: Annotated[int, Field(ge=0)] | None = None
    staff_proof: Proof
    staff_certificate: Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class StockEventAnswer(Answer):
    status: Literal["recorded"]
    event_id: int
    stock: int | None


@endpoint(
    kiosk_api,
    "POST",
    "/stock-events",
    summary="A technician's refill or test dispense, proved by the staff card tapped at this kiosk",
    auth=KIOSK,
    body=StockEventRequest,
    answer=StockEventAnswer,
    idempotency=REQUIRED,
    errors={
        **KIOSK_ERRORS,
        403: "not a staff card",
        422: "the staff card's proof is invalid or too old for the event's time (at_ms), the "
        "event is in the future, or no such slot",
    },
    field_codes={"staff_proof": "proof_malformed"},
)
def record_stock_event(call: Call[StockEventRequest, None]) -> dict[str, Any]:
    body = call.body
    event = body.model_dump()
    event["staff_proof"] = body.staff_proof.as_dict()
    return stock.record_stock_event(call.session, call.ctx, call.device_id, event)
