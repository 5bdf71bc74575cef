"""The local card service (`onecard cardsvc serve`): the card on a station or technician desk,
offered to the staff web pages over HTTP on 127.0.0.1.

    GET  /v1/status              readers, the reader in use, whether a card is present
    GET  /v1/events              server-sent events: `inserted`, `removed`, `reader_unavailable`
    POST /v1/card/read           the card's GUID, expiry and 9E certificate
    POST /v1/card/prove          {kiosk_id, counter, time_ms, nonce} → a tap proof and certificate
    POST /v1/card/sign-in        {challenge, pin} → the staff card's signature over the server's
                                  sign-in challenge with its PIN-bound 9A key, after VERIFY PIN,
                                  and its 9A certificate (cardsvc.signin, profile.sign_in)
    POST /v1/provision/generate  {management_key, management_key_type, sign_in?} → the new 9E
                                  public key; with `sign_in: true` (a staff card) also the new
                                  PIN-bound 9A key, `sign_in_public_key`
    POST /v1/provision/write     {management_key, management_key_type, certificate, guid, expiry,
                                  chuid_signature?, new_management_key?, pin?} → written
    POST /v1/card/identify       the GUID of the card's CHUID, or null for a blank card
    POST /v1/provision/finish    {management_key?, management_key_type?, certificate, chuid,
                                  sign_in_certificate?, puk?, pin?, new_management_key?} →
                                  written (a staff card's 9A certificate with the 9E one): the
                                  steps of
                                  `onecard card provision` after the server certified the key
                                  (cardsvc.provision.finish_card); with only the certificate and
                                  the CHUID, a renewal's write
    POST /v1/card/unblock-pin    {puk, pin} → the holder's PIN reset with the card's PUK

The service never talks to the OneCard server: the staff page carries the server's answers
(certificate, CHUID, PUK, the card's management key) to it. The management key defaults to the
PIV default key (a blank card), in hex like every key here.

Guards, because any web page the desk's browser opens could try to reach it:
- it binds 127.0.0.1 only;
- the Host header must name 127.0.0.1 or localhost (no DNS rebinding);
- a request that carries an Origin must come from a configured origin (the OneCard server);
  CORS answers name only those origins;
- POST bodies must be `application/json` (so a browser always asks first, with a preflight).

Errors come back as `application/problem+json` with a stable `code`. Every card call opens the
card in a PC/SC transaction and closes it again; provisioning steps authenticate each time,
since a card forgets its security status between connections.

Only the standard library's HTTP server: cardsvc must not depend on Flask.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from .errors import (
    ApduError,
    AuthenticationError,
    BadResponseError,
    CardError,
    CardRemovedError,
    CardVerificationError,
    InvalidPinError,
    NoCardError,
    NoReaderError,
    NotFoundError,
    PcscdUnavailableError,
    PinBlockedError,
    TlvError,
)
from .pcsc import PcscConnection, PcscReader, list_readers
from .piv import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    ManagementKeyType,
    ObjectId,
    PivSession,
    Slot,
)
from .profile import Chuid, prove, read_card
from .profile import sign_in as card_sign_in
from .provision import finish_card, generate_keys, spki
from .signin import SignInChallenge
from .verify import TapChallenge, guid_from_certificate

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765
CARD_WAIT = 0.5  # how long a card call waits for a card already on the reader
MAX_BODY = 64 * 1024


class RequestError(Exception):
    """A request the service refuses; becomes a problem document."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(detail)


