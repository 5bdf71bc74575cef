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
from server.http.requestlog import REQUEST_LOGGER, JsonFormatter, RequestIdFilter
from tests.fixtures.database import ServerWorld

ROOT = Path(__file__).resolve().parent.parent

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the server's loggers write, formatted as in production (JSON lines)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    loggers = [logging.getLogger(REQUEST_LOGGER), logging.getLogger("server.test")]
    saved = [(lg, lg.level) for lg in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


def _lines(buffer: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@SQLITE
def test_the_kiosks_request_id_is_in_the_servers_log(
    server_world: ServerWorld,
    live_server: str,
    json_log: io.StringIO,
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
    logged = {line["request_id"]: line for line in _lines(json_log)}
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
    server_world: ServerWorld, json_log: io.StringIO
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
    ids = [line["request_id"] for line in _lines(json_log)]
    assert ids[:2] == [made, "kiosk-abc.123"] and len(ids) == 5
    assert not any(bad in ids for bad in ("two words", "semi;colon"))


@SQLITE
def test_records_written_during_a_request_carry_its_id(
    server_world: ServerWorld, json_log: io.StringIO
) -> None:
    from flask import g

    app = server_world.app
    with app.test_request_context("/api/v1/health"):
        g.request_id = "req-42"
        logging.getLogger("server.test").warning("something to see", extra={"kiosk": "K-9"})
    (line,) = _lines(json_log)
    assert line["request_id"] == "req-42" and line["kiosk"] == "K-9"
    assert line["message"] == "something to see" and line["level"] == "WARNING"


def test_the_kiosks_log_lines_have_time_and_level() -> None:
    script = (
        "import logging; from kiosk.app import configure_logging; configure_logging(); "
        "logging.getLogger('kiosk.tap').info('served'); logging.getLogger('kiosk.x').debug('no')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ONECARD_LOG_LEVEL": "INFO"},
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO kiosk\.tap: served\n", result.stdout
    )
