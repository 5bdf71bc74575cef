"""Backup and restore of a server: the database and the secrets it cannot be read without, in
one encrypted file (`onecard server backup --out FILE`, `onecard server restore FILE`).

What is inside (a tar archive, gzip-compressed, then encrypted):

    manifest.json            format, time, database kind and schema revision, and for every other
                             member its size and SHA-256 (checked before anything is restored)
    database/onecard.sqlite3 SQLite: a consistent copy made with SQLite's online backup API
    database/onecard.pgdump  PostgreSQL: `pg_dump --format=custom` (restored with pg_restore)
    keys/<name>.key          the field key, the signing key and the card master secret (base64)
    ca/card-ca-cert          the city card CA certificate (ONECARD_CARD_CA_CERT), when set
    ca-dir/<file>            the card CA directory (ONECARD_CARD_CA_DIR), when set

The file: `ONECARD-BACKUP\\0` and a version byte, a JSON header (how the key is derived, the
nonce prefix), then the archive in 1 MiB chunks, each sealed with AES-256-GCM. A chunk's nonce is
the prefix, its number and a last-chunk flag (the STREAM construction), and the header is bound
to every chunk as associated data, so a reordered, truncated or altered file, or a wrong
passphrase or key, is refused as a whole. The AES key comes from one of:

* a passphrase, through scrypt (header `kdf: scrypt`, its parameters and salt);
* a recipient's X25519 public key (header `kdf: x25519-hkdf-sha256`): an ephemeral X25519 key
  pair is made for this file, and HKDF-SHA256 over the shared secret (salt in the header, info
  binding both public keys) gives the key. The header carries the ephemeral and the recipient's
  public keys; only the recipient's private key (the identity, `keygen_identity`) opens it, so a
  server can write nightly backups with no secret of the backup's on it.

Restore puts the secrets where the configuration reads them: a key given as a value in the
environment must equal the backup's (else restore refuses: the data could not be read); a key
given as `*_FILE`, or a development key file, is written there (a different key already there is
refused unless `force`). Then the database is replaced: SQLite through the backup API, PostgreSQL
with `pg_restore --clean --if-exists --single-transaction`. Stop the server first.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy.engine import make_url

from server.config import (
    CARD_CA_CERT,
    CARD_CA_DIR,
    SECRETS,
    ConfigError,
    Secret,
    Setting,
    database_url_of,
    development_key_path,
    is_production,
    secret_key,
    settings_reader,
)

MAGIC = b"ONECARD-BACKUP\x00\x01"
CHUNK = 1 << 20
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
NONCE_PREFIX = 7  # + 4-byte chunk number + 1-byte last flag = the 12-byte GCM nonce
MANIFEST = "manifest.json"
FORMAT = 1
PASSPHRASE_SETTING = "ONECARD_BACKUP_PASSPHRASE"
MIN_PASSPHRASE = 12
KDF_PASSPHRASE = "scrypt"
KDF_RECIPIENT = "x25519-hkdf-sha256"
HKDF_INFO = b"onecard-backup x25519 v1"

# What seals a backup: a passphrase, or the recipient's public key. What opens it: the same
# passphrase, or the recipient's private key (the identity).
SealingKey = str | X25519PublicKey
OpeningKey = str | X25519PrivateKey


class BackupError(Exception):
    """A backup cannot be made or restored; the message says why."""


@dataclass(frozen=True)
class RestoreSummary:
    database: str
    schema_revisions: list[str]
    created: str
    files: int
    keys_written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- the encrypted container -------------------------------------------------------------------


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> AESGCM:
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())
    return AESGCM(key)


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _agree(
    private: X25519PrivateKey,
    peer: X25519PublicKey,
    salt: bytes,
    ephemeral: bytes,
    recipient: bytes,
) -> AESGCM:
    try:
        shared = private.exchange(peer)
    except ValueError:  # a low-order point: no shared secret
        raise BackupError("the backup's header is damaged (its ephemeral key)") from None
    hkdf = HKDF(hashes.SHA256(), length=32, salt=salt, info=HKDF_INFO + ephemeral + recipient)
    return AESGCM(hkdf.derive(shared))


def _sealing(key: SealingKey) -> tuple[dict[str, Any], AESGCM]:
    """The header's key fields and the AEAD for a new backup sealed with `key`."""
    salt = secrets.token_bytes(16)
    fields: dict[str, Any] = {"salt": base64.b64encode(salt).decode()}
    if isinstance(key, str):
        if len(key) < MIN_PASSPHRASE:
            raise BackupError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
        fields.update(kdf=KDF_PASSPHRASE, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
        return fields, _derive(key, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw, recipient_raw = _raw(ephemeral.public_key()), _raw(key)
    fields.update(
        kdf=KDF_RECIPIENT,
        ephemeral=base64.b64encode(ephemeral_raw).decode(),
        recipient=base64.b64encode(recipient_raw).decode(),
    )
    return fields, _agree(ephemeral, key, salt, ephemeral_raw, recipient_raw)


def _opening(header: dict[str, Any], key: OpeningKey) -> AESGCM:
    """The AEAD that opens a backup with this header, or BackupError saying what is wrong."""
    kdf = header.get("kdf")
    salt = base64.b64decode(header["salt"])
    if kdf == KDF_PASSPHRASE:
        if not isinstance(key, str):
            raise BackupError(
                "this backup is sealed with a passphrase, not a key: give the passphrase"
            )
        n, r, p = int(header["n"]), int(header["r"]), int(header["p"])
        if n > 1 << 20 or r > 32 or p > 16:
            raise BackupError("the backup's key derivation is not one this version reads")
        return _derive(key, salt, n, r, p)
    if kdf == KDF_RECIPIENT:
        if isinstance(key, str):
            raise BackupError(
                "this backup is sealed to a recipient key, not a passphrase: give its identity "
                "(restore --identity KEYFILE)"
            )
        ephemeral_raw = base64.b64decode(header["ephemeral"])
        recipient_raw = base64.b64decode(header["recipient"])
        if recipient_raw != _raw(key.public_key()):
            raise BackupError("wrong key: this backup is sealed to another recipient key")
        ephemeral = X25519PublicKey.from_public_bytes(ephemeral_raw)
        return _agree(key, ephemeral, salt, ephemeral_raw, recipient_raw)
    raise BackupError("the backup's key derivation is not one this version reads")


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", number, last)


def encrypt_stream(source: BinaryIO, target: BinaryIO, key: SealingKey) -> None:
    """Seal `source` into `target` (the container format above) with a passphrase or to a
    recipient's public key."""
    fields, aead = _sealing(key)
    prefix = secrets.token_bytes(NONCE_PREFIX)
    header = json.dumps(
        {**fields, "nonce_prefix": base64.b64encode(prefix).decode(), "chunk": CHUNK}
    ).encode()
    target.write(MAGIC + struct.pack(">I", len(header)) + header)
    associated = MAGIC + header
    number = 0
    chunk = source.read(CHUNK)
    while True:
        following = source.read(CHUNK)
        last = not following
        sealed = aead.encrypt(_nonce(prefix, number, last), chunk, associated)
        target.write(struct.pack(">I", len(sealed)) + sealed)
        if last:
            return
        chunk, number = following, number + 1


def decrypt_stream(source: BinaryIO, target: BinaryIO, key: OpeningKey) -> None:
    """Open a container made by encrypt_stream with its passphrase or the recipient's private
    key; BackupError if anything does not hold."""
    if source.read(len(MAGIC)) != MAGIC:
        raise BackupError("not a OneCard backup (or a newer format)")
    try:
        (length,) = struct.unpack(">I", source.read(4))
        header_bytes = source.read(length)
        header = json.loads(header_bytes)
        prefix = base64.b64decode(header["nonce_prefix"])
        aead = _opening(header, key)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"the backup's header is damaged: {exc}") from None
    associated = MAGIC + header_bytes
    number = 0
    while True:
        size = source.read(4)
        if len(size) < 4:
            raise BackupError("the backup is truncated (its last part is missing)")
        sealed = source.read(struct.unpack(">I", size)[0])
        for last in (False, True):
            try:
                plain = aead.decrypt(_nonce(prefix, number, last), sealed, associated)
                break
            except InvalidTag:
                continue
        else:
            if number == 0:
                what = "passphrase" if isinstance(key, str) else "key"
                raise BackupError(f"wrong {what}, or the backup is damaged")
            raise BackupError(f"the backup is damaged (part {number} does not authenticate)")
        target.write(plain)
        if last:
            if source.read(1):
                raise BackupError("the backup has data after its last part")
            return
        number += 1


# --- recipient keys ----------------------------------------------------------------------------


def keygen_identity(path: Path) -> Path:
    """Write a new X25519 identity: the private key to `path` (PKCS#8 PEM, mode 0600: keep it
    off the server, with the restore side), the public key to `path`.pub (give that to
    `backup --recipient`). Refuses to overwrite either. Returns the public key's path."""
    public_path = path.with_name(path.name + ".pub")
    existing = [str(p) for p in (path, public_path) if p.exists()]
    if existing:
        raise BackupError(f"refusing to overwrite {', '.join(existing)}")
    private = X25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public_path


def load_recipient(path: Path) -> X25519PublicKey:
    """A recipient's public key from its PEM file (`keygen_identity`'s .pub)."""
    key = _load_pem(path, serialization.load_pem_public_key)
    if not isinstance(key, X25519PublicKey):
        raise BackupError(f"{path} is not an X25519 public key")
    return key


def load_identity(path: Path) -> X25519PrivateKey:
    """The recipient's private key from its PEM file (written by `keygen_identity`)."""
    key = _load_pem(path, lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, X25519PrivateKey):
        raise BackupError(f"{path} is not an X25519 private key")
    return key


def _load_pem(path: Path, load: Any) -> object:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return load(data)
    except (ValueError, TypeError) as exc:
        raise BackupError(f"{path} is not a PEM key: {exc}") from None


# --- what the configuration names ---------------------------------------------------------------


@dataclass(frozen=True)
class SecretPlace:
    """Where the configuration takes one secret from: the environment's value, or a file."""

    secret: Secret
    value: bytes | None  # None: nowhere yet (restoring onto a fresh machine)
    path: Path | None  # the file it is read from; None when given as a value
    from_environment: bool


def _member(secret: Secret) -> str:
    return f"keys/{secret.file_name}"


def locate_secrets(overrides: Mapping[str, Any] | None, *, create: bool) -> list[SecretPlace]:
    """Each secret's place under this configuration; with `create`, development keys that do
    not exist yet are made (as a running server would); else they are reported missing."""
    setting = settings_reader(dict(overrides or {}))
    production = is_production(setting, database_url_of(setting))
    places = []
    for secret in SECRETS:
        if setting(secret.setting):
            places.append(
                SecretPlace(secret, secret_key(setting, secret, production=production), None, True)
            )
            continue
        file_setting = setting(secret.setting + "_FILE")
        if file_setting:
            path = Path(file_setting)
        elif production:
            raise ConfigError(
                f"production mode: {secret.setting} (or {secret.setting}_FILE) is not set"
            )
        else:
            path = development_key_path(setting, secret)
        value = (
            secret_key(setting, secret, production=production) if create or path.exists() else None
        )
        places.append(SecretPlace(secret, value, path, False))
    return places


# --- backup ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _libpq_environment(database_url: str) -> dict[str, str]:
    """PG* variables for pg_dump/pg_restore (the password never on a command line)."""
    url = make_url(database_url)
    env = {**os.environ, "PGDATABASE": url.database or ""}
    for name, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
    ):
        if value is not None:
            env[name] = str(value)
    return env


