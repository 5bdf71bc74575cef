"""Calls anyone may make: the health check and the OpenAPI document of the whole API."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, current_app

from server.http.contracts import Answer
from server.http.framework import PUBLIC, Call, endpoint
from server.http.openapi import document
from server.services import health

public_api = Blueprint("public_api", __name__, url_prefix="/api/v1")


class PartStatus(Answer):
    status: Literal["ok", "down", "not_checked"]
    detail: str | None = None


class Health(Answer):
    status: Literal["ok"]
    parts: dict[str, PartStatus]


@endpoint(
    public_api,
    "GET",
    "/health",
    summary="Whether the server and each part it depends on (database, schema) is up",
    auth=PUBLIC,
    answer=Health,
    errors={503: "a part is down; `parts` says which"},
)
def health_check(call: Call[None, None]) -> dict[str, Any]:
    return health.report(call.session)


@endpoint(
    public_api,
    "GET",
    "/openapi.json",
    summary="This document: every call with its declared contract",
    auth=PUBLIC,
    answer=None,
)
def openapi_document(call: Call[None, None]) -> dict[str, Any]:
    return document(current_app)
