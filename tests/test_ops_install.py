"""The server install of docs/operations.md, rehearsed on this machine: secrets made with
`onecard server keygen-secrets`, the configuration taken from deploy/systemd/server.env.example
(paths moved under the test's directory, the database a fresh PostgreSQL one), production mode,
`init-db`, a technician and a kiosk registered with the CLI, gunicorn (server.wsgi) behind nginx
with the repository's site and a test CA; a card is recorded and the kiosk's own client
authorizes and captures through HTTPS. The data directory stays empty: every secret came from
the files keygen-secrets made, none was generated."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from kiosk.client import ServerClient
from server.cli import main as server_cli
from tests.fixtures.database import CityCA, FakeClock, TestCard, TestKiosk
from tests.fixtures.serving import running_gunicorn
from tests.fixtures.tls import ProxyCA, running_nginx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "systemd" / "server.env.example"

pytestmark = pytest.mark.postgres


def _environment_from_example(etc: Path, state: Path, database_url: str) -> dict[str, str]:
    """server.env.example's settings, as systemd's EnvironmentFile reads them, moved here."""
    settings = {}
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            settings[name] = value.replace("/etc/onecard", str(etc)).replace(
                "/var/lib/onecard", str(state)
            )
    assert settings["ONECARD_PRODUCTION"] == "1"
    settings["ONECARD_DATABASE_URL"] = database_url
    return settings


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """`onecard server ARGS` with only the given settings; its standard output (exit 0 asserted)."""

    def run(settings: dict[str, str], *args: str) -> str:
        for name in [n for n in os.environ if n.startswith("ONECARD_")]:
            monkeypatch.delenv(name)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        status = server_cli(list(args))
        out, err = capsys.readouterr()
        assert status == 0, err
        return out

    return run


def test_a_production_server_installed_as_documented(
    empty_postgres_url: str, tmp_path: Path, cli: Callable[..., str]
) -> None:
    etc, state = tmp_path / "etc-onecard", tmp_path / "var-lib-onecard"
    state.mkdir()
    settings = _environment_from_example(etc, state, empty_postgres_url)

    # Secrets, once; the card CA where ONECARD_CARD_CA_DIR / _CERT say.
    printed = cli({}, "keygen-secrets", "--dir", str(etc / "keys"))
    assert {line.split("=", 1)[1] for line in printed.split()} == {
        settings["ONECARD_FIELD_KEY_FILE"],
        settings["ONECARD_SERVER_KEY_FILE"],
        settings["ONECARD_CARD_MASTER_KEY_FILE"],
    }
    city = CityCA()
    ca_dir = Path(settings["ONECARD_CARD_CA_DIR"])
    ca_dir.mkdir(parents=True)
    (ca_dir / "ca-key.pem").write_bytes(
        city.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (ca_dir / "ca-cert.pem").write_bytes(city.certificate.public_bytes(serialization.Encoding.PEM))
    assert settings["ONECARD_CARD_CA_CERT"] == str(ca_dir / "ca-cert.pem")

    # Schema, the city, a technician, a kiosk: the CLI, in production mode.
    cli(settings, "init-db")
    seed = json.loads(cli(settings, "seed-demo"))
    token = cli(settings, "create-user", "--role", "technician", "--name", "tech").strip()
    kiosk = TestKiosk("K-0001")
    cli(
        settings,
        "add-kiosk",
        "--id",
        kiosk.id,
        "--public-key",
        kiosk.public_key_b64,
        "--slot",
        f"1={seed['product_sku']}",
    )
    health = json.loads(cli(settings, "health"))
    assert health == {"database": {"status": "ok"}, "schema": {"status": "ok"}}

    pki = ProxyCA(etc / "tls")
    with running_gunicorn(settings, tmp_path / "gunicorn.log") as upstream:
        port = int(urlsplit(upstream).port or 0)
        with running_nginx(tmp_path / "nginx", port, pki) as proxy:
            card = TestCard(city)
            recorded = requests.post(
                proxy.url + "/api/v1/cards",
                json={
                    "resident_id": seed["resident_id"],
                    "certificate": base64.b64encode(card.certificate_der).decode(),
                },
                headers={"Authorization": f"Bearer {token}"},
                verify=str(pki.ca_path),
                timeout=10,
            )
            assert recorded.status_code == 201, recorded.text
            clock = FakeClock(None)  # the real time, as gunicorn's
            with ServerClient(proxy.url, kiosk.id, kiosk.key, server_ca=pki.ca_path) as client:
                answer = client.authorize(kiosk.tap(card, clock), 1, secrets.token_hex(8))
                assert answer.approved and answer.authorization_id, answer
                settled = client.capture(answer.authorization_id, 1, secrets.token_hex(8))
                assert settled["status"] == "captured"
    assert list(state.iterdir()) == []  # no development key file was made
