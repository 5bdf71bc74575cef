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
| `ONECARD_PRODUCTION` | `1`: production mode; `0`: development mode even on PostgreSQL | `1` on PostgreSQL, else `0` |
| `ONECARD_FIELD_KEY_FILE`, `ONECARD_SERVER_KEY_FILE`, `ONECARD_CARD_MASTER_KEY_FILE` | a file holding the key's base64 instead of the value in the environment | none |

Production mode never invents a secret: the server refuses to start unless the field key, the
signing key, the card master secret (each as a value or a `_FILE`) and the card CA certificate
are configured, and names the first that is missing. (Development key files, created on first
use, are right for one SQLite file; two servers on one PostgreSQL database would each invent a
different field key.)
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
from cryptography.hazmat.primitives.serialization import Encoding

DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_CLOCK_SKEW = 300
MAX_BODY_BYTES = 64 * 1024


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class Secret:
    """One of the server's 32-byte secrets: its setting's name and its development file name."""

    setting: str
    file_name: str


FIELD_KEY = Secret("ONECARD_FIELD_KEY", "field.key")
SIGNING_KEY = Secret("ONECARD_SERVER_KEY", "server-signing.key")
CARD_MASTER_KEY = Secret("ONECARD_CARD_MASTER_KEY", "card-master.key")
SECRETS = (FIELD_KEY, SIGNING_KEY, CARD_MASTER_KEY)
CARD_CA_CERT = "ONECARD_CARD_CA_CERT"
CARD_CA_DIR = "ONECARD_CARD_CA_DIR"

Setting = Callable[[str], Any]


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
    production: bool = False

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
        """Build the configuration from `overrides` first, then the environment, then defaults.

        `overrides` uses the environment's names (`ONECARD_DATABASE_URL`, ...) and also accepts
        `ONECARD_CARD_CA_DER` (bytes) and `ONECARD_CLOCK` (a callable returning Unix seconds).
        """
        given = dict(overrides or {})
        setting = settings_reader(given)
        database_url = database_url_of(setting)
        if database_url.startswith("sqlite:///") and ":memory:" not in database_url:
            Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        production = is_production(setting, database_url)
        ca_der = given.get("ONECARD_CARD_CA_DER")
        if production:
            require_production_settings(setting, ca_der_given=ca_der is not None)

        field_key = secret_key(setting, FIELD_KEY, production=production)
        server_key = secret_key(setting, SIGNING_KEY, production=production)
        ca_path = setting(CARD_CA_CERT)
        if ca_der is None and ca_path:
            ca_der = load_certificate_der(Path(ca_path))

        return cls(
            database_url=database_url,
            field_key=field_key,
            card_ca_der=ca_der,
            server_key=server_key,
            timezone=setting("ONECARD_TIMEZONE") or DEFAULT_TIMEZONE,
            clock_skew=whole_number(setting, "ONECARD_CLOCK_SKEW", DEFAULT_CLOCK_SKEW),
            clock=given.get("ONECARD_CLOCK"),
            production=production,
        )


def settings_reader(given: Mapping[str, Any]) -> Setting:
    """A setting by name: from `given` first, then the environment (None when unset)."""

    def setting(name: str) -> Any:
        if name in given:
            return given[name]
        return os.environ.get(name)

    return setting


def database_url_of(setting: Setting) -> str:
    data_dir = Path(setting("ONECARD_DATA_DIR") or "var")
    return normalise_database_url(
        setting("ONECARD_DATABASE_URL") or f"sqlite:///{(data_dir / 'onecard.db').resolve()}"
    )


def is_production(setting: Setting, database_url: str) -> bool:
    """ONECARD_PRODUCTION when set; otherwise production exactly when the database is PostgreSQL."""
    value = setting("ONECARD_PRODUCTION")
    if value in (None, ""):
        return database_url.startswith("postgresql")
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"ONECARD_PRODUCTION must be 1 or 0, got {value!r}")


def require_production_settings(setting: Setting, *, ca_der_given: bool = False) -> None:
    """Production mode: every secret and the card CA certificate must be configured."""
    for secret in SECRETS:
        if not setting(secret.setting) and not setting(secret.setting + "_FILE"):
            raise ConfigError(
                f"production mode: {secret.setting} (or {secret.setting}_FILE) is not set; "
                "a production server never generates its secrets"
            )
    if not ca_der_given and not setting(CARD_CA_CERT):
        raise ConfigError(f"production mode: {CARD_CA_CERT} (the city card CA) is not set")


def whole_number(setting: Setting, name: str, default: int) -> int:
    value = setting(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name} must not be negative, got {value!r}")
    return number


def development_key_path(setting: Setting, secret: Secret) -> Path:
    """Where the development key file of `secret` lives for this configuration."""
    data_dir = Path(setting("ONECARD_DATA_DIR") or "var")
    key_dir, prefix = _key_location(database_url_of(setting), data_dir)
    return key_dir / f"{prefix}{secret.file_name}"


def secret_key(setting: Setting, secret: Secret, *, production: bool) -> bytes:
    """The secret's 32 bytes: its value, else its `_FILE`, else (development only) the
    development key file, created on first use."""
    value = setting(secret.setting)
    if value:
        return _decode_key(str(value), secret.setting)
    file_setting = secret.setting + "_FILE"
    path = setting(file_setting)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{file_setting}: cannot read {path}: {exc.strerror}") from None
        return _decode_key(text.strip(), f"{file_setting} ({path})")
    if production:
        raise ConfigError(f"production mode: {secret.setting} (or {file_setting}) is not set")
    return _secret_key(None, development_key_path(setting, secret), secret.setting)


def _decode_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigError(f"{name} must be base64 of 32 bytes") from None
    if len(key) != 32:
        raise ConfigError(f"{name} must be 32 bytes, got {len(key)}")
    return key


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
        return _decode_key(value, name)
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