def _run_pg_tool(argv: list[str], database_url: str) -> None:
    if shutil.which(argv[0]) is None:
        raise BackupError(f"{argv[0]} is not installed (Debian package postgresql-client)")
    result = subprocess.run(
        argv, env=_libpq_environment(database_url), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise BackupError(f"{argv[0]} failed: {lines[0] if lines else result.returncode}")


def _sqlite_path(database_url: str) -> Path:
    if ":memory:" in database_url:
        raise BackupError("an in-memory database cannot be backed up")
    return Path(database_url.removeprefix("sqlite:///"))


def _dump_database(database_url: str, into: Path) -> tuple[str, str]:
    """(kind, archive member) of a consistent copy of the database written under `into`."""
    (into / "database").mkdir()
    if database_url.startswith("sqlite"):
        member = "database/onecard.sqlite3"
        source_path = _sqlite_path(database_url)
        if not source_path.exists():
            raise BackupError(f"no database at {source_path}")
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
        target = sqlite3.connect(into / member)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return "sqlite", member
    if database_url.startswith("postgresql"):
        member = "database/onecard.pgdump"
        _run_pg_tool(
            [
                "pg_dump",
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--file={into / member}",
                f"--dbname={make_url(database_url).database}",
            ],
            database_url,
        )
        return "postgresql", member
    raise BackupError(f"cannot back up a {database_url.split(':', 1)[0]} database")


def _schema_revisions(database_url: str, dump_dir: Path, kind: str, member: str) -> list[str]:
    if kind == "sqlite":
        connection = sqlite3.connect(dump_dir / member)
        try:
            return sorted(
                r for (r,) in connection.execute("SELECT version_num FROM alembic_version")
            )
        except sqlite3.Error:
            return []
        finally:
            connection.close()
    import psycopg  # only for PostgreSQL

    url = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=10) as conn:
        return sorted(r for (r,) in conn.execute("SELECT version_num FROM alembic_version"))


