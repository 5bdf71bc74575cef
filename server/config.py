"""Server configuration, read from the environment (twelve-factor) or given as a mapping.

| variable | meaning | default |
|---|---|---|
| `ONECARD_DATABASE_URL` | SQLAlchemy URL; `postgresql://` is served by psycopg 3 | SQLite file `onecard.db` in the data directory |
| `ONECARD_DATA_DIR` | where the default SQLite file and the development field key live | `./var` |
| `ONECARD_FIELD_KEY` | base64 of 32 bytes: AES-256-GCM key for residents' personal fields | a key file `field.key` in the data directory, created on first use |
| `ONECARD_CARD_CA_CERT` | path to the city card CA certificate (PEM or DER) | none: card issuance and taps are refused with `card_ca_not_configured` |
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

        field_key = _field_key(setting("ONECARD_FIELD_KEY"), data_dir)

        ca_der = given.get("ONECARD_CARD_CA_DER")
        ca_path = setting("ONECARD_CARD_CA_CERT")
        if ca_der is None and ca_path:
            ca_der = load_certificate_der(Path(ca_path))

        skew = setting("ONECARD_CLOCK_SKEW")
        return cls(
            database_url=database_url,
            field_key=field_key,
            card_ca_der=ca_der,
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


def _field_key(value: str | None, data_dir: Path) -> bytes:
    if value:
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ConfigError("ONECARD_FIELD_KEY must be base64 of 32 bytes") from exc
        if len(key) != 32:
            raise ConfigError(f"ONECARD_FIELD_KEY must be 32 bytes, got {len(key)}")
        return key
    # Development default: a key file next to the SQLite database, created once.
    path = data_dir / "field.key"
    if path.exists():
        key = base64.b64decode(path.read_text().strip())
        if len(key) != 32:
            raise ConfigError(f"{path} must hold base64 of 32 bytes")
        return key
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
    return key
