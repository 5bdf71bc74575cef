"""HTTPS end to end (issue 13, part 2): Debian's nginx with the repository's
deploy/nginx/onecard.conf, a test CA and server certificate, in front of gunicorn (and of the
test server on a real port); the kiosk's own client authorizes and captures through it, its
request ids in gunicorn's JSON log, verifying the proxy against
the configured CA; given another CA it refuses to talk; /metrics is not exposed; HSTS is sent;
bodies over 64 KiB are refused at the proxy; plain HTTP redirects to HTTPS; the request id
passes through."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import kiosk.client
from kiosk.client import ServerClient
from kiosk.errors import ServerTrustError, ServerUnavailableError
from tests.fixtures.database import ServerWorld
from tests.fixtures.serving import running_gunicorn
from tests.fixtures.tls import Proxy, ProxyCA, running_nginx

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def proxy(live_server: str, tmp_path: Path) -> Iterator[tuple[Proxy, ProxyCA]]:
    """nginx in front of the test server (werkzeug, in this process)."""
    pki = ProxyCA(tmp_path / "pki")
    upstream_port = int(urlsplit(live_server).port or 0)
    with running_nginx(tmp_path / "nginx", upstream_port, pki) as running:
        yield running, pki


@pytest.fixture
def gunicorn_proxy(
    server_world: ServerWorld, tmp_path: Path
) -> Iterator[tuple[Proxy, ProxyCA, Path]]:
    """nginx in front of gunicorn serving the same server as `server_world` (its database and
    keys), as in production; and gunicorn's log (JSON lines on its standard output)."""
    pki = ProxyCA(tmp_path / "pki")
    log = tmp_path / "gunicorn.log"
    environment = server_world.environment(tmp_path / "card-ca.pem")
    with running_gunicorn(environment, log) as upstream:
        port = int(urlsplit(upstream).port or 0)
        with running_nginx(tmp_path / "nginx", port, pki) as running:
            yield running, pki, log


def _count_authorizations(w: ServerWorld) -> int:
    from sqlalchemy import text

    with w.sessionmaker() as session:
        return int(session.scalar(text("SELECT count(*) FROM authorizations")) or 0)


