"""Data safety: killing the server (SIGKILL) in the middle of a load loses no authorization it
had answered, and a restarted server settles them. Real processes, real HTTP, both databases."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select, update

from server.store.models import Authorization, AuthorizationStatus, EntitlementRule
from tests.fixtures.database import ServerWorld, TestKiosk

SERVE = """
import sys
from werkzeug.serving import WSGIRequestHandler, make_server
from server.app import create_app
class Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass
make_server("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True, request_handler=Quiet).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    database_url: str, tmp_path: Path, world: ServerWorld
) -> tuple[subprocess.Popen[bytes], str]:
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(world.ca.certificate.public_bytes(Encoding.PEM))
    port = _free_port()
    env = {
        **os.environ,
        "ONECARD_DATABASE_URL": database_url,
        "ONECARD_DATA_DIR": str(tmp_path / "server-data"),
        "ONECARD_FIELD_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        "ONECARD_CARD_CA_CERT": str(ca_path),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/api/v1/health", timeout=1).status_code == 200:
                return process, base
        except requests.RequestException:
            if process.poll() is not None:
                raise AssertionError(
                    process.stderr.read().decode() if process.stderr else "server exited"
                ) from None
            time.sleep(0.05)
    process.kill()
    _stop(process)
    raise AssertionError("the server did not start")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.wait(10)
    if process.stderr is not None:
        process.stderr.close()


def _post(
    base: str, world: ServerWorld, kiosk: TestKiosk, path: str, body: dict, key: str
) -> requests.Response:  # type: ignore[type-arg]
    raw = json.dumps(body).encode()
    headers = kiosk.headers("POST", path, raw, world.clock, idempotency_key=key)
    return requests.post(base + path, data=raw, headers=headers, timeout=10)


@pytest.mark.slow
def test_a_killed_server_loses_no_answered_authorization(
    server_world: ServerWorld, database_url: str, tmp_path: Path
) -> None:
    w = server_world
    w.clock.follow_real_time()
    with w.sessionmaker() as session:
        session.execute(update(EntitlementRule).values(units=1_000_000, per_visit_cap=None))
        session.commit()
    kiosks = [w.add_kiosk(f"K-{i:04d}") for i in range(200, 208)]
    server, base = _start(database_url, tmp_path, w)
    answered: list[tuple[TestKiosk, str, dict, str]] = []  # type: ignore[type-arg]  # kiosk, key, body, id
    lock = threading.Lock()
    stop = threading.Event()

    def load(kiosk: TestKiosk) -> None:
        while not stop.is_set():
            key = secrets.token_hex(8)
            body = {"proof": kiosk.tap(w.card, w.clock), "slot": 1}
            try:
                response = _post(base, w, kiosk, "/api/v1/authorizations", body, key)
            except requests.RequestException:
                return  # the server is gone
            if response.status_code == 200 and response.json().get("approved"):
                with lock:
                    answered.append((kiosk, key, body, response.json()["authorization_id"]))

    threads = [threading.Thread(target=load, args=(k,)) for k in kiosks]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
    _stop(server)
    stop.set()
    for t in threads:
        t.join(15)
    assert len(answered) >= 40

    with w.sessionmaker() as session:
        stored = dict(session.execute(select(Authorization.id, Authorization.status)).all())
    missing = [a for *_rest, a in answered if a not in stored]
    assert missing == [], f"{len(missing)} answered authorizations lost"
    assert all(stored[a] is AuthorizationStatus.RESERVED for *_rest, a in answered)

    # A restarted server gives a kiosk's retry its first answer, and settles every reservation.
    server, base = _start(database_url, tmp_path, w)
    try:
        kiosk, key, body, authorization_id = answered[0]
        retry = _post(base, w, kiosk, "/api/v1/authorizations", body, key)
        assert retry.status_code == 200 and retry.json()["authorization_id"] == authorization_id
        for kiosk, _key, _body, authorization_id in answered:
            path = f"/api/v1/authorizations/{authorization_id}/capture"
            assert (
                _post(base, w, kiosk, path, {"board_txn": 1}, secrets.token_hex(8)).status_code
                == 200
            )
    finally:
        server.kill()
        _stop(server)
