"""Structured logs: one JSON object per line on standard output (journald keeps them), and one
line per request carrying its request id.

The request id is the client's `X-Request-Id` when it sends a sane one (the kiosk sends one per
call, kiosk.client), else one made here; it is echoed in the answer's `X-Request-Id` and set on
every log record written while the request runs (`request_id`), so a kiosk's complaint about a
call is found in the server's log by that id. The request line says method, path, status,
duration in ms and the device (`X-Kiosk-Id`) when one signed the request; never a body, a
query string or a token (they may carry personal data).

`configure_logging()` is for processes that serve (gunicorn through server.wsgi, `onecard
server run`); tests and the CLI's one-shot commands keep Python's default logging.
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
from typing import Any

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


def configure_logging(stream: Any = None) -> None:
    """JSON lines on standard output for the root logger, at ONECARD_LOG_LEVEL (default INFO)."""
    level = os.environ.get("ONECARD_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(
        handlers=[handler],
        level=level if level in logging.getLevelNamesMapping() else logging.INFO,
        force=True,
    )


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
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "method": req.method,
        "path": req.path,
        "status": response.status_code,
        "ms": round(seconds * 1000, 1),
    }
    device = req.headers.get(DEVICE_HEADER)
    if device and SANE_REQUEST_ID.match(device):
        fields["device"] = device
    # makeRecord + handle is what log.info does, less the walk up the stack for the caller's
    # file and line, which a request line does not need.
    log.handle(
        log.makeRecord(
            REQUEST_LOGGER,
            logging.INFO,
            __name__,
            0,
            "%s %s %d",
            (req.method, req.path, response.status_code),
            None,
            extra=fields,
        )
    )