def _problem_for(exc: CardError) -> RequestError:
    """The HTTP status and stable code for each card error."""
    table: list[tuple[type[CardError], int, str]] = [
        (PcscdUnavailableError, 503, "pcscd_unavailable"),
        (NoReaderError, 503, "no_reader"),
        (NoCardError, 404, "no_card"),
        (CardRemovedError, 409, "card_removed"),
        (InvalidPinError, 403, "wrong_pin"),
        (PinBlockedError, 403, "pin_blocked"),
        (AuthenticationError, 403, "management_key_refused"),
        (CardVerificationError, 422, "verification_failed"),
        (NotFoundError, 422, "card_not_provisioned"),
        (BadResponseError, 422, "card_malformed"),
        (TlvError, 422, "card_malformed"),
        (ApduError, 422, "card_refused"),
    ]
    for kind, status, code in table:
        if isinstance(exc, kind):
            return RequestError(status, code, str(exc))
    return RequestError(500, "card_error", str(exc))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise RequestError(400, "bad_request", f"`{name}` must be a {kind.__name__}")
    return value


def _bytes_field(
    body: dict[str, Any], name: str, *, hex_: bool, optional: bool = False
) -> bytes | None:
    text = _field(body, name, str, optional=optional)
    if text is None:
        return None
    try:
        return bytes.fromhex(text) if hex_ else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise RequestError(
            400, "bad_request", f"`{name}` is not {'hex' if hex_ else 'base64'}"
        ) from exc


def _key_type(body: dict[str, Any], name: str) -> ManagementKeyType:
    text = _field(body, name, str, optional=True) or "TDES"
    try:
        return ManagementKeyType[text.upper()]
    except KeyError as exc:
        raise RequestError(400, "bad_request", f"`{name}` must be TDES or AES128/192/256") from exc


