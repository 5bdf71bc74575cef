"""The OpenAPI 3.1 document of the JSON API, generated from the declared endpoints.

Every view made with `server.http.framework.endpoint` carries its `Endpoint`: who may call it,
its body, query and answer contracts (pydantic models), its status and its error answers. This
module walks the application's routes and turns those declarations into the document served at
`/api/v1/openapi.json`, so the document cannot drift from what the code validates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.http.contracts import HEX32_PATTERN, MAX_ID, Problem
from server.http.framework import (
    OPTIONAL,
    REQUIRED,
    DeviceAuth,
    Endpoint,
    StaffAuth,
    declared_on,
)

REF = "#/components/schemas/{model}"
DOCUMENT_KEY = "onecard_openapi"
PROBLEM_JSON = "application/problem+json"
_PATH_VARIABLE = re.compile(r"<(?:(?P<converter>[^:>]+):)?(?P<name>[^>]+)>")
_CONVERTER_SCHEMAS: dict[str | None, dict[str, Any]] = {
    None: {"type": "string", "minLength": 1},
    "dbid": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "hex32": {"type": "string", "pattern": HEX32_PATTERN},
}
_SIGNATURE_HEADERS = [
    ("X-Kiosk-Id", {"type": "string", "minLength": 1, "maxLength": 64}, "the device's id"),
    ("X-Timestamp", {"type": "string", "pattern": "^-?[0-9]+$"}, "Unix seconds; refused beyond "
     "the server's clock skew (300 s by default)"),
    ("X-Nonce", {"type": "string", "pattern": HEX32_PATTERN}, "used once"),
    ("X-Signature", {"type": "string"}, "Ed25519 over the canonical request (docs/interfaces.md)"),
]
SECURITY_SCHEMES = {
    "deviceSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": "Ed25519 over the canonical request (docs/interfaces.md), with "
        "X-Kiosk-Id, X-Timestamp and X-Nonce",
    },
    "staffToken": {"type": "http", "scheme": "bearer"},
}


def endpoints_of(app: Flask) -> list[Endpoint]:
    """Every declared endpoint the application routes, in URL order."""
    found = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec = getattr(app.view_functions.get(rule.endpoint), "endpoint_spec", None)
        if spec is not None:
            found.append(spec)
    return found


def endpoints_declared(blueprints: Iterable[Blueprint]) -> list[Endpoint]:
    """Every endpoint declared on `blueprints`, without an application."""
    return [spec for blueprint in blueprints for spec in declared_on(blueprint)]


def document(app: Flask) -> dict[str, Any]:
    """The document for `app` (built once per application)."""
    cached = app.extensions.get(DOCUMENT_KEY)
    if cached is None:
        cached = app.extensions[DOCUMENT_KEY] = build(endpoints_of(app))
    return cached  # type: ignore[no-any-return]


def build(endpoints: list[Endpoint]) -> dict[str, Any]:
    models: dict[tuple[type[BaseModel], str], None] = {(Problem, "serialization"): None}
    for spec in endpoints:
        if spec.body is not None:
            models[(spec.body, "validation")] = None
        if spec.answer is not None:
            models[(spec.answer, "serialization")] = None
    _, definitions = models_json_schema(list(models), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for spec in endpoints:
        template = _PATH_VARIABLE.sub(r"{\g<name>}", spec.rule)
        paths.setdefault(template, {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OneCard server",
            "version": "1",
            "description": "Kiosks, service stations and staff of OneCard (docs/interfaces.md). "
            "Every error is an application/problem+json document with a stable `code`.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": definitions.get("$defs", {}),
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(spec: Endpoint) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": match["name"],
            "in": "path",
            "required": True,
            "schema": _CONVERTER_SCHEMAS.get(match["converter"], _CONVERTER_SCHEMAS[None]),
        }
        for match in _PATH_VARIABLE.finditer(spec.rule)
    ]
    operation: dict[str, Any] = {"summary": spec.summary, "operationId": _operation_id(spec)}
    if isinstance(spec.auth, DeviceAuth):
        operation["security"] = [{"deviceSignature": []}]
        parameters += [
            {"name": name, "in": "header", "required": True, "schema": schema, "description": text}
            for name, schema, text in _SIGNATURE_HEADERS
        ]
    elif isinstance(spec.auth, StaffAuth):
        operation["security"] = [{"staffToken": []}]
        roles = ", ".join(role.value for role in spec.auth.roles) or "any"
        operation["description"] = f"Staff roles: {roles}; scoped to the user's area."
    else:
        operation["security"] = []
    if spec.idempotency is not None:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": spec.idempotency == REQUIRED,
                "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
                "description": "a retry with the same key gets the first answer"
                + (" (optional for staff calls)" if spec.idempotency == OPTIONAL else ""),
            }
        )
    if spec.query is not None:
        query_schema = spec.query.model_json_schema(ref_template=REF)
        required = set(query_schema.get("required", []))
        for name, schema in query_schema.get("properties", {}).items():
            parameters.append(
                {"name": name, "in": "query", "required": name in required, "schema": schema}
            )
    if parameters:
        operation["parameters"] = parameters
    if spec.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {spec.content_type: {"schema": _ref(spec.body)}},
        }
    answer = _ref(spec.answer) if spec.answer is not None else {"type": "object"}
    responses: dict[str, Any] = {
        str(spec.status): {"description": "the answer", "content": {spec.content_type: {"schema": answer}}}
    }
    errors = dict(spec.errors)
    if spec.body is not None or spec.query is not None:
        errors.setdefault(400, "invalid JSON, fields or query")
    if spec.auth is not None:
        errors.setdefault(401, "not authenticated")
    errors.setdefault(500, "the server failed; see its log")
    for status, text in sorted(errors.items()):
        responses[str(status)] = {
            "description": text,
            "content": {PROBLEM_JSON: {"schema": _ref(Problem)}},
        }
    operation["responses"] = responses
    return operation


def _operation_id(spec: Endpoint) -> str:
    words = re.sub(r"[^0-9a-zA-Z]+", "_", _PATH_VARIABLE.sub(r"\g<name>", spec.rule)).strip("_")
    return f"{spec.method.lower()}_{words}"