def test_a_kiosk_authorizes_through_the_tls_proxy_in_front_of_gunicorn(
    server_world: ServerWorld,
    gunicorn_proxy: tuple[Proxy, ProxyCA, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, pki, gunicorn_log = gunicorn_proxy
    w = server_world
    w.clock.follow_real_time()  # the kiosk's client signs with the real clock
    sent: list[str] = []
    make_id = kiosk.client.new_request_id
    monkeypatch.setattr(kiosk.client, "new_request_id", lambda: sent.append(make_id()) or sent[-1])
    with ServerClient(running.url, w.kiosk.id, w.kiosk.key, server_ca=pki.ca_path) as client:
        answer = client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
        assert answer.approved and answer.authorization_id
        captured = client.capture(answer.authorization_id, 7, secrets.token_hex(8))
        assert captured["status"] == "captured"
    assert _count_authorizations(w) == 1
    # gunicorn's standard output is the JSON log; each kiosk call is there with its request id.
    # Request lines are written in batches (server.http.requestlog: at most 0.2 s later).
    logged: dict[str, dict] = {}  # type: ignore[type-arg]
    deadline = time.monotonic() + 10
    while not all(i in logged for i in sent) and time.monotonic() < deadline:
        time.sleep(0.05)
        for line in gunicorn_log.read_text().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                logged[doc.get("request_id")] = doc
    assert [logged[i]["path"] for i in sent] == [
        "/api/v1/authorizations",
        f"/api/v1/authorizations/{answer.authorization_id}/capture",
    ]
    assert all(logged[i]["status"] == 200 and logged[i]["device"] == w.kiosk.id for i in sent)
    # The proxy saw the kiosk's calls: nginx writes its access log line after the answer has
    # gone out, so the line may come a moment after the client has it.
    patterns = [
        r'"POST /api/v1/authorizations HTTP/1\.1" 200 ',
        r'"POST /api/v1/authorizations/[^/ ]+/capture HTTP/1\.1" 200 ',
    ]
    deadline = time.monotonic() + 10
    while not all(re.search(p, running.access_log.read_text()) for p in patterns):
        assert time.monotonic() < deadline, running.access_log.read_text()
        time.sleep(0.05)


def test_a_kiosk_given_another_ca_refuses_to_talk(
    server_world: ServerWorld, proxy: tuple[Proxy, ProxyCA], tmp_path: Path
) -> None:
    running, _ = proxy
    w = server_world
    w.clock.follow_real_time()
    other = ProxyCA(tmp_path / "other-pki", name="Someone Else's CA")
    with (
        ServerClient(running.url, w.kiosk.id, w.kiosk.key, server_ca=other.ca_path) as client,
        pytest.raises(ServerTrustError) as refused,
    ):
        client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
    message = str(refused.value)
    assert f"refusing to talk to {running.url}" in message
    assert str(other.ca_path) in message and "certificate verify failed" in message
    # A trust failure is the unreachable-server kind (the kiosk never trusts an impostor) ...
    assert isinstance(refused.value, ServerUnavailableError)
    # ... and nothing reached the server: no authorization, no request past the handshake.
    assert _count_authorizations(w) == 0
    assert "/api/v1/authorizations" not in running.access_log.read_text()


def test_the_proxy_hides_metrics_limits_bodies_and_sends_hsts(
    proxy: tuple[Proxy, ProxyCA], live_server: str
) -> None:
    running, pki = proxy
    ca = str(pki.ca_path)  # per call: a Session's verify loses to REQUESTS_CA_BUNDLE
    with requests.Session() as http:
        health = http.get(
            running.url + "/api/v1/health",
            headers={"X-Request-Id": "kiosk-call-1"},
            verify=ca,
            timeout=10,
        )
        assert health.status_code == 200
        assert health.headers["X-Request-Id"] == "kiosk-call-1"  # passed on, echoed back
        unnamed = http.get(running.url + "/api/v1/health", verify=ca, timeout=10)
        assert re.fullmatch(r"[0-9a-f]{32}", unnamed.headers["X-Request-Id"])  # nginx's own
        assert health.headers["Strict-Transport-Security"].startswith("max-age=63072000")
        assert requests.get(live_server + "/metrics", timeout=10).status_code == 200
        hidden = http.get(running.url + "/metrics", verify=ca, timeout=10)
        assert hidden.status_code == 404
        assert "onecard_" not in hidden.text
        too_big = http.post(
            running.url + "/api/v1/authorizations",
            data=b"x" * (64 * 1024 + 1),
            headers={"Content-Type": "application/json"},
            verify=ca,
            timeout=10,
        )
        assert too_big.status_code == 413
        redirect = http.get(running.http_url + "/api/v1/health", allow_redirects=False, timeout=10)
        assert redirect.status_code == 301
        assert redirect.headers["Location"].startswith("https://")


def test_a_pinned_certificate_is_required_on_top_of_the_ca(
    server_world: ServerWorld, proxy: tuple[Proxy, ProxyCA]
) -> None:
    running, pki = proxy
    w = server_world
    w.clock.follow_real_time()
    certificate = x509.load_pem_x509_certificate(pki.cert_path.read_bytes())
    pin = certificate.fingerprint(hashes.SHA256()).hex(":")
    with ServerClient(
        running.url, w.kiosk.id, w.kiosk.key, server_ca=pki.ca_path, server_pin=pin
    ) as client:
        assert client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8)).approved
    other_pin = hashlib.sha256(b"another certificate").hexdigest()
    with (
        ServerClient(
            running.url, w.kiosk.id, w.kiosk.key, server_ca=pki.ca_path, server_pin=other_pin
        ) as client,
        pytest.raises(ServerTrustError, match="(?i)fingerprints did not match"),
    ):
        client.authorize(w.kiosk.tap(w.card, w.clock), 1, secrets.token_hex(8))
    assert _count_authorizations(w) == 1  # the refused call never reached the server
