"""The kiosk's errors. Turned into words for a resident only on the kiosk screen (kiosk.tap)."""

from __future__ import annotations

from typing import Any


class KioskError(Exception):
    """Base of the kiosk's own errors."""


class ServerUnavailableError(KioskError):
    """The central server could not be reached or did not answer in time.

    `status` is the HTTP status when a gateway in front of the server answered for it (502, 503
    or 504 without the server's problem document); None when nothing answered at all."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerProblemError(KioskError):
    """The server answered with an application/problem+json document."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(f"server said {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem


class ServerTrustError(ServerUnavailableError):
    """The server's TLS certificate is not vouched for by the configured CA (or does not match
    the pinned key): the kiosk sends it nothing. An impostor is treated like an unreachable
    server (offline mode, within its caps), never trusted."""
