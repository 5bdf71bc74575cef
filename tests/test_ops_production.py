"""Production mode and the server's operator-facing errors (issue 13, part 1).

Production mode (PostgreSQL, or ONECARD_PRODUCTION=1) never invents a secret: the server
refuses to start without the field key, the signing key, the card master secret and the card CA
certificate, naming the missing one, and no key file appears. The CLI answers a malformed
value, an unreadable CA file and an unreachable PostgreSQL with one line and an exit status;
`/api/v1/health` names the part that is down."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from server.app import create_app
from server.cli import main
from server.config import ConfigError, ServerConfig
from server.store.db import db
from tests.fixtures.database import CityCA, ServerWorld

UNREACHABLE_PG = "postgresql://onecard@127.0.0.1:1/onecard"  # nothing listens on port 1


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def production(tmp_path: Path) -> dict[str, str]:
    """A complete production configuration (PostgreSQL URL, never connected to here)."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CityCA().certificate.public_bytes(Encoding.PEM))
    master = tmp_path / "card-master.key"
    master.write_text(_key() + "\n")
    return {
        "ONECARD_DATABASE_URL": UNREACHABLE_PG,
        "ONECARD_PRODUCTION": "",  # unset: PostgreSQL means production
        "ONECARD_DATA_DIR": str(tmp_path / "data"),
        "ONECARD_FIELD_KEY": _key(),
        "ONECARD_SERVER_KEY": _key(),
        "ONECARD_CARD_MASTER_KEY_FILE": str(master),
        "ONECARD_CARD_CA_CERT": str(ca),
    }


def test_a_complete_production_configuration_loads(
    production: dict[str, str], tmp_path: Path
) -> None:
    config = ServerConfig.load(production)
    assert config.production
    assert config.field_key == base64.b64decode(production["ONECARD_FIELD_KEY"])
    app = create_app(production)  # the card master secret comes from its _FILE
    db.dispose(app)
    data = tmp_path / "data"
    assert not data.exists() or list(data.iterdir()) == []  # no development key file


@pytest.mark.parametrize(
    "missing",
    ["ONECARD_FIELD_KEY", "ONECARD_SERVER_KEY", "ONECARD_CARD_MASTER_KEY", "ONECARD_CARD_CA_CERT"],
)
def test_production_refuses_to_start_without_each_secret(
    production: dict[str, str], missing: str, tmp_path: Path
) -> None:
    settings = {**production, missing: "", f"{missing}_FILE": ""}
    with pytest.raises(ConfigError) as refused:
        create_app(settings)
    assert str(refused.value).startswith(f"production mode: {missing}")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_the_explicit_setting_makes_sqlite_production_too(tmp_path: Path) -> None:
    settings = {
        "ONECARD_DATABASE_URL": f"sqlite:///{tmp_path / 'onecard.db'}",
        "ONECARD_PRODUCTION": "1",
    }
    with pytest.raises(ConfigError, match="production mode: ONECARD_FIELD_KEY"):
        ServerConfig.load(settings)
    assert list(tmp_path.glob("*.key")) == []  # nothing generated
    development = ServerConfig.load({**settings, "ONECARD_PRODUCTION": "0"})
    assert not development.production and len(list(tmp_path.glob("*.key"))) == 2


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ONECARD_CLOCK_SKEW", "abc", "ONECARD_CLOCK_SKEW must be a whole number, got 'abc'"),
        ("ONECARD_PRODUCTION", "maybe", "ONECARD_PRODUCTION must be 1 or 0, got 'maybe'"),
        ("ONECARD_FIELD_KEY", "short", "ONECARD_FIELD_KEY must be base64 of 32 bytes"),
        ("ONECARD_SERVER_KEY_FILE", "/nonexistent/key", "ONECARD_SERVER_KEY_FILE: cannot read"),
        ("ONECARD_CARD_CA_CERT", "/nonexistent/ca.pem", "ONECARD_CARD_CA_CERT: cannot read"),
    ],
)
def test_malformed_settings_are_named(
    production: dict[str, str], name: str, value: str, message: str
) -> None:
    settings = {**production, name: value}
    if name == "ONECARD_SERVER_KEY_FILE":
        settings["ONECARD_SERVER_KEY"] = ""
    with pytest.raises(ConfigError) as refused:
        ServerConfig.load(settings)
    assert message in str(refused.value)


# --- the command line: one line, an exit status -------------------------------------------------


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str


