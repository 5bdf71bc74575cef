"""The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`.

Written by hand, next to the code it describes; tests/test_server_openapi.py checks that every
route is documented (and nothing else), and that real answers match the documented schemas.
"""

from __future__ import annotations

from typing import Any

PROBLEM = {"$ref": "#/components/schemas/Problem"}
KIOSK_SECURITY: list[dict[str, list[str]]] = [{"kioskSignature": []}]
STAFF_SECURITY: list[dict[str, list[str]]] = [{"staffToken": []}]

REFUSAL_REASONS = [
    "limit_reached",
    "card_unknown",
    "card_revoked",
    "proof_invalid",
    "proof_stale",
    "counter_replayed",
    "slot_unknown",
    "not_eligible",
]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM}},
    }


def _kiosk_post(
    summary: str,
    body: str,
    ok: dict[str, Any],
    *,
    path_id: bool = False,
    unprocessable: str = "the Idempotency-Key was used for a different request",
    status: str = "200",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": KIOSK_SECURITY,
        "parameters": [
            {"$ref": "#/components/parameters/XKioskId"},
            {"$ref": "#/components/parameters/XTimestamp"},
            {"$ref": "#/components/parameters/XNonce"},
            {"$ref": "#/components/parameters/XSignature"},
            {"$ref": "#/components/parameters/IdempotencyKey"},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        },
        "responses": {
            status: ok,
            **(extra or {}),
            "400": _problem("invalid JSON, a field of the wrong type or range, no Idempotency-Key"),
            "401": _problem(
                "kiosk signature missing or wrong, stale timestamp, replayed nonce, "
                "unknown or disabled kiosk"
            ),
            "403": _problem(
                "a device of the other kind (kiosk / station), or a proof made elsewhere"
            ),
            "413": _problem("body larger than 64 KiB"),
            "422": _problem(unprocessable),
        },
    }
    if path_id:
        operation["parameters"].insert(
            0,
            {
                "name": "authorization_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            },
        )
        operation["responses"]["404"] = _problem("no such authorization for this kiosk")
        operation["responses"]["409"] = _problem("already settled the other way")
    else:
        operation["responses"]["503"] = _problem("the card CA is not configured")
    return operation


def document() -> dict[str, Any]:
    doc = _core_document()
    doc["paths"].update(_provisioning_paths())
    doc["components"]["schemas"].update(_provisioning_schemas())
    return doc


def _core_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OneCard central server",
            "version": "1",
            "description": "Kiosk authorization (authorize, capture, void) and card registration. "
            "Every error is application/problem+json with a stable `code`.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/health": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "up")},
                }
            },
            "/api/v1/authorizations": {
                "post": _kiosk_post(
                    "Verify a tap and reserve units (or refuse, with the reason)",
                    "AuthorizeRequest",
                    _json({"$ref": "#/components/schemas/AuthorizeAnswer"}, "approved or refused"),
                )
            },
            "/api/v1/authorizations/{authorization_id}/capture": {
                "post": _kiosk_post(
                    "The item dropped: charge the reserved units (idempotent)",
                    "CaptureRequest",
                    _json({"$ref": "#/components/schemas/CaptureAnswer"}, "captured"),
                    path_id=True,
                )
            },
            "/api/v1/authorizations/{authorization_id}/void": {
                "post": _kiosk_post(
                    "Nothing was dispensed: release the reserved units (idempotent)",
                    "VoidRequest",
                    _json({"$ref": "#/components/schemas/VoidAnswer"}, "voided"),
                    path_id=True,
                )
            },
            "/api/v1/cards": {
                "post": {
                    "summary": "Record a card issued to a resident (technician or administrator)",
                    "security": STAFF_SECURITY,
                    "parameters": [{"$ref": "#/components/parameters/IdempotencyKeyOptional"}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CardRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/CardAnswer"}, "recorded"),
                        "400": _problem("invalid JSON or fields"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem(
                            "the role may not, or the resident is outside the user's area"
                        ),
                        "404": _problem("no such resident"),
                        "409": _problem("the card is already registered"),
                        "422": _problem(
                            "the certificate is not from the city card CA, or not valid now"
                        ),
                    },
                }
            },
            "/api/v1/cards/{guid}/revoke": {
                "post": {
                    "summary": "Revoke a card (technician or administrator); idempotent",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {
                            "name": "guid",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"$ref": "#/components/parameters/IdempotencyKeyOptional"},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/VoidRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/CardStatusAnswer"}, "revoked"),
                        "400": _problem("invalid JSON or reason"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem(
                            "the role may not, or the holder is outside the user's area"
                        ),
                        "404": _problem("no such card"),
                        "422": _problem("the Idempotency-Key was used for a different request"),
                    },
                }
            },
            "/api/v1/residents": {
                "post": {
                    "summary": "Enrol a resident (station staff, technician, administrator; own area)",
                    "security": STAFF_SECURITY,
                    "parameters": [{"$ref": "#/components/parameters/IdempotencyKeyOptional"}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/EnrolRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/EnrolAnswer"}, "enrolled"),
                        "400": _problem("invalid JSON or fields"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem(
                            "the role may not, or the region is outside the user's area"
                        ),
                        "404": _problem("no such region"),
                        "409": _problem("this ID number is already enrolled"),
                        "422": _problem("the Idempotency-Key was used for a different request"),
                    },
                },
                "get": {
                    "summary": "Find residents by exact ID number or by region, within the user's area "
                    "(every person shown is an audited read)",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {"name": "id_number", "in": "query", "schema": {"type": "string"}},
                        {"name": "region", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ResidentPage"}, "a page"),
                        "400": _problem("neither id_number nor region, or a bad limit"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem(
                            "the role may not, or the region is outside the user's area"
                        ),
                        "404": _problem("no such region"),
                    },
                },
            },
            "/api/v1/rules": {
                "get": {
                    "summary": "The entitlement rules in force (all=1: also the deactivated ones)",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {
                            "name": "all",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["0", "1"]},
                        }
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/RuleList"}, "the rules"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not"),
                    },
                },
                "post": {
                    "summary": "Add a rule (administrator); a change is a new rule plus deactivating the old",
                    "security": STAFF_SECURITY,
                    "parameters": [{"$ref": "#/components/parameters/IdempotencyKeyOptional"}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RuleSpec"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/Rule"}, "created"),
                        "400": _problem("invalid JSON or an impossible rule"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not"),
                        "404": _problem("no such category"),
                        "422": _problem("the Idempotency-Key was used for a different request"),
                    },
                },
            },
            "/api/v1/rules/{rule_id}/deactivate": {
                "post": {
                    "summary": "Stop applying a rule (administrator); it stays on record",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {
                            "name": "rule_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Rule"}, "deactivated"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not"),
                        "404": _problem("no such rule"),
                    },
                }
            },
            "/api/v1/reports/monthly": {
                "get": {
                    "summary": "Items dispensed per town per month (administrator, auditor); cells "
                    "under 5 dispenses are suppressed (null)",
                    "security": STAFF_SECURITY,
                    "parameters": [{"name": "year", "in": "query", "schema": {"type": "integer"}}],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/MonthlyReport"}, "the report"),
                        "400": _problem("bad year"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not"),
                    },
                }
            },
            "/api/v1/stations/{station_id}/slots": {
                "get": {
                    "summary": "A station's appointment slots on a day, and which are free (station staff)",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {
                            "name": "station_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "date",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "format": "date"},
                        },
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/SlotList"}, "the day's slots"),
                        "400": _problem("bad date"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem(
                            "the role may not, or the station is outside the user's area"
                        ),
                        "404": _problem("no such station"),
                    },
                }
            },
            "/api/v1/appointments": {
                "post": {
                    "summary": "Book an exam slot for a person eligible that day (station staff)",
                    "security": STAFF_SECURITY,
                    "parameters": [{"$ref": "#/components/parameters/IdempotencyKeyOptional"}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/AppointmentRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/Appointment"}, "booked"),
                        "400": _problem("invalid fields, or not a slot"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not, or outside the user's area"),
                        "404": _problem("no such station, programme or resident"),
                        "409": _problem("the slot is taken, or the person is not eligible then"),
                        "422": _problem("the Idempotency-Key was used for a different request"),
                    },
                }
            },
            "/api/v1/appointments/{appointment_id}/cancel": {
                "post": {
                    "summary": "Cancel an appointment (station staff); idempotent",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {
                            "name": "appointment_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Appointment"}, "cancelled"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not, or outside the user's area"),
                        "404": _problem("no such appointment"),
                    },
                }
            },
            "/api/v1/couples": {
                "post": {
                    "summary": "Record a couple, optionally planning a pregnancy since a date (station staff)",
                    "security": STAFF_SECURITY,
                    "parameters": [{"$ref": "#/components/parameters/IdempotencyKeyOptional"}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CoupleRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/Couple"}, "recorded"),
                        "400": _problem("invalid fields"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem(
                            "the role may not, or a partner lives outside the user's area"
                        ),
                        "404": _problem("no such resident"),
                        "422": _problem("the Idempotency-Key was used for a different request"),
                    },
                }
            },
            "/api/v1/reservations": {
                "get": {
                    "summary": "Open reservations (never captured or voided), oldest first, with their age",
                    "security": STAFF_SECURITY,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "the next_after of the previous page",
                        },
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ReservationPage"}, "a page"),
                        "400": _problem("bad limit or cursor"),
                        "401": _problem("no or unknown bearer token"),
                        "403": _problem("the role may not"),
                    },
                }
            },
            "/api/v1/sync": {
                "post": _kiosk_post(
                    "Apply taps served offline, each exactly once (never refusing a dispense)",
                    "SyncRequest",
                    _json(
                        {"$ref": "#/components/schemas/SyncAnswer"}, "one result per transaction"
                    ),
                )
            },
            "/api/v1/exams/eligibility": {
                "post": _kiosk_post(
                    "A card tapped at a station (station device): each programme, eligible or not",
                    "TapRequest",
                    _json({"$ref": "#/components/schemas/ExamEligibility"}, "per programme"),
                    unprocessable="the card could not be identified (code: card_unknown, card_revoked, "
                    "proof_invalid, proof_stale, counter_replayed), or an Idempotency-Key reused",
                )
            },
            "/api/v1/exams/records": {
                "post": _kiosk_post(
                    "Record that an exam was given (station device); never its results",
                    "ExamRecordRequest",
                    _json({"$ref": "#/components/schemas/ExamRecordAnswer"}, "recorded"),
                    status="201",
                    unprocessable="the card could not be identified, or an Idempotency-Key reused",
                    extra={
                        "404": _problem("no such programme"),
                        "409": _problem("not eligible now (reason, next_eligible_on)"),
                    },
                )
            },
            "/api/v1/telemetry": {
                "post": _kiosk_post(
                    "Heartbeat: stock per slot, faults and other events",
                    "TelemetryRequest",
                    _json({"$ref": "#/components/schemas/TelemetryAnswer"}, "recorded"),
                    unprocessable="a slot this kiosk does not have, or an Idempotency-Key reused",
                )
            },
            "/api/v1/kiosks/me/config": {
                "get": {
                    "summary": "The calling kiosk's slots, offline rules and revocation version, signed",
                    "security": KIOSK_SECURITY,
                    "parameters": [
                        {"$ref": "#/components/parameters/XKioskId"},
                        {"$ref": "#/components/parameters/XTimestamp"},
                        {"$ref": "#/components/parameters/XNonce"},
                        {"$ref": "#/components/parameters/XSignature"},
                    ],
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/KioskConfig"}, "signed configuration"
                        ),
                        "401": _problem("kiosk signature missing or wrong"),
                    },
                }
            },
            "/api/v1/server-key": {
                "get": {
                    "summary": "The server's Ed25519 public key (signs kiosk configurations)",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ServerKey"}, "the key")
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "kioskSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Signature",
                    "description": "Ed25519 over the canonical request (docs/interfaces.md), with "
                    "X-Kiosk-Id, X-Timestamp and X-Nonce",
                },
                "staffToken": {"type": "http", "scheme": "bearer"},
            },
            "parameters": {
                "XKioskId": {
                    "name": "X-Kiosk-Id",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "XTimestamp": {
                    "name": "X-Timestamp",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^-?[0-9]+$"},
                    "description": "Unix seconds; refused beyond 300 s from the server's clock",
                },
                "XNonce": {
                    "name": "X-Nonce",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
                },
                "XSignature": {
                    "name": "X-Signature",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "a retry with the same key gets the first answer",
                },
                "IdempotencyKeyOptional": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "optional for staff calls; a retry with the same key gets the first answer",
                },
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "code"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                        "field": {"type": "string"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                },
                "Proof": {
                    "type": "object",
                    "required": [
                        "kiosk_id",
                        "counter",
                        "time_ms",
                        "nonce",
                        "card_guid",
                        "signature",
                    ],
                    "properties": {
                        "kiosk_id": {"type": "string", "minLength": 1, "maxLength": 255},
                        "counter": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 18446744073709551615,
                        },
                        "time_ms": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 18446744073709551615,
                        },
                        "nonce": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
                        "card_guid": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
                        "signature": {"type": "string", "description": "base64 of DER ECDSA P-256"},
                    },
                },
                "AuthorizeRequest": {
                    "type": "object",
                    "required": ["proof", "slot"],
                    "properties": {
                        "proof": {"$ref": "#/components/schemas/Proof"},
                        "slot": {"type": "integer", "minimum": 0, "maximum": 10000},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
                    },
                },
                "Remaining": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
                "Product": {
                    "type": "object",
                    "required": ["sku", "name", "category"],
                    "properties": {
                        "sku": {"type": "string"},
                        "name": {"type": "string"},
                        "category": {"type": "string"},
                    },
                },
                "AuthorizeAnswer": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["approved", "authorization_id", "product", "remaining"],
                            "properties": {
                                "approved": {"const": True},
                                "authorization_id": {"type": "string"},
                                "product": {"$ref": "#/components/schemas/Product"},
                                "remaining": {"$ref": "#/components/schemas/Remaining"},
                            },
                        },
                        {
                            "type": "object",
                            "required": [
                                "approved",
                                "reason",
                                "message",
                                "remaining",
                                "next_allowed_on",
                            ],
                            "properties": {
                                "approved": {"const": False},
                                "reason": {"type": "string", "enum": REFUSAL_REASONS},
                                "message": {"type": "string"},
                                "remaining": {"$ref": "#/components/schemas/Remaining"},
                                "next_allowed_on": {"type": ["string", "null"], "format": "date"},
                            },
                        },
                    ]
                },
                "CaptureRequest": {
                    "type": "object",
                    "properties": {
                        "board_txn": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "maximum": 4294967295,
                        }
                    },
                },
                "CaptureAnswer": {
                    "type": "object",
                    "required": ["status", "remaining"],
                    "properties": {
                        "status": {"const": "captured"},
                        "remaining": {"$ref": "#/components/schemas/Remaining"},
                    },
                },
                "VoidRequest": {
                    "type": "object",
                    "required": ["reason"],
                    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 64}},
                },
                "VoidAnswer": {
                    "type": "object",
                    "required": ["status", "remaining"],
                    "properties": {
                        "status": {"const": "voided"},
                        "remaining": {"$ref": "#/components/schemas/Remaining"},
                    },
                },
                "CardRequest": {
                    "type": "object",
                    "required": ["resident_id", "certificate"],
                    "properties": {
                        "resident_id": {"type": "integer", "minimum": 1},
                        "certificate": {
                            "type": "string",
                            "description": "base64 of the DER certificate",
                        },
                    },
                },
                "CardAnswer": {
                    "type": "object",
                    "required": ["card_guid", "status"],
                    "properties": {
                        "card_guid": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        "status": {"const": "active"},
                    },
                },
                "SyncRequest": {
                    "type": "object",
                    "required": ["transactions"],
                    "properties": {
                        "transactions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["proof", "slot", "outcome"],
                                "properties": {
                                    "txn_id": {"type": "string", "maxLength": 64},
                                    "proof": {"$ref": "#/components/schemas/Proof"},
                                    "slot": {"type": "integer", "minimum": 0, "maximum": 10000},
                                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                                    "outcome": {
                                        "type": "string",
                                        "enum": ["ok", "empty", "jammed", "motor_fault", "no_drop"],
                                    },
                                    "board_txn": {
                                        "type": ["integer", "null"],
                                        "minimum": 0,
                                        "maximum": 4294967295,
                                    },
                                },
                            },
                        }
                    },
                },
                "SyncAnswer": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["txn_id", "counter", "status"],
                                "properties": {
                                    "txn_id": {"type": ["string", "null"]},
                                    "counter": {"type": "integer"},
                                    "status": {
                                        "type": "string",
                                        "enum": ["applied", "duplicate", "unattributed"],
                                    },
                                    "authorization_id": {"type": "string"},
                                    "charged": {"type": "integer"},
                                    "flags": {
                                        "type": "array",
                                        "items": {
                                            "type": "string",
                                            "enum": ["overdraft", "stale", "card_revoked"],
                                        },
                                    },
                                    "reason": {"type": "string"},
                                },
                            },
                        }
                    },
                },
                "TelemetryRequest": {
                    "type": "object",
                    "properties": {
                        "stock": {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 0},
                        },
                        "events": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["kind"],
                                "properties": {
                                    "kind": {
                                        "type": "string",
                                        "enum": [
                                            "heartbeat",
                                            "fault",
                                            "door",
                                            "temperature",
                                            "power_up",
                                            "stock",
                                            "board",
                                        ],
                                    },
                                    "detail": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "TelemetryAnswer": {
                    "type": "object",
                    "required": ["status", "revocation_version"],
                    "properties": {
                        "status": {"const": "ok"},
                        "revocation_version": {
                            "type": "string",
                            "pattern": "^[0-9]+$",
                            "description": "the revocation list's current version in decimal: "
                            "the configuration's revocation.version, as a string",
                        },
                    },
                },
                "KioskConfig": {
                    "type": "object",
                    "required": [
                        "kiosk_id",
                        "issued_at",
                        "slots",
                        "offline",
                        "revocation",
                        "signature",
                    ],
                    "properties": {
                        "kiosk_id": {"type": "string"},
                        "issued_at": {"type": "string", "format": "date-time"},
                        "slots": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["slot", "sku", "name", "category", "units", "stock"],
                                "properties": {
                                    "slot": {"type": "integer"},
                                    "sku": {"type": "string"},
                                    "name": {"type": "string"},
                                    "category": {"type": "string"},
                                    "units": {"type": "integer"},
                                    "stock": {"type": ["integer", "null"]},
                                },
                            },
                        },
                        "offline": {
                            "type": "object",
                            "required": ["units_per_card_per_day", "max_offline_hours"],
                            "properties": {
                                "units_per_card_per_day": {"type": "integer"},
                                "max_offline_hours": {"type": "integer"},
                            },
                        },
                        "revocation": {
                            "type": "object",
                            "required": ["version"],
                            "properties": {
                                "version": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "description": "the revocation list's current version, as "
                                    "GET /api/v1/revocations answers it (its highest seq): a "
                                    "kiosk whose list is at a lower version is behind",
                                },
                            },
                        },
                        "signature": {
                            "type": "string",
                            "description": "base64 Ed25519 over the canonical JSON of the other fields "
                            "(sorted keys, no spaces, UTF-8), by the key at /api/v1/server-key",
                        },
                    },
                },
                "ServerKey": {
                    "type": "object",
                    "required": ["algorithm", "public_key"],
                    "properties": {
                        "algorithm": {"const": "Ed25519"},
                        "public_key": {"type": "string"},
                    },
                },
                "CardStatusAnswer": {
                    "type": "object",
                    "required": ["card_guid", "status"],
                    "properties": {
                        "card_guid": {"type": "string"},
                        "status": {"type": "string", "enum": ["active", "revoked", "replaced"]},
                    },
                },
                "EnrolRequest": {
                    "type": "object",
                    "required": ["name", "sex", "birth_date", "id_number", "region"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "sex": {"type": "string", "enum": ["F", "M"]},
                        "birth_date": {"type": "string", "format": "date"},
                        "phone": {"type": ["string", "null"]},
                        "id_number": {"type": "string", "minLength": 6, "maxLength": 32},
                        "region": {"type": "string", "description": "region code"},
                    },
                },
                "EnrolAnswer": {
                    "type": "object",
                    "required": ["resident_id", "id_number"],
                    "properties": {
                        "resident_id": {"type": "integer"},
                        "id_number": {"type": "string", "description": "masked: only the last 4"},
                    },
                },
                "ResidentPage": {
                    "type": "object",
                    "required": ["items", "next_after"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": [
                                    "resident_id",
                                    "name",
                                    "sex",
                                    "birth_date",
                                    "id_number",
                                    "region",
                                    "status",
                                    "cards",
                                ],
                                "properties": {
                                    "resident_id": {"type": "integer"},
                                    "name": {"type": "string"},
                                    "sex": {"type": "string"},
                                    "birth_date": {"type": "string", "format": "date"},
                                    "phone": {"type": ["string", "null"]},
                                    "id_number": {"type": "string", "pattern": "^[*]+.{0,4}$"},
                                    "region": {"type": "string"},
                                    "status": {"type": "string"},
                                    "cards": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/CardStatusAnswer"},
                                    },
                                },
                            },
                        },
                        "next_after": {"type": ["integer", "null"]},
                    },
                },
                "RuleSpec": {
                    "type": "object",
                    "required": ["category", "period_kind", "units"],
                    "properties": {
                        "category": {"type": "string"},
                        "period_kind": {
                            "type": "string",
                            "enum": ["calendar_month", "rolling_days", "calendar_year"],
                        },
                        "period_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 3660},
                        "units": {"type": "integer", "minimum": 0, "maximum": 10000},
                        "per_visit_cap": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "maximum": 10000,
                        },
                        "min_age": {"type": ["integer", "null"], "minimum": 0, "maximum": 150},
                        "max_age": {"type": ["integer", "null"], "minimum": 0, "maximum": 150},
                        "sexes": {"type": "string", "description": "F, M, FM or empty (anyone)"},
                    },
                },
                "Rule": {
                    "type": "object",
                    "required": [
                        "rule_id",
                        "category",
                        "period_kind",
                        "period_days",
                        "units",
                        "per_visit_cap",
                        "min_age",
                        "max_age",
                        "sexes",
                        "active",
                    ],
                    "properties": {
                        "rule_id": {"type": "integer"},
                        "category": {"type": "string"},
                        "period_kind": {
                            "type": "string",
                            "enum": ["calendar_month", "rolling_days", "calendar_year"],
                        },
                        "period_days": {"type": ["integer", "null"]},
                        "units": {"type": "integer"},
                        "per_visit_cap": {"type": ["integer", "null"]},
                        "min_age": {"type": ["integer", "null"]},
                        "max_age": {"type": ["integer", "null"]},
                        "sexes": {"type": "string"},
                        "active": {"type": "boolean"},
                    },
                },
                "RuleList": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Rule"}}
                    },
                },
                "MonthlyReport": {
                    "type": "object",
                    "required": ["year", "suppressed_below", "rows"],
                    "properties": {
                        "year": {"type": "integer"},
                        "suppressed_below": {"type": "integer"},
                        "rows": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["town", "town_name", "month", "dispenses", "units"],
                                "properties": {
                                    "town": {"type": "string"},
                                    "town_name": {"type": "string"},
                                    "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                                    "dispenses": {"type": ["integer", "null"]},
                                    "units": {"type": ["integer", "null"]},
                                },
                            },
                        },
                    },
                },
                "TapRequest": {
                    "type": "object",
                    "required": ["proof"],
                    "properties": {"proof": {"$ref": "#/components/schemas/Proof"}},
                },
                "ExamRecordRequest": {
                    "type": "object",
                    "required": ["proof", "programme"],
                    "properties": {
                        "proof": {"$ref": "#/components/schemas/Proof"},
                        "programme": {"type": "string", "minLength": 1, "maxLength": 40},
                        "staff": {"type": "string", "minLength": 1, "maxLength": 120},
                    },
                },
                "ExamEligibility": {
                    "type": "object",
                    "required": ["programmes"],
                    "properties": {
                        "programmes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": [
                                    "programme",
                                    "name",
                                    "eligible",
                                    "reason",
                                    "next_eligible_on",
                                ],
                                "properties": {
                                    "programme": {"type": "string"},
                                    "name": {"type": "string"},
                                    "eligible": {"type": "boolean"},
                                    "reason": {
                                        "type": ["string", "null"],
                                        "enum": [
                                            None,
                                            "inactive",
                                            "sex_not_served",
                                            "too_young",
                                            "too_old",
                                            "already_given",
                                            "too_soon",
                                            "no_plan",
                                        ],
                                    },
                                    "next_eligible_on": {
                                        "type": ["string", "null"],
                                        "format": "date",
                                    },
                                },
                            },
                        }
                    },
                },
                "ExamRecordAnswer": {
                    "type": "object",
                    "required": ["record_id", "programme", "given_on"],
                    "properties": {
                        "record_id": {"type": "integer"},
                        "programme": {"type": "string"},
                        "given_on": {"type": "string", "format": "date"},
                    },
                },
                "SlotList": {
                    "type": "object",
                    "required": ["station_id", "date", "slots"],
                    "properties": {
                        "station_id": {"type": "string"},
                        "date": {"type": "string", "format": "date"},
                        "slots": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["starts_at", "available", "appointment_id"],
                                "properties": {
                                    "starts_at": {"type": "string", "format": "date-time"},
                                    "available": {"type": "boolean"},
                                    "appointment_id": {"type": ["integer", "null"]},
                                },
                            },
                        },
                    },
                },
                "AppointmentRequest": {
                    "type": "object",
                    "required": ["station_id", "programme", "resident_id", "starts_at"],
                    "properties": {
                        "station_id": {"type": "string"},
                        "programme": {"type": "string"},
                        "resident_id": {"type": "integer", "minimum": 1},
                        "starts_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Appointment": {
                    "type": "object",
                    "required": [
                        "appointment_id",
                        "station_id",
                        "programme",
                        "starts_at",
                        "status",
                    ],
                    "properties": {
                        "appointment_id": {"type": "integer"},
                        "station_id": {"type": "string"},
                        "programme": {"type": ["string", "null"]},
                        "starts_at": {"type": "string", "format": "date-time"},
                        "status": {"type": "string", "enum": ["booked", "cancelled"]},
                    },
                },
                "CoupleRequest": {
                    "type": "object",
                    "required": ["partners"],
                    "properties": {
                        "partners": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "planning_since": {"type": ["string", "null"], "format": "date"},
                    },
                },
                "Couple": {
                    "type": "object",
                    "required": ["couple_id", "partners", "planning_since"],
                    "properties": {
                        "couple_id": {"type": "integer"},
                        "partners": {"type": "array", "items": {"type": "integer"}},
                        "planning_since": {"type": ["string", "null"], "format": "date"},
                    },
                },
                "ReservationPage": {
                    "type": "object",
                    "required": ["items", "next_after"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": [
                                    "authorization_id",
                                    "kiosk_id",
                                    "slot",
                                    "quantity",
                                    "created_at",
                                    "age_seconds",
                                ],
                                "properties": {
                                    "authorization_id": {"type": "string"},
                                    "kiosk_id": {"type": "string"},
                                    "slot": {"type": "integer"},
                                    "quantity": {"type": "integer"},
                                    "created_at": {"type": "string", "format": "date-time"},
                                    "age_seconds": {"type": "integer", "minimum": 0},
                                },
                            },
                        },
                        "next_after": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }


