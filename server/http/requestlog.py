"""Structured logs: one JSON object per line on standard output (journald keeps them), and one
line per request carrying its request id.

The request id is the client's `X-Request-Id` when it sends a sane one (the kiosk sends one per
call, kiosk.client), else one made here; it is echoed in the answer's `X-Request-Id` and set on
every log record written while the request runs (`request_id`), so a kiosk's complaint about a
call is found in the server's log by that id. The request line says method, path, status,
duration in ms and the device (`X-Kiosk-Id`) when one signed the request; never a body, a
query string or a token (they may carry personal data).

`configure_logging()` is for processes that serve (gunicorn through server.wsgi, `onecard
server run`); tests and the CLI's one-shot commands keep Python's default logging, and write no
request lines.

What a line costs the kiosk's hot path (docs/server-performance.md measured it): the request
line is formatted here directly, not through a LogRecord (whose making, filtering and generic
formatting cost several times the line itself), and lines are written out in batches: every
0.2 s, or at 256 lines, by whichever thread gets there, in one write and one flush instead of
one per request. A warning or an error is written at once, with the lines before it, in order.
Lines still waiting are written when the process exits (logging.shutdown flushes the handler);
a process killed outright (SIGKILL) loses at most the last 0.2 s of request lines, never a
warning or an error.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from json.encoder import encode_basestring
from typing import Any, TextIO

from flask import Request, Response, g, has_request_context

REQUEST_ID_HEADER = "X-Request-Id"
DEVICE_HEADER = "X-Kiosk-Id"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_LOGGER = "onecard.request"
# LogRecord attributes that are the record's machinery, not fields to report.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

log = logging.getLogger(REQUEST_LOGGER)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...extra fields, "exception"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Sets `request_id` on records written during a request (when the record has none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            request_id = g.get("request_id")
            if request_id is not None:
                record.request_id = request_id
        return True


class BatchedJsonHandler(logging.Handler):
    """JSON lines (JsonFormatter) to a stream, written out in batches (see the module docstring).

    `line()` takes a line already formatted (the request line); `emit()` formats a record. Both
    go through one buffer, so the stream sees lines in the order they were made."""

    FLUSH_SECONDS = 0.2
    MOST_LINES = 256

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(JsonFormatter())
        self._lines: list[str] = []
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self.flusher: threading.Thread | None = None  # this process's, once a line came
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        # The parent writes the lines it buffered; this process starts empty, with its own lock
        # (another thread may have held the parent's at the fork) and, on its first line, its
        # own flusher thread.
        self._lines, self._guard, self.flusher = [], threading.Lock(), None

    def line(self, text: str, urgent: bool = False) -> None:
        with self._guard:
            self._lines.append(text)
            if urgent or len(self._lines) >= self.MOST_LINES:
                self._write_out()
            elif self.flusher is None:
                self._start_flusher()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.line(text, urgent=record.levelno >= logging.WARNING)

    def flush(self) -> None:
        with self._guard:
            self._write_out()

    def close(self) -> None:
        """Write what waits and stop the flusher thread (logging.shutdown at exit, or a handler
        replaced by configure_logging)."""
        self._stopping.set()
        self.flush()
        super().close()

    def _write_out(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:  # a stream that is not UTF-8: escape, never drop
                self.stream.write(text.encode("ascii", "backslashreplace").decode("ascii"))
            self.stream.flush()
        except (OSError, ValueError):  # the stream is gone (closed pipe, closed file): drop
            pass

    def _start_flusher(self) -> None:
        self.flusher = threading.Thread(
            target=self._flush_every, name="onecard-log-flush", daemon=True
        )
        self.flusher.start()

    def _flush_every(self) -> None:
        while not self._stopping.wait(self.FLUSH_SECONDS):
            self.flush()


# The handler configure_logging() installed; request lines go straight to it.
_handler: BatchedJsonHandler | None = None


def configure_logging(stream: Any = None) -> BatchedJsonHandler:
    """JSON lines on standard output for the root logger, at ONECARD_LOG_LEVEL (default INFO)."""
    global _handler
    level = os.environ.get("ONECARD_LOG_LEVEL", "INFO").upper()
    handler = BatchedJsonHandler(stream or sys.stdout)
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(
        handlers=[handler],
        level=level if level in logging.getLevelNamesMapping() else logging.INFO,
        force=True,
    )
    _handler = handler
    return handler


# A made request id: a random prefix per process and a counter, 32 hex digits. Unique without a
# call into the system's random source on every request (the kiosk sends its own id anyway).
_made_ids = itertools.count()
_prefix = secrets.token_hex(8)


def _new_process() -> None:
    global _prefix, _made_ids
    _prefix, _made_ids = secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_new_process)


def request_id(given: str | None) -> str:
    """The client's request id when it is sane, else a new one (see the module docstring)."""
    if given and SANE_REQUEST_ID.match(given):
        return given
    return f"{_prefix}{next(_made_ids) & 0xFFFFFFFFFFFFFFFF:016x}"


def answered(req: Request, response: Response, request_id: str, seconds: float) -> None:
    """Echo the request id and write the request's line (server.http.serving calls this)."""
    response.headers[REQUEST_ID_HEADER] = request_id
    handler = _handler
    if handler is None or not log.isEnabledFor(logging.INFO):
        return
    method, path, status = req.method, req.path, response.status_code
    device = req.headers.get(DEVICE_HEADER)
    device_field = (
        f', "device": {encode_basestring(device)}'
        if device and SANE_REQUEST_ID.match(device)
        else ""
    )
    # The same keys, in the same order, as JsonFormatter writes for a record with these fields.
    handler.line(
        f'{{"time": "{_utc_millis(time.time())}", "level": "INFO", "logger": "{REQUEST_LOGGER}", '
        f'"message": {encode_basestring(f"{method} {path} {status}")}, '
        f'"request_id": {encode_basestring(request_id)}, "method": {encode_basestring(method)}, '
        f'"path": {encode_basestring(path)}, "status": {status}, '
        f'"ms": {round(seconds * 1000, 1)!r}{device_field}}}'
    )


_second: tuple[int, str] = (0, "")


def _utc_millis(now: float) -> str:
    """`now` as JsonFormatter writes a time (ISO 8601, UTC, milliseconds); the date and time of
    day are formatted once a second, not on every line."""
    global _second
    whole = int(now)
    second, text = _second
    if whole != second:
        text = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}+00:00"
