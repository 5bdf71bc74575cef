"""Server configuration, read from the environment (twelve-factor) or given as a mapping.

| variable | meaning | default |
|---|---|---|
| `ONECARD_DATABASE_URL` | SQLAlchemy URL; `postgresql://` is served by psycopg 3 | SQLite file `onecard.db` in the data directory |
| `ONECARD_DATA_DIR` | where the default SQLite file (and, for PostgreSQL, the development key files) live | `./var` |
| `ONECARD_FIELD_KEY` | base64 of 32 bytes: AES-256-GCM key for residents' personal fields | a key file created on first use: `<database file>.field.key` next to a SQLite database, else `field.key` in the data directory |
| `ONECARD_CARD_CA_CERT` | path to the city card CA certificate (PEM or DER) | none: card issuance and taps are refused with `card_ca_not_configured` |
| `ONECARD_SERVER_KEY` | base64 of a 32-byte Ed25519 private key: signs kiosk configurations | a key file, placed as for the field key (`server-signing.key`) |
| `ONECARD_TIMEZONE` | the city's time zone; calendar months and years are counted in it | `Asia/Shanghai` |
| `ONECARD_CLOCK_SKEW` | seconds a kiosk's X-Timestamp or a tap's time may differ from the server's clock | `300` |
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_CLOCK_SKEW = 300
MAX_BODY_BYTES = 64 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class ServerConfig:
    database_url: str
    field_key: bytes
    card_ca_der: bytes | None
    server_key: bytes = b""  # Ed25519 private key, raw 32 bytes
    timezone: str = DEFAULT_TIMEZONE
    clock_skew: int = DEFAULT_CLOCK_SKEW
    max_body_bytes: int = MAX_BODY_BYTES
    # Injected in tests; the server reads the time only through this.
    clock: Callable[[], float] | None = field(default=None, compare=False)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
        """Build the configuration from `overrides` first, then the environment, then defaults.

        `overrides` uses the environment's names (`ONECARD_DATABASE_URL`, ...) and also accepts
        `ONECARD_CARD_CA_DER` (bytes) and `ONECARD_CLOCK` (a callable returning Unix seconds).
        """
        given = dict(overrides or {})

        def setting(name: str) -> Any:
            if name in given:
                return given[name]
            return os.environ.get(name)

        data_dir = Path(setting("ONECARD_DATA_DIR") or "var")
        database_url = normalise_database_url(
            setting("ONECARD_DATABASE_URL") or f"sqlite:///{(data_dir / 'onecard.db').resolve()}"
        )
        if database_url.startswith("sqlite:///") and ":memory:" not in database_url:
            Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

        key_dir, key_prefix = _key_location(database_url, data_dir)
        field_key = _secret_key(
            setting("ONECARD_FIELD_KEY"), key_dir / f"{key_prefix}field.key", "ONECARD_FIELD_KEY"
        )
        server_key = _secret_key(
            setting("ONECARD_SERVER_KEY"),
            key_dir / f"{key_prefix}server-signing.key",
            "ONECARD_SERVER_KEY",
        )

        ca_der = given.get("ONECARD_CARD_CA_DER")
        ca_path = setting("ONECARD_CARD_CA_CERT")
        if ca_der is None and ca_path:
            ca_der = load_certificate_der(Path(ca_path))

        skew = setting("ONECARD_CLOCK_SKEW")
        return cls(
            database_url=database_url,
            field_key=field_key,
            card_ca_der=ca_der,
            server_key=server_key,
            timezone=setting("ONECARD_TIMEZONE") or DEFAULT_TIMEZONE,
            clock_skew=int(skew) if skew not in (None, "") else DEFAULT_CLOCK_SKEW,
            clock=given.get("ONECARD_CLOCK"),
        )


def normalise_database_url(url: str) -> str:
    """psycopg 3 is the PostgreSQL driver we ship; plain `postgresql://` URLs are routed to it."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def load_certificate_der(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"ONECARD_CARD_CA_CERT: cannot read {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN" in raw:
            cert = x509.load_pem_x509_certificate(raw)
        else:
            cert = x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise ConfigError(f"ONECARD_CARD_CA_CERT: {path} is not a certificate: {exc}") from exc
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def _key_location(database_url: str, data_dir: Path) -> tuple[Path, str]:
    """Where development key files live when no key is configured: next to a SQLite database
    (`<db>.field.key`), so every process using that database finds the key that encrypted it;
    else in the data directory."""
    if database_url.startswith("sqlite:///") and ":memory:" not in database_url:
        db_file = Path(database_url.removeprefix("sqlite:///"))
        return db_file.parent, db_file.name + "."
    return data_dir, ""


def _secret_key(value: str | None, path: Path, name: str) -> bytes:
    """32 secret bytes from the setting, else from a key file (created once, mode 0600)."""
    if value:
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ConfigError(f"{name} must be base64 of 32 bytes") from exc
        if len(key) != 32:
            raise ConfigError(f"{name} must be 32 bytes, got {len(key)}")
        return key
    # Development default: a key file in the data directory, created once.
    if path.exists():
        try:
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError(f"{path} must hold base64 of 32 bytes")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _secret_key(None, path, name)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
    return key