def backup(
    out: Path, key: SealingKey, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the backup of this configuration's server to `out`, sealed with a passphrase or
    to a recipient's public key; its manifest."""
    setting = settings_reader(dict(overrides or {}))
    database_url = database_url_of(setting)
    places = locate_secrets(overrides, create=True)
    with tempfile.TemporaryDirectory(prefix="onecard-backup-") as tmp:
        work = Path(tmp)
        kind, db_member = _dump_database(database_url, work)
        (work / "keys").mkdir()
        for place in places:
            assert place.value is not None
            (work / _member(place.secret)).write_text(base64.b64encode(place.value).decode() + "\n")
        ca_cert = setting(CARD_CA_CERT)
        if ca_cert:
            (work / "ca").mkdir()
            _copy_in(Path(ca_cert), work / "ca" / "card-ca-cert", CARD_CA_CERT)
        ca_dir = setting(CARD_CA_DIR)
        if ca_dir:
            (work / "ca-dir").mkdir()
            for entry in sorted(Path(ca_dir).iterdir()):
                if entry.is_file():
                    _copy_in(entry, work / "ca-dir" / entry.name, CARD_CA_DIR)
        members = sorted(str(path.relative_to(work)) for path in work.rglob("*") if path.is_file())
        manifest = {
            "format": FORMAT,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "database": {
                "kind": kind,
                "member": db_member,
                "schema_revisions": _schema_revisions(database_url, work, kind, db_member),
            },
            "keys": {place.secret.setting: _member(place.secret) for place in places},
            "files": {
                name: {"size": (work / name).stat().st_size, "sha256": _sha256(work / name)}
                for name in members
            },
        }
        plain = work / "archive.tar.gz"
        with tarfile.open(plain, "w:gz") as archive:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
            for name in members:
                archive.add(work / name, arcname=name, recursive=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as target, plain.open("rb") as source:
            encrypt_stream(source, target, key)
            target.flush()
            os.fsync(target.fileno())
        os.replace(partial, out)
    return manifest


def _copy_in(source: Path, target: Path, setting_name: str) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise BackupError(f"{setting_name}: cannot read {source}: {exc.strerror}") from None


# --- restore -----------------------------------------------------------------------------------


@contextmanager
def opened(path: Path, key: OpeningKey) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The backup decrypted and unpacked in a private temporary directory, every file checked
    against the manifest; (directory, manifest)."""
    with tempfile.TemporaryDirectory(prefix="onecard-restore-") as tmp:
        work = Path(tmp)
        plain = work / "archive.tar.gz"
        try:
            with path.open("rb") as source, plain.open("wb") as target:
                decrypt_stream(source, target, key)
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror}") from None
        content = work / "content"
        content.mkdir()
        try:
            with tarfile.open(plain, "r:gz") as archive:
                archive.extractall(content, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BackupError(f"the backup's archive is damaged: {exc}") from None
        try:
            manifest = json.loads((content / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BackupError(f"the backup has no readable manifest: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise BackupError(f"backup format {manifest.get('format')!r} is not one this reads")
        _check_files(content, manifest)
        yield content, manifest


def _check_files(content: Path, manifest: dict[str, Any]) -> None:
    listed = manifest.get("files") or {}
    present = {str(p.relative_to(content)) for p in content.rglob("*") if p.is_file()} - {MANIFEST}
    if present != set(listed):
        extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
        raise BackupError(
            f"the backup's files differ from its manifest: extra {extra}, missing {missing}"
        )
    for name, expected in listed.items():
        if _sha256(content / name) != expected.get("sha256"):
            raise BackupError(f"{name}: its SHA-256 differs from the manifest's")


def restore(
    path: Path,
    key: OpeningKey,
    overrides: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
) -> RestoreSummary:
    """Put the backup at `path` back under this configuration (see the module docstring)."""
    setting = settings_reader(dict(overrides or {}))
    database_url = database_url_of(setting)
    with opened(path, key) as (content, manifest):
        database = manifest["database"]
        kind = "sqlite" if database_url.startswith("sqlite") else "postgresql"
        if database["kind"] != kind:
            raise BackupError(
                f"the backup holds a {database['kind']} database; this server is configured "
                f"for {kind} (restore onto the same kind, or migrate the data separately)"
            )
        writes = _plan_secrets(content, manifest, overrides, force=force)
        notes = []
        ca_writes, ca_notes = _plan_ca(content, setting, force=force)
        notes += ca_notes
        # Every check passed: now change things, the secrets first (the data needs them).
        for target, data in writes + ca_writes:
            _write_private(target, data)
        _load_database(content / database["member"], database_url, kind)
        return RestoreSummary(
            database=kind,
            schema_revisions=list(database.get("schema_revisions") or []),
            created=str(manifest.get("created")),
            files=len(manifest["files"]),
            keys_written=[str(target) for target, _ in writes],
            notes=notes,
        )


def _plan_secrets(
    content: Path, manifest: dict[str, Any], overrides: Mapping[str, Any] | None, *, force: bool
) -> list[tuple[Path, bytes]]:
    writes = []
    for place in locate_secrets(overrides, create=False):
        member = manifest["keys"].get(place.secret.setting)
        if member is None:
            raise BackupError(f"the backup holds no {place.secret.setting}")
        text = (content / member).read_text()
        stored = base64.b64decode(text.strip())
        if place.value == stored:
            continue
        if place.from_environment:
            raise BackupError(
                f"{place.secret.setting} in the environment differs from the backup's: the "
                "restored data could not be read with it (set it to the backup's key)"
            )
        assert place.path is not None
        if place.value is not None and not force:
            raise BackupError(
                f"{place.path} holds a different {place.secret.setting} than the backup "
                "(move it away, or restore with --force to replace it)"
            )
        writes.append((place.path, text.encode()))
    return writes


def _plan_ca(
    content: Path, setting: Setting, *, force: bool
) -> tuple[list[tuple[Path, bytes]], list[str]]:
    writes: list[tuple[Path, bytes]] = []
    notes: list[str] = []
    pairs: list[tuple[str, Path, Path]] = []
    stored_cert = content / "ca" / "card-ca-cert"
    if stored_cert.exists():
        target = setting(CARD_CA_CERT)
        if target:
            pairs.append((CARD_CA_CERT, stored_cert, Path(target)))
        else:
            notes.append(f"the backup holds the card CA certificate; {CARD_CA_CERT} is not set")
    stored_dir = content / "ca-dir"
    if stored_dir.is_dir():
        target_dir = setting(CARD_CA_DIR)
        if target_dir:
            for entry in sorted(stored_dir.iterdir()):
                pairs.append((CARD_CA_DIR, entry, Path(target_dir) / entry.name))
        else:
            notes.append(f"the backup holds the card CA directory; {CARD_CA_DIR} is not set")
    for name, stored, target in pairs:
        data = stored.read_bytes()
        if target.exists():
            if target.read_bytes() == data:
                continue
            if not force:
                raise BackupError(
                    f"{name}: {target} differs from the backup's (restore with --force to replace it)"
                )
        writes.append((target, data))
    return writes, notes


def _write_private(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".restoring")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, target)


def _load_database(dump: Path, database_url: str, kind: str) -> None:
    if kind == "sqlite":
        target_path = _sqlite_path(database_url)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{dump}?mode=ro", uri=True)
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return
    _run_pg_tool(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={make_url(database_url).database}",
            str(dump),
        ],
        database_url,
    )
