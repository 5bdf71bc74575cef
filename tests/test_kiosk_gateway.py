"""The server's reverse proxy answering for it: 502, 503 or 504 with an error page means the server
cannot be reached (the kiosk may serve offline); the server's own problem document is its decision.

Every test talks real HTTP to a small gateway on 127.0.0.1 (http.server in a thread). The
gateway either answers for the server with an error page, or passes the request on to the
in-process fake server of tests/test_kiosk_offline.py; the card is a virtual PIV card in process
and the board a fake, as there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cardsvc.ca import CardCA
from cardsvc.piv import PivSession
from cardsvc.provision import provision_card
from cardsvc.vcard import VirtualPivCard
from kiosk.client import ServerClient
from kiosk.errors import ServerProblemError, ServerUnavailableError
from kiosk.journal import Journal, TxnState
from kiosk.offline import OfflineMode
from kiosk.tap import Kiosk, TapOutcome
from tests.test_kiosk_offline import (
    KIOSK_ID,
    Clock,
    FakeBoard,
    FakeServer,
    InProcessConnection,
    config_of,
    signed_config,
)

NGINX_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
PHRASES = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def error_page(status: int) -> Answer:
    """What nginx sends for its upstream being down (502), overloaded (503) or too slow (504)."""
    page = NGINX_PAGE.format(status=status, phrase=PHRASES[status])
    return Answer(status, "text/html", page.encode())


def problem(status: int, code: str, detail: str) -> Answer:
    """What the OneCard server itself sends for an error (server.http.problems)."""
    doc = {"type": f"/problems/{code}", "title": code, "status": status, "detail": detail}
    return Answer(status, "application/problem+json", json.dumps({**doc, "code": code}).encode())


CARD_CA_NOT_CONFIGURED = problem(503, "card_ca_not_configured", "this server holds no card CA key")


@dataclass
class Gateway:
    """The reverse proxy in front of the server. `outage(path)` gives the answer the gateway
    sends instead of the server's, or None to pass the request on to `upstream`; with
    `forward_anyway` the request reaches the server first and only its answer is lost (a 504
    after the server did the work)."""

    upstream: FakeServer
    url: str = ""
    outage: Callable[[str], Answer | None] = lambda path: None
    forward_anyway: bool = False
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, key

    def down(self, answer: Answer | None = None) -> None:
        """Every request answered by the gateway alone (default: 502 with nginx's page)."""
        page = answer or error_page(502)
        self.outage = lambda path: page

    def up(self) -> None:
        self.outage = lambda path: None

    def handle(self, method: str, path: str, key: str | None, body: bytes) -> Answer:
        self.seen.append((method, path, key))
        instead = self.outage(path)
        if instead is not None and not self.forward_anyway:
            return instead
        answer = self._server(method, path, key or "", json.loads(body) if body else {})
        return instead or answer

    def _server(self, method: str, path: str, key: str, body: dict[str, Any]) -> Answer:
        """The fake server's methods as the HTTP API of docs/interfaces.md."""
        server = self.upstream
        parts = path.strip("/").split("/")  # api, v1, ...
        try:
            if method == "POST" and parts[2:] == ["authorizations"]:
                doc: dict[str, Any] = asdict(server.authorize(body["proof"], body["slot"], key))
            elif method == "POST" and parts[2] == "authorizations" and parts[4:] == ["capture"]:
                doc = server.capture(parts[3], body["board_txn"], key)
            elif method == "POST" and parts[2] == "authorizations" and parts[4:] == ["void"]:
                doc = server.void(parts[3], body["reason"], key)
            elif method == "POST" and parts[2:] == ["sync"]:
                doc = server.sync(body["transactions"], key)
            else:
                return problem(404, "not_found", f"{method} {path}")
        except ServerProblemError as exc:
            return problem(exc.status, exc.code, exc.detail)
        return Answer(200, "application/json", json.dumps(doc).encode())


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway(FakeServer())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = gw.handle(self.command, self.path, self.headers.get("Idempotency-Key"), body)
            self.send_response(answer.status, PHRASES.get(answer.status))
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), name="test-gateway", daemon=True
    )
    thread.start()
    try:
        gw.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        yield gw
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[ServerClient]:
    with ServerClient(
        gateway.url, KIOSK_ID, Ed25519PrivateKey.generate(), timeout=5.0, retries=2
    ) as c:
        yield c


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_error_page_means_the_server_cannot_be_reached(
    gateway: Gateway, client: ServerClient, status: int
) -> None:
    gateway.down(error_page(status))
    with pytest.raises(ServerUnavailableError) as raised:
        client.capture("auth-1", 7, "key-1:capture")
    phrase = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
    assert str(raised.value) == f"the server's gateway answered {status} {phrase}"
    assert raised.value.status == status
    # Tried like a refused connection, within the same budget and with the same key.
    assert gateway.seen == [("POST", "/api/v1/authorizations/auth-1/capture", "key-1:capture")] * 3
    assert client.last_contact is None  # the gateway answered, not the server


