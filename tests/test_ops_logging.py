"""Logs (issue 13, part 4): the server writes one JSON line per request carrying the request id
the kiosk sent (`X-Request-Id`), makes one when none or a malformed one comes, and echoes it;
records written during a request carry it too; the kiosk's own log lines have time and level."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kiosk.client
from kiosk.client import ServerClient
from server.http import requestlog
from server.http.requestlog import REQUEST_LOGGER, configure_logging
from tests.fixtures.database import ServerWorld

ROOT = Path(__file__).resolve().parent.parent

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class JsonLog:
    """What the server's loggers write, as production configures them (server.http.requestlog:
    JSON lines, request lines written straight to the handler, in batches)."""

    def __init__(self, buffer: io.StringIO, handler: requestlog.BatchedJsonHandler) -> None:
        self.buffer, self.handler = buffer, handler

    def lines(self, logger: str = REQUEST_LOGGER) -> list[dict]:  # type: ignore[type-arg]
        """The lines `logger` wrote (the live server's werkzeug writes its own too)."""
        self.handler.flush()  # what a batch still holds
        docs = [json.loads(line) for line in self.buffer.getvalue().splitlines()]
        return [doc for doc in docs if doc["logger"] == logger]


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonLog]:
    root = logging.getLogger()
    level = root.level
    # configure_logging replaces the root's handlers; the test gets them back afterwards.
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(requestlog, "_handler", None)
    monkeypatch.setenv("ONECARD_LOG_LEVEL", "INFO")
    buffer = io.StringIO()
    log = JsonLog(buffer, configure_logging(buffer))
    try:
        yield log
    finally:
        root.removeHandler(log.handler)
        log.handler.close()
        root.setLevel(level)