@pytest.fixture
def server_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Run]:
    """`onecard server ARGS` in this process (as the console script calls it), with only the
    given ONECARD_* variables set: its exit status and what it printed."""

    def run(*args: str, env: dict[str, str]) -> Run:
        for name in [n for n in os.environ if n.startswith("ONECARD_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return Run(status, out, err)

    return run


def one_line(result: Run) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    return lines[0]


def test_cli_production_without_a_secret(
    server_cli: Callable[..., Run], production: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in production.items() if k != "ONECARD_SERVER_KEY" and v}
    result = server_cli("health", env=env)
    assert result.status == 2
    assert one_line(result) == (
        "onecard server: configuration: production mode: ONECARD_SERVER_KEY "
        "(or ONECARD_SERVER_KEY_FILE) is not set; a production server never generates its secrets"
    )
    assert not (tmp_path / "data").exists()


def test_cli_malformed_environment_value(server_cli: Callable[..., Run], tmp_path: Path) -> None:
    env = {"ONECARD_DATA_DIR": str(tmp_path), "ONECARD_CLOCK_SKEW": "abc"}
    result = server_cli("init-db", env=env)
    assert result.status == 2
    assert "ONECARD_CLOCK_SKEW must be a whole number, got 'abc'" in one_line(result)


def test_cli_unreadable_ca_file(server_cli: Callable[..., Run], tmp_path: Path) -> None:
    env = {"ONECARD_DATA_DIR": str(tmp_path), "ONECARD_CARD_CA_CERT": str(tmp_path / "ca.pem")}
    result = server_cli("init-db", env=env)
    assert result.status == 2
    line = one_line(result)
    assert f"ONECARD_CARD_CA_CERT: cannot read {tmp_path / 'ca.pem'}" in line


def test_cli_init_db_with_postgresql_unreachable(
    server_cli: Callable[..., Run], production: dict[str, str]
) -> None:
    result = server_cli("init-db", env={k: v for k, v in production.items() if v})
    assert result.status == 3
    line = one_line(result)
    assert line.startswith("onecard server: database postgresql+psycopg://onecard@127.0.0.1:1/")
    assert "Connection refused" in line


def test_keygen_secrets_feeds_a_production_configuration(
    server_cli: Callable[..., Run], production: dict[str, str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    result = server_cli("keygen-secrets", "--dir", str(keys), env={})
    assert result.status == 0, result.err
    files = dict(line.split("=", 1) for line in result.out.split())
    assert set(files) == {
        "ONECARD_FIELD_KEY_FILE",
        "ONECARD_SERVER_KEY_FILE",
        "ONECARD_CARD_MASTER_KEY_FILE",
    }
    assert all(Path(path).stat().st_mode & 0o777 == 0o400 for path in files.values())
    settings = {**production, "ONECARD_FIELD_KEY": "", "ONECARD_SERVER_KEY": "", **files}
    assert ServerConfig.load(settings).production
    again = server_cli("keygen-secrets", "--dir", str(keys), env={})
    assert again.status == 2 and "refusing to overwrite" in one_line(again)


# --- the health check -----------------------------------------------------------------------------


def test_health_reports_each_part(server_world: ServerWorld) -> None:
    answer = server_world.client.get("/api/v1/health")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "status": "ok",
        "parts": {"database": {"status": "ok"}, "schema": {"status": "ok"}},
    }


def test_health_when_the_database_is_down(production: dict[str, str]) -> None:
    app = create_app({**production, "ONECARD_PRODUCTION": "0"})
    try:
        answer = app.test_client().get("/api/v1/health")
    finally:
        db.dispose(app)
    assert answer.status_code == 503
    assert answer.content_type == "application/problem+json"
    doc = answer.get_json()
    assert doc["code"] == "database_unavailable"
    assert doc["parts"]["database"]["status"] == "down"
    assert "127.0.0.1" in doc["parts"]["database"]["detail"]
    assert doc["parts"]["schema"] == {"status": "not_checked"}


def test_health_when_the_schema_is_not_migrated(tmp_path: Path) -> None:
    app = create_app(
        {"ONECARD_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "ONECARD_PRODUCTION": "0"}
    )
    try:
        answer = app.test_client().get("/api/v1/health")
    finally:
        db.dispose(app)
    assert answer.status_code == 503
    doc = answer.get_json()
    assert doc["code"] == "schema_outdated"
    assert doc["parts"] == {
        "database": {"status": "ok"},
        "schema": {"status": "down", "detail": "not migrated: run `onecard server init-db`"},
    }
