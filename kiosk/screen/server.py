"""The screen's local web server: the page, its state stream, and the person's actions.

Standard library only (http.server on a thread per request), bound to 127.0.0.1: the page is
for the kiosk's own Chromium and never for the network. It never talks to the central server
and holds no secret.

    GET  /                 the page (static/index.html)
    GET  /static/<file>    its script, style and pictograms (no CDN: everything is here)
    GET  /pictograms/<category>.svg   a category's pictogram (generic.svg when there is none)
    GET  /events           server-sent events: one `screen` event per change of the session,
                           and once a second while a timeout runs (the page shows the time left)
    GET  /state            the current document once (tests, the benchmark, debugging)
    POST /action           {"action": "choose", "slot": 2} | "cancel" | "extend" | "language"
                           | "speech" | "pin" | maintenance actions: 202, or 409 when the
                           current screen takes no action

Every answer carries a strict Content-Security-Policy (no inline script, nothing from
elsewhere) and `Cache-Control: no-store`. POST bodies must be JSON of at most 4 KiB.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from kiosk.screen.render import render
from kiosk.screen.words import Words
from kiosk.session import ScreenSession, Snapshot

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
MAX_BODY = 4096
TICK_S = 1.0
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class ScreenServer:
    """Serves one session's screen on 127.0.0.1:`port` (0: any free port) from a thread."""

    def __init__(self, session: ScreenSession, words: Words, port: int = 0) -> None:
        self.session = session
        self.words = words
        handler = _handler_for(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="kiosk-screen", daemon=True
        )
        self.closing = threading.Event()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def document(self, snapshot: Snapshot | None = None) -> dict[str, Any]:
        return render(snapshot or self.session.snapshot(), self.words)

    def start(self) -> ScreenServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> ScreenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _handler_for(screen: ScreenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "OneCardKioskScreen/1"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            log.debug("screen: " + format, *args)

        def _headers(self, status: int, content_type: str, length: int | None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self._headers(status, content_type, len(body))
            self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._send(status, json.dumps(doc, ensure_ascii=False).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._file(STATIC_DIR / "index.html")
            elif path == "/events":
                self._events()
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")  # none: said so, not a 404
            elif path == "/state":
                self._json(200, screen.document())
            elif path.startswith("/static/"):
                self._file(STATIC_DIR / path.removeprefix("/static/"))
            elif path.startswith("/pictograms/"):
                name = path.removeprefix("/pictograms/")
                picture = STATIC_DIR / "pictograms" / name
                self._file(
                    picture if _inside(picture) else STATIC_DIR / "pictograms" / "generic.svg",
                    fallback=STATIC_DIR / "pictograms" / "generic.svg",
                )
            else:
                self._send(404, b"not found", "text/plain; charset=utf-8")

        def _file(self, path: Path, fallback: Path | None = None) -> None:
            if not _inside(path) or not path.is_file():
                if fallback is None:
                    self._send(404, b"not found", "text/plain; charset=utf-8")
                    return
                path = fallback
            self._send(200, path.read_bytes(), TYPES.get(path.suffix, "application/octet-stream"))

        def _events(self) -> None:
            self._headers(200, "text/event-stream; charset=utf-8", None)
            session = screen.session
            seq = -1
            try:
                while not screen.closing.is_set():
                    snapshot = session.wait_for_change(seq, TICK_S)
                    if snapshot.seq == seq and snapshot.seconds_left is None:
                        self.wfile.write(b": keep-alive\n\n")
                    else:
                        data = json.dumps(screen.document(snapshot), ensure_ascii=False)
                        self.wfile.write(f"event: screen\ndata: {data}\n\n".encode())
                    self.wfile.flush()
                    seq = snapshot.seq
            except (BrokenPipeError, ConnectionResetError):
                return
            self.close_connection = True

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/action":
                self._send(404, b"not found", "text/plain; charset=utf-8")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY or not self.headers.get("Content-Type", "").startswith(
                "application/json"
            ):
                self._json(400, {"error": "a JSON body of at most 4 KiB"})
                return
            try:
                action = json.loads(self.rfile.read(length))
            except ValueError:
                self._json(400, {"error": "not JSON"})
                return
            if not isinstance(action, dict) or not isinstance(action.get("action"), str):
                self._json(400, {"error": "an object with an action"})
                return
            taken = screen.session.post(action)
            self._json(202 if taken else HTTPStatus.CONFLICT, {"taken": taken})

    return Handler


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(STATIC_DIR)
    except ValueError:
        return False
    return True