# --- server.provisioning: card provisioning, lifecycle and the kiosks' revocation list ----------


def _guid_parameter() -> dict[str, Any]:
    return {"name": "guid", "in": "path", "required": True, "schema": {"type": "string"}}


def _staff_operation(
    summary: str,
    ok_status: str,
    ok: dict[str, Any],
    *,
    body: str | None = None,
    guid: bool = False,
    idempotent: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [_guid_parameter()] if guid else []
    if idempotent:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKeyOptional"})
    operation: dict[str, Any] = {
        "summary": summary,
        "security": STAFF_SECURITY,
        "parameters": parameters,
        "responses": {
            ok_status: ok,
            "400": _problem("invalid JSON or fields"),
            "401": _problem("no or unknown bearer token"),
            "403": _problem("the role may not, or the holder is outside the user's area"),
            "404": _problem("no such card or resident"),
            **(extra or {}),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return operation


def _provisioning_paths() -> dict[str, Any]:
    certified = {"$ref": "#/components/schemas/CardCertificateAnswer"}
    return {
        "/api/v1/cards/certificates": {
            "post": _staff_operation(
                "Provisioning: sign a card's certificate and CHUID for the key it generated; "
                "answer its diversified management key and PUK (records no issuance)",
                "201",
                _json(certified, "signed"),
                body="CardCertificateRequest",
                idempotent=True,
                extra={
                    "409": _problem("a card with this GUID is already issued"),
                    "422": _problem("the Idempotency-Key was used for a different request"),
                    "503": _problem("this server holds no card CA key"),
                },
            )
        },
        "/api/v1/cards/{guid}": {
            "get": _staff_operation(
                "A card's holder (resident id), status and expiry",
                "200",
                _json({"$ref": "#/components/schemas/CardView"}, "the card"),
                guid=True,
            )
        },
        "/api/v1/cards/{guid}/secrets": {
            "post": _staff_operation(
                "A card's diversified management key and PUK, for a technician holding the "
                "card (audited with its purpose)",
                "200",
                _json({"$ref": "#/components/schemas/CardSecrets"}, "the card's secrets"),
                body="CardSecretsRequest",
                guid=True,
            )
        },
        "/api/v1/cards/{guid}/renew": {
            "post": _staff_operation(
                "Renewal: a new certificate and CHUID with a new expiry for an active card's key",
                "200",
                _json(certified, "renewed; the new certificate is recorded"),
                body="Empty",
                guid=True,
                idempotent=True,
                extra={
                    "409": _problem("the card is not active"),
                    "422": _problem("the Idempotency-Key was used for a different request"),
                    "503": _problem("this server holds no card CA key"),
                },
            )
        },
        "/api/v1/revocations": {
            "get": {
                "summary": "The revocation list after version `since`, signed by the server key "
                "(Ed25519 over the canonical JSON of the answer without `signature`)",
                "security": KIOSK_SECURITY,
                "parameters": [
                    {"$ref": "#/components/parameters/XKioskId"},
                    {"$ref": "#/components/parameters/XTimestamp"},
                    {"$ref": "#/components/parameters/XNonce"},
                    {"$ref": "#/components/parameters/XSignature"},
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {
                    "200": _json(
                        {"$ref": "#/components/schemas/RevocationDelta"}, "the delta, signed"
                    ),
                    "400": _problem("since is not a version number"),
                    "401": _problem("the request is not signed by a known kiosk"),
                    "503": _problem("the list changed under the request; ask again"),
                },
            }
        },
    }


def _provisioning_schemas() -> dict[str, Any]:
    secrets_properties = {
        "management_key": {"type": "string", "description": "base64, 16 bytes"},
        "management_key_type": {"const": "aes128"},
        "puk": {"type": "string", "pattern": "^[0-9]{8}$"},
    }
    return {
        "Empty": {"type": "object"},
        "CardCertificateRequest": {
            "type": "object",
            "required": ["resident_id", "public_key"],
            "properties": {
                "resident_id": {"type": "integer", "minimum": 1},
                "public_key": {
                    "type": "string",
                    "description": "base64 of the card's P-256 SubjectPublicKeyInfo (DER)",
                },
                "card_guid": {
                    "type": "string",
                    "pattern": "^[0-9a-fA-F]{32}$",
                    "description": "the GUID already on the card, when provisioning it again",
                },
            },
        },
        "CardCertificateAnswer": {
            "type": "object",
            "required": [
                "card_guid",
                "certificate",
                "chuid",
                "expiry",
                "management_key",
                "management_key_type",
                "puk",
            ],
            "properties": {
                "card_guid": {"type": "string"},
                "certificate": {"type": "string", "description": "base64 DER"},
                "chuid": {"type": "string", "description": "base64 of the signed CHUID object"},
                "expiry": {"type": "string", "format": "date"},
                **secrets_properties,
            },
        },
        "CardView": {
            "type": "object",
            "required": ["card_guid", "resident_id", "status", "not_after", "issued_at"],
            "properties": {
                "card_guid": {"type": "string"},
                "resident_id": {"type": "integer"},
                "status": {"enum": ["active", "revoked", "replaced"]},
                "not_after": {"type": "string", "format": "date-time"},
                "issued_at": {"type": "string", "format": "date-time"},
            },
        },
        "CardSecretsRequest": {
            "type": "object",
            "required": ["purpose"],
            "properties": {"purpose": {"type": "string", "maxLength": 64}},
        },
        "CardSecrets": {
            "type": "object",
            "required": ["card_guid", "management_key", "management_key_type", "puk"],
            "properties": {"card_guid": {"type": "string"}, **secrets_properties},
        },
        "RevocationDelta": {
            "type": "object",
            "required": ["since", "version", "full", "issued_at", "added", "signature"],
            "properties": {
                "since": {"type": "integer"},
                "version": {"type": "integer"},
                "full": {"type": "boolean"},
                "issued_at": {"type": "string", "format": "date-time"},
                "added": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["seq", "card_guid", "reason"],
                        "properties": {
                            "seq": {"type": "integer"},
                            "card_guid": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                    },
                },
                "signature": {"type": "string", "description": "base64 Ed25519"},
            },
        },
    }
