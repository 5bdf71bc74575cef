"""The kiosk's HTTP client for the central server: every request signed with the device key.

The signature format is cardsvc.requestsig (docs/interfaces.md). Every POST carries an
Idempotency-Key that the caller keeps in the journal, so a retry after a timeout or a crash gets
the server's first answer and never reserves or charges twice.

The server runs behind a TLS reverse proxy (ARCHITECTURE.md). With the application down, the
proxy answers 502, 503 or 504 itself, usually with an HTML page; the server's own errors are
always `application/problem+json` documents with a `code` (server.problems). So a 502/503/504
without such a document is the proxy saying the server cannot be reached: it raises
ServerUnavailableError like a refused connection (and the kiosk may serve offline), while the
server's own 503 (e.g. `card_ca_not_configured`) is its decision and stays ServerProblemError.

HTTPS: the server is verified against `server_ca` (the CA file that signed the proxy's
certificate; `--server-ca` / `ONECARD_SERVER_CA`), else against the system's trust store.
Optionally `server_pin` (`--server-pin` / `ONECARD_SERVER_PIN`), the SHA-256 of the server's
certificate, pins that one certificate on top of the CA check (the chain is still verified; the
pin replaces the host name check, and must be changed when the certificate is renewed). A
certificate that does not verify or match raises ServerTrustError at once (no retry, nothing
sent).

Every call carries an `X-Request-Id` (one per call, the same on its retries); the server logs it
with the request, and the kiosk's log lines about a failed call name it, so one tap can be
followed through both logs.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from requests.adapters import HTTPAdapter

from cardsvc import requestsig
from kiosk.errors import ServerProblemError, ServerTrustError, ServerUnavailableError

log = logging.getLogger(__name__)

# What a reverse proxy answers for an application server that is down, overloaded or too slow.
GATEWAY_STATUSES = frozenset({502, 503, 504})
PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"


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
        server_ca: Path | None = None,
        server_pin: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.kiosk_id = kiosk_id
        self._key = device_key
        self._timeout = timeout
        self._retries = retries
        self._server_ca = server_ca
        self._http = requests.Session()
        # Passed with every call: a Session's own `verify` loses to REQUESTS_CA_BUNDLE.
        self._verify: str | bool = True
        if server_ca is not None:
            if not Path(server_ca).is_file():
                raise ServerTrustError(f"the server CA file {server_ca} does not exist")
            self._verify = str(server_ca)
        if server_pin:
            self._http.mount("https://", PinnedAdapter(server_pin))
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

    def entitlements(self, proof: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST /entitlements: what the card may take here now, per category (kiosk.choices)."""
        return self.post("/api/v1/entitlements", {"proof": proof}, idempotency_key)

    def stock_event(self, event: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST /stock-events: a technician's refill or test dispense (kiosk.maintenance)."""
        return self.post("/api/v1/stock-events", event, idempotency_key)

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
        """POST signed JSON; retried with the same idempotency key when nothing answered or a
        gateway answered for the server, up to `retries` times."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        request_id = new_request_id()
        last: ServerUnavailableError | None = None
        for _ in range(self._retries + 1):
            # Each attempt is signed afresh (new time and nonce); the idempotency key is what
            # makes the attempts one request at the server, also after a 504 whose request the
            # server did receive.
            headers = self._signed_headers("POST", path, payload, request_id)
            headers["Idempotency-Key"] = idempotency_key
            try:
                response = self._http.post(
                    self.base_url + path,
                    data=payload,
                    headers=headers,
                    timeout=self._timeout,
                    verify=self._verify,
                )
            except requests.RequestException as exc:
                last = self._unanswered(exc)
                if isinstance(last, ServerTrustError):
                    break  # the same certificate would be refused again
                continue
            try:
                return self._answer(response)
            except ServerUnavailableError as exc:  # a gateway answered for the server
                last = exc
        assert last is not None
        log.warning("POST %s (request %s): %s", path, request_id, last)
        raise last

    def get(self, path: str) -> dict[str, Any]:
        """GET, once: the callers (configuration, revocations) try again at their next turn."""
        request_id = new_request_id()
        headers = self._signed_headers("GET", path, b"", request_id)
        try:
            response = self._http.get(
                self.base_url + path, headers=headers, timeout=self._timeout, verify=self._verify
            )
        except requests.RequestException as exc:
            error = self._unanswered(exc)
            log.warning("GET %s (request %s): %s", path, request_id, error)
            raise error from exc
        return self._answer(response)

    def _unanswered(self, exc: requests.RequestException) -> ServerUnavailableError:
        if isinstance(exc, requests.exceptions.SSLError):
            trusted = self._server_ca or "the system's trust store"
            return ServerTrustError(
                f"refusing to talk to {self.base_url}: its TLS certificate is not trusted by "
                f"{trusted} ({_ssl_reason(exc)})"
            )
        return ServerUnavailableError(f"the server at {self.base_url} did not answer: {exc}")

    def _answer(self, response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        if status in GATEWAY_STATUSES and not _is_server_problem(response):
            raise ServerUnavailableError(
                f"the server's gateway answered {status} {HTTPStatus(status).phrase}", status=status
            )
        if status < 500:  # only then surely the server's own answer: it was reachable
            self.last_contact = time.time()
        return _json_or_problem(response)

    def _signed_headers(
        self, method: str, path: str, body: bytes, request_id: str
    ) -> dict[str, str]:
        signed = requestsig.sign(
            self._key, self.kiosk_id, method, path, int(time.time()), secrets.token_hex(16), body
        )
        headers = signed.as_dict()
        headers["Content-Type"] = "application/json"
        headers[REQUEST_ID_HEADER] = request_id
        return headers


def normalise_pin(fingerprint: str) -> str:
    """A certificate's SHA-256 as 64 lower-case hex digits (colons and case as given are
    accepted); ServerTrustError for anything else."""
    digits = fingerprint.replace(":", "").strip().lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ServerTrustError(f"the server pin must be a SHA-256 in hex, got {fingerprint!r}")
    return digits


class PinnedAdapter(HTTPAdapter):
    """HTTPS whose server certificate must also have this SHA-256 (hex, colons allowed)."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = normalise_pin(fingerprint)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


def new_request_id() -> str:
    """A request id: 32 hex digits, unique per call (the server logs it as `request_id`)."""
    return secrets.token_hex(16)


def _ssl_reason(exc: BaseException) -> str:
    """The innermost TLS reason (e.g. "certificate verify failed: unable to get local issuer
    certificate"), found under requests' and urllib3's wrappers."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {item.verify_message}"
        if isinstance(item, ssl.SSLError):
            return item.reason or str(item)
        todo.extend([*item.args, getattr(item, "reason", None), item.__cause__, item.__context__])
    return str(exc)


def _is_server_problem(response: requests.Response) -> bool:
    """The OneCard server's own error: an application/problem+json object with a `code`."""
    media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media_type != PROBLEM_JSON:
        return False
    try:
        doc = response.json()
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("code"), str) and bool(doc["code"])


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
