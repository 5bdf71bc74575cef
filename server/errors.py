"""The server's one error hierarchy. Services raise these; the HTTP error handler (server.http.problems)
turns each into an `application/problem+json` document, and the CLI into a message.

Each class fixes an HTTP status and a default stable `code`; a raise may name a narrower code
(`Unauthenticated(code="nonce_replayed")`).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str = "", *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"
    title = "The request is not valid"


class InvalidJson(ApiError):
    status = 400
    code = "invalid_json"
    title = "The body is not valid JSON"


class Unauthenticated(ApiError):
    """Kiosk signature or staff token missing or wrong (401)."""

    status = 401
    code = "unauthenticated"
    title = "Authentication failed"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    title = "Not allowed"


class NotFound(ApiError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ApiError):
    status = 409
    code = "conflict"
    title = "Conflict with the current state"


class Unprocessable(ApiError):
    status = 422
    code = "unprocessable"
    title = "The request cannot be processed"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"
