"""The kiosk's HTTP client for the central server: every request signed with the device key.

The signature format is cardsvc.requestsig (docs/interfaces.md). Every POST carries an
Idempotency-Key that the caller keeps in the journal, so a retry after a timeout or a crash gets
the server's first answer and never reserves or charges twice.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cardsvc import requestsig
from kiosk.errors import ServerProblemError, ServerUnavailableError


@dataclass(frozen=True)
class Authorization:
    approved: bool
    authorization_id: str | None
    reason: str | None
    message: str | None
    remaining: dict[str, int]
    product: dict[str, Any] | None
    next_allowed_on: str | None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Authorization:
        return cls(
            approved=bool(doc.get("approved")),
            authorization_id=doc.get("authorization_id"),
            reason=doc.get("reason"),
            message=doc.get("message"),
            remaining=dict(doc.get("remaining") or {}),
            product=doc.get("product"),
            next_allowed_on=doc.get("next_allowed_on"),
        )


class ServerClient:
    """Signed JSON calls to /api/v1. One instance per kiosk; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        kiosk_id: str,
        device_key: Ed25519PrivateKey,
        *,
        timeout: float = 5.0,
        retries: int = 2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.kiosk_id = kiosk_id
        self._key = device_key
        self._timeout = timeout
        self._retries = retries
        self._http = requests.Session()
        # time.time() of the last answer the server gave (any answer: it was reachable).
        self.last_contact: float | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authorize(
        self, proof: dict[str, Any], slot: int, idempotency_key: str, quantity: int = 1
    ) -> Authorization:
        doc = self.post(
            "/api/v1/authorizations",
            {"proof": proof, "slot": slot, "quantity": quantity},
            idempotency_key,
        )
        return Authorization.from_json(doc)

    def capture(
        self, authorization_id: str, board_txn: int, idempotency_key: str
    ) -> dict[str, Any]:
        return self.post(
            f"/api/v1/authorizations/{authorization_id}/capture",
            {"board_txn": board_txn},
            idempotency_key,
        )

    def void(self, authorization_id: str, reason: str, idempotency_key: str) -> dict[str, Any]:
        return self.post(
            f"/api/v1/authorizations/{authorization_id}/void", {"reason": reason}, idempotency_key
        )

    def sync(self, transactions: list[dict[str, Any]], idempotency_key: str) -> dict[str, Any]:
        """POST /sync: offline taps, each applied once (kiosk.offline builds the items)."""
        return self.post("/api/v1/sync", {"transactions": transactions}, idempotency_key)

    def config(self) -> dict[str, Any]:
        """GET /kiosks/me/config: the signed configuration (verified by kiosk.config_sync)."""
        return self.get("/api/v1/kiosks/me/config")

    def server_key(self) -> dict[str, Any]:
        """GET /server-key: the key configurations are signed with (pinned on first use)."""
        return self.get("/api/v1/server-key")

    def telemetry(self, heartbeat: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST /telemetry: stock per slot and events (kiosk.telemetry builds the heartbeat)."""
        return self.post("/api/v1/telemetry", heartbeat, idempotency_key)

    def post(self, path: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST signed JSON; retried on connection failures with the same idempotency key."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        last: Exception | None = None
        for _ in range(self._retries + 1):
            # Each attempt is signed afresh (new time and nonce); the idempotency key is what
            # makes the attempts one request at the server.
            headers = self._signed_headers("POST", path, payload)
            headers["Idempotency-Key"] = idempotency_key
            try:
                response = self._http.post(
                    self.base_url + path, data=payload, headers=headers, timeout=self._timeout
                )
            except requests.RequestException as exc:
                last = exc
                continue
            return self._answer(response)
        raise ServerUnavailableError(f"the server at {self.base_url} did not answer: {last}")

    def get(self, path: str) -> dict[str, Any]:
        headers = self._signed_headers("GET", path, b"")
        try:
            response = self._http.get(self.base_url + path, headers=headers, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ServerUnavailableError(
                f"the server at {self.base_url} did not answer: {exc}"
            ) from exc
        return self._answer(response)

    def _answer(self, response: requests.Response) -> dict[str, Any]:
        if response.status_code < 500:  # a 5xx may come from a proxy with the server down
            self.last_contact = time.time()
        return _json_or_problem(response)

    def _signed_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        signed = requestsig.sign(
            self._key, self.kiosk_id, method, path, int(time.time()), secrets.token_hex(16), body
        )
        headers = signed.as_dict()
        headers["Content-Type"] = "application/json"
        return headers


def _json_or_problem(response: requests.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code >= 400 or not isinstance(doc, dict):
        problem = doc if isinstance(doc, dict) else {}
        raise ServerProblemError(
            response.status_code,
            str(problem.get("code") or f"http_{response.status_code}"),
            str(problem.get("detail") or problem.get("title") or response.reason),
            problem,
        )
    return doc