def test_a_gateway_error_on_a_get_means_the_server_cannot_be_reached(
    gateway: Gateway, client: ServerClient
) -> None:
    gateway.down(error_page(504))
    with pytest.raises(ServerUnavailableError, match="gateway answered 504 Gateway Timeout"):
        client.config()
    assert [(m, p) for m, p, _ in gateway.seen] == [("GET", "/api/v1/kiosks/me/config")]


def test_the_servers_own_503_is_its_decision_and_not_retried(
    gateway: Gateway, client: ServerClient
) -> None:
    gateway.down(CARD_CA_NOT_CONFIGURED)
    with pytest.raises(ServerProblemError) as raised:
        client.capture("auth-1", 7, "key-1:capture")
    assert (raised.value.status, raised.value.code) == (503, "card_ca_not_configured")
    assert raised.value.detail == "this server holds no card CA key"
    assert len(gateway.seen) == 1


@pytest.mark.parametrize(
    ("answer", "unreachable"),
    [
        # A gateway's JSON that is not the server's problem document.
        (Answer(503, "application/json", b'{"message": "no healthy upstream"}'), True),
        (Answer(502, "application/problem+json", b'{"title": "Bad Gateway"}'), True),  # no code
        (Answer(504, "application/problem+json", b"<html>timeout</html>"), True),
        (Answer(502, "text/plain", b""), True),
        (Answer(503, "text/html", b'{"code": "card_ca_not_configured"}'), True),  # not p+json
        # The server's own problem documents, whatever the status.
        (problem(503, "field_key_mismatch", "the field key differs"), False),
        (problem(502, "upstream_failed", "said by the server"), False),
        (
            Answer(
                503,
                "Application/Problem+JSON; charset=utf-8",
                b'{"code": "card_ca_not_configured", "detail": "x"}',
            ),
            False,
        ),
        # Not a gateway status: a failure of the server itself, never offline.
        (Answer(500, "text/html", b"<html>Internal Server Error</html>"), False),
    ],
)
def test_only_a_gateway_status_without_the_servers_problem_means_unreachable(
    gateway: Gateway, client: ServerClient, answer: Answer, unreachable: bool
) -> None:
    gateway.down(answer)
    expected = ServerUnavailableError if unreachable else ServerProblemError
    with pytest.raises(expected):
        client.sync([], "batch-1")
    assert len(gateway.seen) == (3 if unreachable else 1)


def test_a_gateway_that_recovers_within_the_retries_gets_the_servers_answer(
    gateway: Gateway, client: ServerClient
) -> None:
    answers = iter([error_page(502), error_page(503)])
    gateway.outage = lambda path: next(answers, None)
    assert client.sync([], "batch-1") == {"results": []}
    assert [key for _, _, key in gateway.seen] == ["batch-1"] * 3
    assert client.last_contact is not None


# --------------------------------------------------------------------------- the kiosk


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CardCA:
    return CardCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def card(tmp_path: Path, ca: CardCA) -> InProcessConnection:
    connection = InProcessConnection(VirtualPivCard(tmp_path / "card.json"))
    provision_card(PivSession(connection), ca)
    return connection


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite3", clock=clock) as j:
        yield j


@pytest.fixture
def clock() -> Clock:
    # Real time: the client's last contact is real time too.
    return Clock(time.time())


def make_kiosk(
    journal: Journal, client: ServerClient, ca: CardCA, clock: Clock, *, offline: bool = True
) -> tuple[Kiosk, FakeBoard]:
    config = config_of(signed_config(issued_at=clock.now - 60))
    board = FakeBoard()
    kiosk = Kiosk(
        kiosk_id=KIOSK_ID,
        journal=journal,
        server=client,
        board=board,  # type: ignore[arg-type]
        ca_certificate_der=ca.certificate_der,
        clock=clock,
        offline=OfflineMode(journal, lambda: config, lambda: client.last_contact, clock=clock)
        if offline
        else None,
    )
    return kiosk, board