class CardService:
    """The operations, independent of HTTP (the handler below only translates)."""

    def __init__(self, reader_name: str | None = None) -> None:
        self.reader_name = reader_name
        self._reader = PcscReader(reader_name)
        self._lock = threading.Lock()
        self._subscribers: list[queue.Queue[dict[str, Any]]] = []
        self._subscribers_lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.card_present = False

    # --- card access ----------------------------------------------------------------------

    @contextmanager
    def _card(self) -> Iterator[PivSession]:
        with self._lock:
            connection: PcscConnection | None = self._reader.wait_for_card(timeout=CARD_WAIT)
            if connection is None:
                raise NoCardError(self.reader_name)
            with connection:
                yield PivSession(connection)

    def status(self) -> dict[str, Any]:
        return {
            "readers": list_readers(),
            "reader": self._reader.current or self.reader_name,
            "card_present": self.card_present,
        }

    def read(self) -> dict[str, Any]:
        with self._card() as piv:
            card = read_card(piv)
        return {
            "card_guid": card.guid.hex(),
            "expiry": card.expiry.isoformat(),
            "certificate": _b64(card.certificate_der),
        }

    def prove(self, body: dict[str, Any]) -> dict[str, Any]:
        kiosk_id = _field(body, "kiosk_id", str)
        counter = _field(body, "counter", int)
        time_ms = _field(body, "time_ms", int)
        nonce = _bytes_field(body, "nonce", hex_=True)
        with self._card() as piv:
            card = read_card(piv)
            try:
                challenge = TapChallenge(kiosk_id, counter, time_ms, nonce or b"", card.guid)
            except ValueError as exc:
                raise RequestError(400, "bad_request", str(exc)) from exc
            signature = prove(piv, challenge)
        return {"proof": challenge.to_json(signature), "certificate": _b64(card.certificate_der)}

    def sign_in(self, body: dict[str, Any], origin: str | None) -> dict[str, Any]:
        """Staff-card sign-in (cardsvc.signin): the server's challenge, for the origin of the page
        that asks, signed by the card after its PIN is verified. A PIN of the wrong shape never
        reaches the card (it would count a try for a typing slip)."""
        challenge_bytes = _bytes_field(body, "challenge", hex_=False) or b""
        pin = _field(body, "pin", str)
        try:
            challenge = SignInChallenge.parse(challenge_bytes)
        except ValueError as exc:
            raise RequestError(400, "bad_request", str(exc)) from exc
        if origin is None or challenge.origin != origin:
            raise RequestError(403, "origin_mismatch", "the challenge is for another site")
        if not (6 <= len(pin) <= 8 and pin.isdigit()):
            raise RequestError(400, "pin_malformed", "a PIN is 6 to 8 digits")
        with self._card() as piv:
            try:
                # The 9A key: the card itself refuses it before the PIN is verified.
                certificate, signature = card_sign_in(piv, pin, challenge.digest())
            except NotFoundError as exc:
                raise RequestError(
                    422,
                    "no_sign_in_key",
                    "this card has no PIN-bound sign-in key (slot 9A): issue it again",
                ) from exc
        return {"signature": _b64(signature), "certificate": _b64(certificate)}

    def provision_generate(self, body: dict[str, Any]) -> dict[str, Any]:
        key = _bytes_field(body, "management_key", hex_=True, optional=True)
        key_type = _key_type(body, "management_key_type")
        staff = _field(body, "sign_in", bool, optional=True) or False
        with self._card() as piv:
            piv.select()
            piv.authenticate(DEFAULT_MANAGEMENT_KEY if key is None else key, key_type)
            public_key, sign_in_key = generate_keys(piv, sign_in=staff)
        answer = {"public_key": _b64(spki(public_key))}
        if sign_in_key is not None:  # a staff card's PIN-bound 9A key
            answer["sign_in_public_key"] = _b64(spki(sign_in_key))
        return answer

    def provision_write(self, body: dict[str, Any]) -> dict[str, Any]:
        key = _bytes_field(body, "management_key", hex_=True) or b""
        key_type = _key_type(body, "management_key_type")
        certificate_der = _bytes_field(body, "certificate", hex_=False) or b""
        guid = _bytes_field(body, "guid", hex_=True) or b""
        try:
            expiry = date.fromisoformat(_field(body, "expiry", str))
            named = guid_from_certificate(x509.load_der_x509_certificate(certificate_der))
        except ValueError as exc:
            raise RequestError(400, "bad_request", f"bad certificate or expiry: {exc}") from exc
        if named != guid:
            raise RequestError(400, "bad_request", "the certificate names another card GUID")
        signature = _bytes_field(body, "chuid_signature", hex_=False, optional=True) or b""
        new_key = body.get("new_management_key")
        pin = _field(body, "pin", str, optional=True)
        with self._card() as piv:
            piv.select()
            piv.authenticate(key, key_type)
            piv.put_certificate(Slot.CARD_AUTH, certificate_der)
            piv.put_object(
                ObjectId.CHUID, Chuid(guid, expiry, issuer_signature=signature).to_bytes()
            )
            if pin is not None:
                piv.change_pin(DEFAULT_PIN, pin)
            if new_key is not None:
                if not isinstance(new_key, dict):
                    raise RequestError(400, "bad_request", "`new_management_key` must be an object")
                piv.set_management_key(
                    _key_type(new_key, "type"), _bytes_field(new_key, "key", hex_=True) or b""
                )
        return {"status": "written", "card_guid": guid.hex()}

    def identify(self) -> dict[str, Any]:
        with self._card() as piv:
            piv.select()
            try:
                guid: bytes | None = Chuid.parse(piv.get_object(ObjectId.CHUID)).guid
            except NotFoundError:
                guid = None
        return {"card_guid": guid.hex() if guid is not None else None}

    def provision_finish(self, body: dict[str, Any]) -> dict[str, Any]:
        given = _bytes_field(body, "management_key", hex_=True, optional=True)
        key = DEFAULT_MANAGEMENT_KEY if given is None else given
        key_type = _key_type(body, "management_key_type")
        certificate_der = _bytes_field(body, "certificate", hex_=False) or b""
        chuid = _bytes_field(body, "chuid", hex_=False) or b""
        try:
            guid = Chuid.parse(chuid).guid
            named = guid_from_certificate(x509.load_der_x509_certificate(certificate_der))
        except (ValueError, TlvError) as exc:
            raise RequestError(400, "bad_request", f"bad certificate or CHUID: {exc}") from exc
        if named != guid:
            raise RequestError(400, "bad_request", "the certificate names another card GUID")
        sign_in_der = _bytes_field(body, "sign_in_certificate", hex_=False, optional=True)
        if sign_in_der is not None:
            try:
                sign_in_named = guid_from_certificate(x509.load_der_x509_certificate(sign_in_der))
            except ValueError as exc:
                raise RequestError(400, "bad_request", f"bad sign-in certificate: {exc}") from exc
            if sign_in_named != guid:
                raise RequestError(
                    400, "bad_request", "the sign-in certificate names another card GUID"
                )
        puk = _field(body, "puk", str, optional=True)
        pin = _field(body, "pin", str, optional=True)
        if (puk is None) != (pin is None):
            raise RequestError(400, "bad_request", "`puk` and `pin` go together")
        new_key = body.get("new_management_key")
        if new_key is not None and not isinstance(new_key, dict):
            raise RequestError(400, "bad_request", "`new_management_key` must be an object")
        management = (
            None
            if new_key is None
            else (_key_type(new_key, "type"), _bytes_field(new_key, "key", hex_=True) or b"")
        )
        with self._card() as piv:
            piv.select()
            piv.authenticate(key, key_type)
            finish_card(
                piv,
                certificate_der,
                chuid,
                puk=puk,
                pin=pin,
                management_key=management,
                default_management=key == DEFAULT_MANAGEMENT_KEY
                and key_type is ManagementKeyType.TDES,
                sign_in_certificate_der=sign_in_der,
            )
        return {"status": "written", "card_guid": guid.hex()}

    def unblock_pin(self, body: dict[str, Any]) -> dict[str, Any]:
        puk = _field(body, "puk", str)
        pin = _field(body, "pin", str)
        with self._card() as piv:
            piv.select()
            piv.unblock_pin(puk, pin)
        return {"status": "unblocked"}

    # --- events -----------------------------------------------------------------------------

    def subscribe(self) -> queue.Queue[dict[str, Any]]:
        subscriber: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._subscribers_lock:
            self._subscribers.append(subscriber)
        subscriber.put({"type": "inserted" if self.card_present else "removed", "initial": True})
        return subscriber

    def unsubscribe(self, subscriber: queue.Queue[dict[str, Any]]) -> None:
        with self._subscribers_lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def _publish(self, event: dict[str, Any]) -> None:
        logger.info("card event %s", event)
        with self._subscribers_lock:
            for subscriber in self._subscribers:
                subscriber.put(event)

    def start_monitor(self) -> None:
        self._monitor = threading.Thread(target=self._watch, name="card-monitor", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        reader = PcscReader(self.reader_name)
        unavailable = False
        try:
            while not self._stop.is_set():
                try:
                    name = reader.wait_for_presence(timeout=1.0)
                    unavailable = False
                    if name is None:
                        continue
                    self.card_present = True
                    self._publish({"type": "inserted", "reader": name})
                    while not self._stop.is_set() and not reader.wait_for_removal(timeout=1.0):
                        pass
                    self.card_present = False
                    self._publish({"type": "removed", "reader": name})
                except (PcscdUnavailableError, NoReaderError) as exc:
                    self.card_present = False
                    if not unavailable:
                        self._publish({"type": "reader_unavailable", "detail": str(exc)})
                        unavailable = True
                    self._stop.wait(1.0)
        finally:
            reader.close()

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(5)
        self._reader.close()


class _Handler(BaseHTTPRequestHandler):
    server: CardServiceServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        logger.debug("%s " + format, self.address_string(), *args)

    # --- guards -----------------------------------------------------------------------------

    def _origin(self) -> str | None:
        """The request's Origin if it is allowed; raises for a foreign one."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost"):
            raise RequestError(421, "wrong_host", "the card service answers only to 127.0.0.1")
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.allowed_origins:
            raise RequestError(403, "origin_not_allowed", f"origin {origin!r} is not allowed")
        return origin

    def _cors(self, origin: str | None) -> None:
        if origin is not None:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")

    def _send_json(
        self, status: int, body: dict[str, Any], origin: str | None, *, problem: bool = False
    ) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/problem+json" if problem else "application/json"
        )
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self._cors(origin)
        self.end_headers()
        self.wfile.write(payload)

    def _problem(self, error: RequestError, origin: str | None) -> None:
        body = {
            "type": f"/problems/{error.code}",
            "title": HTTPStatus(error.status).phrase
            if error.status in HTTPStatus._value2member_map_
            else "Error",
            "status": error.status,
            "detail": error.detail,
            "code": error.code,
        }
        self._send_json(error.status, body, origin, problem=True)

    def _handle(self, action: Callable[[str | None], None]) -> None:
        origin: str | None = None
        try:
            origin = self._origin()
            action(origin)
        except RequestError as exc:
            self._problem(exc, origin if exc.code != "origin_not_allowed" else None)
        except CardError as exc:
            self._problem(_problem_for(exc), origin)
        except Exception:  # the service must answer, whatever happened
            logger.exception("card service request failed")
            self._problem(RequestError(500, "internal_error", "the card service failed"), origin)

    # --- verbs --------------------------------------------------------------------------------

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        def preflight(origin: str | None) -> None:
            self.send_response(204)
            self._cors(origin)
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
            self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        self._handle(preflight)

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path

        def get(origin: str | None) -> None:
            if path == "/v1/status":
                self._send_json(200, self.server.service.status(), origin)
            elif path == "/v1/events":
                self._events(origin)
            else:
                raise RequestError(404, "not_found", f"no such resource {path}")

        self._handle(get)

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/v1/card/read": lambda body: self.server.service.read(),
            "/v1/card/prove": self.server.service.prove,
            "/v1/card/sign-in": lambda body: self.server.service.sign_in(
                body, self.headers.get("Origin")
            ),
            "/v1/provision/generate": self.server.service.provision_generate,
            "/v1/provision/write": self.server.service.provision_write,
            "/v1/card/identify": lambda body: self.server.service.identify(),
            "/v1/provision/finish": self.server.service.provision_finish,
            "/v1/card/unblock-pin": self.server.service.unblock_pin,
        }

        def post(origin: str | None) -> None:
            route = routes.get(path)
            if route is None:
                raise RequestError(404, "not_found", f"no such resource {path}")
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                raise RequestError(415, "json_required", "send the body as application/json")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise RequestError(413, "body_too_large", "the body is too large")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as exc:
                raise RequestError(400, "invalid_json", f"the body is not JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise RequestError(400, "invalid_json", "the body must be a JSON object")
            self._send_json(200, route(body), origin)

        self._handle(post)

    def _events(self, origin: str | None) -> None:
        service = self.server.service
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self._cors(origin)
        self.end_headers()
        self.close_connection = True
        subscriber = service.subscribe()
        try:
            while not self.server.stopping.is_set():
                try:
                    event = subscriber.get(timeout=15)
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    self.wfile.write(
                        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    )
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            service.unsubscribe(subscriber)


class CardServiceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, service: CardService, allowed_origins: Sequence[str]) -> None:
        self.service = service
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", port), _Handler)

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="onecard cardsvc serve",
        description="The local card service for a desk reader (127.0.0.1 only).",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (0 picks one)"
    )
    parser.add_argument("--reader", default=None, help="PC/SC reader name or prefix (default: any)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="an origin of the OneCard server's staff pages, e.g. https://onecard.example (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    service = CardService(args.reader)
    server = CardServiceServer(args.port, service, args.allow_origin)
    service.start_monitor()
    host, port = server.server_address[:2]
    print(
        f"cardsvc ready: http://{host!s}:{port} (origins: {', '.join(args.allow_origin) or 'none'})",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