@SQLITE
def test_the_kiosks_request_id_is_in_the_servers_log(
    server_world: ServerWorld,
    live_server: str,
    json_log: JsonLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = server_world
    w.clock.follow_real_time()
    sent: list[str] = []
    make_id = kiosk.client.new_request_id

    def recorded() -> str:
        sent.append(make_id())
        return sent[-1]

    monkeypatch.setattr(kiosk.client, "new_request_id", recorded)
    with ServerClient(live_server, w.kiosk.id, w.kiosk.key) as client:
        answer = client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
        assert answer.authorization_id is not None
        client.capture(answer.authorization_id, 3, secrets.token_hex(8))
    assert len(sent) == 2 and len(set(sent)) == 2
    logged = {line["request_id"]: line for line in json_log.lines()}
    authorize, capture = logged[sent[0]], logged[sent[1]]
    assert (authorize["method"], authorize["path"], authorize["status"]) == (
        "POST",
        "/api/v1/authorizations",
        200,
    )
    assert capture["path"] == f"/api/v1/authorizations/{answer.authorization_id}/capture"
    assert capture["device"] == w.kiosk.id
    for line in (authorize, capture):
        assert line["level"] == "INFO" and line["logger"] == REQUEST_LOGGER
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", line["time"])
        assert isinstance(line["ms"], float)


@SQLITE
def test_a_request_without_a_usable_id_gets_one(
    server_world: ServerWorld, json_log: JsonLog
) -> None:
    w = server_world
    plain = w.client.get("/api/v1/health")
    made = plain.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    kept = w.client.get("/api/v1/health", headers={"X-Request-Id": "kiosk-abc.123"})
    assert kept.headers["X-Request-Id"] == "kiosk-abc.123"
    for bad in ("two words", "x" * 65, "semi;colon"):
        replaced = w.client.get("/api/v1/health", headers={"X-Request-Id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-Id"])
    ids = [line["request_id"] for line in json_log.lines()]
    assert ids[:2] == [made, "kiosk-abc.123"] and len(ids) == 5
    assert not any(bad in ids for bad in ("two words", "semi;colon"))


@SQLITE
def test_records_written_during_a_request_carry_its_id(
    server_world: ServerWorld, json_log: JsonLog
) -> None:
    from flask import g

    app = server_world.app
    with app.test_request_context("/api/v1/health"):
        g.request_id = "req-42"
        logging.getLogger("server.test").warning("something to see", extra={"kiosk": "K-9"})
    (line,) = json_log.lines("server.test")
    assert line["request_id"] == "req-42" and line["kiosk"] == "K-9"
    assert line["message"] == "something to see" and line["level"] == "WARNING"


def _python(script: str) -> subprocess.CompletedProcess[str]:
    """`script` in a Python of its own, from the project's root, logging at INFO."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ONECARD_LOG_LEVEL": "INFO"},
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_kiosks_log_lines_have_time_and_level() -> None:
    script = (
        "import logging; from kiosk.app import configure_logging; configure_logging(); "
        "logging.getLogger('kiosk.tap').info('served'); logging.getLogger('kiosk.x').debug('no')"
    )
    result = _python(script)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO kiosk\.tap: served\n", result.stdout
    )


@SQLITE
def test_the_request_line_is_what_the_formatter_writes_for_the_same_fields(
    server_world: ServerWorld, json_log: JsonLog
) -> None:
    """The request line skips the LogRecord (speed); it must still read like every other line."""
    w = server_world
    w.client.get("/api/v1/health/ä?x=1", headers={"X-Request-Id": "r-1", "X-Kiosk-Id": "K-7"})
    (direct,) = json_log.lines()
    record = logging.makeLogRecord(
        {
            "name": REQUEST_LOGGER,
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "%s %s %d",
            "args": ("GET", "/api/v1/health/ä", 404),
            "created": 0.0,
            **{k: direct[k] for k in ("request_id", "method", "path", "status", "ms", "device")},
        }
    )
    formatted = json.loads(requestlog.JsonFormatter().format(record))
    assert list(direct) == list(formatted)
    assert {**direct, "time": None} == {**formatted, "time": None}
    assert direct["path"] == "/api/v1/health/ä" and direct["status"] == 404
    assert "x=1" not in json.dumps(direct)  # never the query string


def test_lines_are_written_in_batches_and_a_warning_at_once() -> None:
    stream = io.StringIO()
    handler = requestlog.BatchedJsonHandler(stream)
    handler.FLUSH_SECONDS = 60.0  # no timed flush during this test: only the rules below
    handler.line('{"n": 1}')
    handler.line('{"n": 2}')
    assert stream.getvalue() == ""
    record = logging.makeLogRecord(
        {"name": "server.x", "levelno": logging.WARNING, "levelname": "WARNING", "msg": "w"}
    )
    handler.handle(record)
    written = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d.get("n", d.get("message")) for d in written] == [1, 2, "w"]
    for n in range(handler.MOST_LINES):
        handler.line(f'{{"n": {n}}}')
    assert len(stream.getvalue().splitlines()) == 3 + handler.MOST_LINES


def test_waiting_lines_are_written_when_the_process_exits_and_by_the_timer() -> None:
    script = (
        "import sys, time; from server.http.requestlog import configure_logging; "
        "h = configure_logging(); h.line('{\"n\": 1}'); time.sleep(1.0); "
        "print('--', flush=True); h.line('{\"n\": 2}')"
    )
    result = _python(script)
    # The first line was written by the timer before the marker; the second at exit.
    assert result.stdout.splitlines() == ['{"n": 1}', "--", '{"n": 2}']


def test_a_stream_that_is_not_utf8_gets_escaped_lines_not_none() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    handler = requestlog.BatchedJsonHandler(stream)
    handler.line('{"path": "/ä"}', urgent=True)
    assert raw.getvalue() == b'{"path": "/\\xe4"}\n'


def test_a_closed_handler_writes_what_waits_and_its_flusher_stops() -> None:
    stream = io.StringIO()
    handler = requestlog.BatchedJsonHandler(stream)
    handler.line('{"n": 1}')
    flusher = handler.flusher
    assert flusher is not None and flusher.is_alive()
    handler.close()
    assert stream.getvalue() == '{"n": 1}\n'
    flusher.join(timeout=10 * handler.FLUSH_SECONDS)
    assert not flusher.is_alive()