@pytest.mark.parametrize("status", [502, 503, 504])
def test_the_kiosk_serves_offline_while_the_gateway_answers_for_the_server(
    gateway: Gateway,
    client: ServerClient,
    journal: Journal,
    ca: CardCA,
    clock: Clock,
    card: InProcessConnection,
    status: int,
) -> None:
    kiosk, board = make_kiosk(journal, client, ca, clock)
    gateway.down(error_page(status))
    served = kiosk.serve_card(card, 1)
    assert served.outcome is TapOutcome.DISPENSED, served.message
    assert served.reason == "offline"
    assert board.dispensed == [served.txn_id]
    txn = journal.get(served.txn_id or 0)
    assert txn.state is TxnState.OFFLINE_DISPENSED

    assert kiosk.recover() == []  # still only the gateway: the tap stays queued
    assert kiosk.offline_sync.pending() == 1
    gateway.up()
    assert kiosk.recover() == [(txn.id, TxnState.SYNCED)]
    assert gateway.upstream.charged() == 1
    assert kiosk.recover() == []


def test_the_servers_own_503_at_authorize_is_not_served_offline(
    gateway: Gateway,
    client: ServerClient,
    journal: Journal,
    ca: CardCA,
    clock: Clock,
    card: InProcessConnection,
) -> None:
    kiosk, board = make_kiosk(journal, client, ca, clock)
    gateway.down(CARD_CA_NOT_CONFIGURED)
    result = kiosk.serve_card(card, 1)
    assert result.outcome is TapOutcome.UNSETTLED
    assert result.reason == "server_unavailable"
    assert board.dispensed == []
    assert journal.get(result.txn_id or 0).state is TxnState.AUTHORIZING


def test_a_504_after_the_server_reserved_is_served_offline_and_charged_once(
    gateway: Gateway,
    client: ServerClient,
    journal: Journal,
    ca: CardCA,
    clock: Clock,
    card: InProcessConnection,
) -> None:
    kiosk, _ = make_kiosk(journal, client, ca, clock)
    gateway.down(error_page(504))
    gateway.forward_anyway = True  # the server reserved; its answer was lost at the gateway
    served = kiosk.serve_card(card, 1)
    assert served.outcome is TapOutcome.DISPENSED and served.reason == "offline"
    txn = journal.get(served.txn_id or 0)
    authorize_keys = {key for _, path, key in gateway.seen if path.endswith("/authorizations")}
    assert authorize_keys == {txn.idempotency_key}  # every retry was the same request

    gateway.up()
    gateway.forward_anyway = False
    assert kiosk.recover() == [(txn.id, TxnState.SYNCED)]
    assert ("capture", txn.idempotency_key + ":capture") in gateway.upstream.calls
    assert gateway.upstream.charged() == 1  # the reservation was captured, nothing added


def test_a_capture_the_gateway_refused_stays_pending_and_is_captured_once(
    gateway: Gateway,
    client: ServerClient,
    journal: Journal,
    ca: CardCA,
    clock: Clock,
    card: InProcessConnection,
) -> None:
    kiosk, _ = make_kiosk(journal, client, ca, clock)
    page = error_page(502)
    gateway.outage = lambda path: page if path.endswith("/capture") else None
    served = kiosk.serve_card(card, 1)
    assert served.outcome is TapOutcome.DISPENSED and served.reason is None  # online
    txn = journal.get(served.txn_id or 0)
    assert txn.state is TxnState.DISPENSED  # the fall is written; the capture waits

    assert kiosk.recover() == []  # the gateway still answers for the server: no error
    assert journal.get(txn.id).state is TxnState.DISPENSED
    gateway.up()
    assert kiosk.recover() == [(txn.id, TxnState.CAPTURED)]
    captures = {key for kind, key in gateway.upstream.calls if kind == "capture"}
    assert captures == {txn.idempotency_key + ":capture"}
    assert gateway.upstream.charged() == 1


def test_an_open_authorization_waits_through_gateway_errors_and_is_released(
    gateway: Gateway,
    client: ServerClient,
    journal: Journal,
    ca: CardCA,
    clock: Clock,
    card: InProcessConnection,
) -> None:
    kiosk, board = make_kiosk(journal, client, ca, clock, offline=False)
    gateway.down(error_page(504))
    gateway.forward_anyway = True  # the server reserved a unit nobody took
    result = kiosk.serve_card(card, 1)
    assert result.outcome is TapOutcome.UNSETTLED and board.dispensed == []
    gateway.forward_anyway = False

    assert kiosk.recover() == []  # the gateway again: neither refused nor lost
    assert journal.get(result.txn_id or 0).state is TxnState.AUTHORIZING
    gateway.down(CARD_CA_NOT_CONFIGURED)  # the server failing is not a decision either
    assert kiosk.recover() == []
    assert journal.get(result.txn_id or 0).state is TxnState.AUTHORIZING

    gateway.up()
    assert kiosk.recover() == [(result.txn_id, TxnState.VOIDED)]
    assert [a["status"] for a in gateway.upstream.by_counter.values()] == ["voided"]
