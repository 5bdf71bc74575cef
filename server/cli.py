"""`onecard server ...`: init-db, seed-demo, add-kiosk, add-station, create-user, set-password,
tokens, reindex-residents, verify-audit,
prune, rollup, alerts, dhis2, health, keygen-secrets, keygen-backup-key, backup, restore, run.

`main(argv) -> exit status`; the `onecard` console script delegates its `server` subcommand here.
Configuration comes from the environment (server.config), as in production. Errors are one line
on standard error, never a traceback, with the exit status saying what kind:

    0 done; 1 the operation failed (refused, audit chain broken, backup not usable);
    2 the configuration is wrong (a setting missing, malformed or naming an unreadable file);
    3 the database cannot be reached (or answered with an error).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import getpass
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from server import services
from server.app import context_of, create_app
from server.config import SECRETS, ConfigError, ServerConfig, database_url_of, settings_reader
from server.domain.alerts import AlertKind
from server.domain.dhis2 import Dhis2Mapping
from server.errors import ApiError
from server.http.requestlog import configure_logging
from server.services import (
    alerts,
    exports,
    fleet,
    health,
    people,
    rollup,
    staff_auth,
    staff_cards,
)
from server.services.notify import Notifier, NotifySettings
from server.store import backup as backups
from server.store.audit import verify_chain
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import Role, StaffUser

EXIT_FAILED = 1
EXIT_CONFIGURATION = 2
EXIT_DATABASE = 3

SERVER_ENVIRONMENT = """environment:
  ONECARD_DATABASE_URL          SQLAlchemy URL (postgresql://... or sqlite:///...);
                                default: SQLite in ONECARD_DATA_DIR
  ONECARD_DATA_DIR              default SQLite file and development key files (./var)
  ONECARD_PRODUCTION            1: production mode (default on PostgreSQL); 0: development
  ONECARD_FIELD_KEY[_FILE]      base64 of 32 bytes: encrypts residents' personal fields
  ONECARD_SERVER_KEY[_FILE]     base64 of a 32-byte Ed25519 key: signs kiosk configurations
  ONECARD_CARD_MASTER_KEY[_FILE] base64 of 32 bytes: cards' management keys and PUKs
  ONECARD_CARD_CA_CERT          the city card CA certificate (PEM or DER)
  ONECARD_CARD_CA_DIR           the card CA directory (ca-key.pem, ca-cert.pem): signs cards
  ONECARD_CARD_VALID_DAYS       validity of new card certificates (1825)
  ONECARD_TIMEZONE              the city's time zone (Asia/Shanghai)
  ONECARD_CLOCK_SKEW            seconds a device's clock may be off (300)
  ONECARD_LOG_LEVEL             run: log level of the JSON log lines (INFO)
  ONECARD_BACKUP_PASSPHRASE     backup, restore: the passphrase (else asked on the terminal;
                                not used with --recipient / --identity)

In production mode the server never generates a secret: it refuses to start and names the
first of the field key, signing key, card master secret and card CA certificate that is missing.

exit status: 0 done, 1 failed, 2 configuration error, 3 database unreachable"""


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, about: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=about,
        description=about,
        epilog=SERVER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onecard server",
        description="The OneCard central server.",
        epilog=SERVER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _command(commands, "init-db", "create or upgrade the schema (Alembic migrations)")
    _command(
        commands,
        "seed-demo",
        "regions, the condom category (3 a month), a product and a resident; prints ids as JSON",
    )
    kiosk = _command(commands, "add-kiosk", "register a kiosk's device key and slots")
    kiosk.add_argument("--id", required=True, dest="kiosk_id", help="the kiosk's id, e.g. K-0001")
    kiosk.add_argument("--public-key", required=True, help="base64 of the raw 32-byte Ed25519 key")
    kiosk.add_argument(
        "--slot", action="append", default=[], metavar="N=SKU", help="a slot's product; repeatable"
    )
    kiosk.add_argument("--region", help="region code (default: the root region)")
    station = _command(commands, "add-station", "register a service station's device key")
    station.add_argument(
        "--id", required=True, dest="station_id", help="the station's id, e.g. ST-0001"
    )
    station.add_argument(
        "--public-key", required=True, help="base64 of the raw 32-byte Ed25519 key"
    )
    station.add_argument("--region", help="region code (default: the root region)")
    user = _command(commands, "create-user", "create a staff user; prints its bearer token")
    user.add_argument("--name", required=True, help="the user's name")
    user.add_argument(
        "--role", required=True, choices=[r.value for r in Role], help="what the user may do"
    )
    user.add_argument("--region", help="region code the user is scoped to (default: everywhere)")
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="give the user a password read from standard input (the first administrator) "
        "instead of a bearer token; they change it at their first sign-in",
    )
    password = _command(
        commands, "set-password", "set a staff user's password (read from standard input)"
    )
    password.add_argument("--name", required=True, help="the user's name")
    password.add_argument(
        "--keep", action="store_true", help="the user need not change it at the next sign-in"
    )
    tokens = _command(commands, "tokens", "bearer tokens for scripts: list, issue, rotate, revoke")
    tokens.add_argument(
        "action", choices=["list", "issue", "rotate", "revoke"], help="what to do with tokens"
    )
    tokens.add_argument("--name", help="issue: the user the token is for")
    tokens.add_argument("--label", default="script", help="issue: what the token is for")
    tokens.add_argument("--id", type=int, dest="token_id", help="rotate, revoke: the token's id")
    tokens.add_argument(
        "--days", type=int, default=staff_auth.DEFAULT_TOKEN_DAYS, help="issue, rotate: lifetime"
    )
    staff_card = _command(
        commands, "staff-card", "link a staff card to a staff user for card sign-in, or revoke it"
    )
    staff_card.add_argument("action", choices=["assign", "revoke"], help="what to do")
    staff_card.add_argument("--name", help="assign: the staff user's name")
    staff_card.add_argument("--guid", help="the card's GUID (hex or UUID form)")
    staff_card.add_argument(
        "--certificate",
        type=Path,
        help="assign: the card's certificate file (PEM or DER) instead of --guid; checked "
        "against the city card CA, and its dates kept",
    )
    staff_card.add_argument(
        "--reason",
        choices=staff_cards.REVOKE_REASONS,
        default="revoked",
        help="revoke: why (kept with the card and in the audit log)",
    )
    _command(
        commands,
        "reindex-residents",
        "fill the keyed phone and name indexes of residents enrolled before they existed",
    )
    _command(commands, "verify-audit", "check the audit log's hash chain; exit 1 if broken")
    _command(
        commands,
        "prune",
        "forget spent nonces, idempotency records and staff-card challenges past their use, and old "
        "kiosk telemetry",
    )
    _command(
        commands,
        "rollup",
        "add the captures settled since the last run to the monthly rollup the reports read",
    )
    alerts = _command(
        commands,
        "alerts",
        "fleet alerts: run the rules once and send the messages (for a timer), assign staff "
        "to kiosks, set how staff are reached, place kiosks and set slot levels",
    )
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True)
    alert_commands.add_parser("run-once", help="evaluate every rule, open/clear alerts, send")
    assign = alert_commands.add_parser("assign", help="make a staff user responsible for a kiosk")
    assign.add_argument("--kiosk", required=True, help="the kiosk's id")
    assign.add_argument("--staff", required=True, help="the staff user's name")
    contact = alert_commands.add_parser("contact", help="how a staff user is reached")
    contact.add_argument("--staff", required=True, help="the staff user's name")
    contact.add_argument("--email", help="a work e-mail address")
    contact.add_argument("--phone", help="a work phone, for the SMS gateway's webhook")
    locate = alert_commands.add_parser("locate", help="a kiosk's coordinates (WGS 84)")
    locate.add_argument("--kiosk", required=True, help="the kiosk's id")
    locate.add_argument("--lat", type=float, required=True, help="latitude, degrees")
    locate.add_argument("--lon", type=float, required=True, help="longitude, degrees")
    rule = alert_commands.add_parser("rule", help="change a rule (its other values are kept)")
    rule.add_argument(
        "--kind", required=True, choices=[k.value for k in AlertKind], help="which rule"
    )
    rule.add_argument("--threshold", type=float, help="minutes, or hours for no_dispense")
    rule.add_argument("--low", type=float, help="temperature only")
    rule.add_argument("--high", type=float, help="temperature only")
    rule.add_argument(
        "--quiet-minutes", type=int, help="after the alert clears, it does not open again for this long"
    )
    rule.add_argument("--enabled", choices=["yes", "no"], help="turn the rule on or off")
    alert_commands.add_parser("rules", help="print the rules in force as JSON")
    levels = alert_commands.add_parser("levels", help="a slot's restock minimum and capacity")
    levels.add_argument("--kiosk", required=True, help="the kiosk's id")
    levels.add_argument("--slot", type=int, required=True, help="the slot number")
    levels.add_argument("--minimum", type=int, help="restock when the slot holds fewer")
    levels.add_argument("--capacity", type=int, help="how many items the slot holds full")
    dhis2 = _command(
        commands,
        "dhis2",
        "the year's suppressed dispenses per village as a DHIS2 data value set: print it "
        "(json or csv) or push it to ONECARD_DHIS2_URL and print the import summary",
    )
    dhis2.add_argument(
        "action", choices=["export", "push"], help="print the data value set, or push it"
    )
    dhis2.add_argument("--mapping", type=Path, help="the mapping JSON (else ONECARD_DHIS2_MAPPING)")
    dhis2.add_argument("--year", type=int, required=True, help="the calendar year to report")
    dhis2.add_argument(
        "--period",
        choices=["month", "quarter", "year"],
        default="month",
        help="the DHIS2 period of each value",
    )
    dhis2.add_argument(
        "--format", choices=["json", "csv"], default="json", help="export: the output format"
    )
    _command(commands, "health", "check the database and the schema; exit 1 if a part is down")
    keygen = _command(
        commands,
        "keygen-secrets",
        "create the field key, signing key and card master secret as files (once, at install)",
    )
    keygen.add_argument(
        "--dir", required=True, type=Path, help="where to write them (e.g. /etc/onecard/keys)"
    )
    backup = _command(
        commands,
        "backup",
        "write an encrypted backup of the database and the secrets (docs/backup.md)",
    )
    backup.add_argument(
        "--out",
        required=True,
        type=Path,
        help="the backup file, or a directory to write onecard-<UTC time>.backup into",
    )
    backup.add_argument(
        "--recipient",
        type=Path,
        metavar="PUBFILE",
        help="seal to this X25519 public key (from keygen-backup-key) instead of a passphrase",
    )
    backup_key = _command(
        commands,
        "keygen-backup-key",
        "create a backup recipient key pair: KEYFILE (private, for restore) and KEYFILE.pub",
    )
    backup_key.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="KEYFILE",
        help="the private key file to write (keep it off the server); the public key goes to "
        "KEYFILE.pub",
    )
    restore = _command(
        commands, "restore", "put a backup back: secrets, then the database (stop the server)"
    )
    restore.add_argument("file", type=Path, help="the backup file")
    restore.add_argument(
        "--identity",
        type=Path,
        metavar="KEYFILE",
        help="open a backup sealed with --recipient with this private key file",
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace key files and CA files that differ from the backup's",
    )
    run = _command(
        commands, "run", "serve the API (development server; use gunicorn in production)"
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on")
    run.add_argument("--port", type=int, default=8080, help="port to listen on")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"onecard server: configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except DBAPIError as exc:
        url = _redact(database_url_of(settings_reader({})))
        print(f"onecard server: database {url}: {health.database_error_line(exc)}", file=sys.stderr)
        return EXIT_DATABASE
    except backups.BackupError as exc:
        print(f"onecard server: {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ApiError as exc:
        print(f"onecard server: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    # These work without a loadable configuration (a fresh machine has no secrets yet).
    if args.command == "keygen-secrets":
        return _keygen_secrets(args.dir)
    if args.command == "keygen-backup-key":
        return _keygen_backup_key(args.out)
    if args.command == "backup":
        return _backup(args.out, args.recipient)
    if args.command == "restore":
        return _restore(args.file, args.identity, force=args.force)

    config = ServerConfig.load()
    if args.command == "init-db":
        upgrade(config.database_url, field_key=config.field_key)
        print(f"schema is up to date ({_redact(config.database_url)})")
        return 0
    if args.command == "run":
        configure_logging()
        app = create_app(config)
        app.run(host=args.host, port=args.port, threaded=True)
        return 0

    app = create_app(config)
    ctx = context_of(app)
    try:
        with db.bound(app).sessionmaker() as session:
            if args.command == "seed-demo":
                seed = services.seed_demo(session, ctx)
                print(json.dumps(dataclasses.asdict(seed)))
            elif args.command == "add-kiosk":
                slots = _slots(args.slot)
                kiosk = services.add_kiosk(
                    session, ctx, args.kiosk_id, args.public_key, slots, region_code=args.region
                )
                print(
                    json.dumps(
                        {"kiosk_id": kiosk.id, "slots": {str(k): v for k, v in slots.items()}}
                    )
                )
            elif args.command == "add-station":
                station = services.add_station(
                    session, ctx, args.station_id, args.public_key, region_code=args.region
                )
                print(json.dumps({"station_id": station.id}))
            elif args.command == "verify-audit":
                return _verify_audit(session)
            elif args.command == "prune":
                nonces, records = services.prune(session, ctx)
                events = fleet.prune_kiosk_events(session, ctx.now())
                challenges = staff_cards.prune_challenges(session, ctx)
                session.commit()
                print(
                    json.dumps(
                        {
                            "nonces": nonces,
                            "idempotency_records": records,
                            "kiosk_events": events,
                            "staff_card_challenges": challenges,
                        }
                    )
                )
            elif args.command == "alerts":
                return _alerts(session, ctx, args)
            elif args.command == "rollup":
                touched = rollup.refresh(session, ctx)
                session.commit()
                print(json.dumps({"kiosk_months": touched}))
            elif args.command == "dhis2":
                return _dhis2(session, args)
            elif args.command == "health":
                parts = health.check(session)
                print(json.dumps({part.name: part.to_json() for part in parts}))
                return 0 if all(part.status != health.DOWN for part in parts) else EXIT_FAILED
            elif args.command == "create-user" and args.password_stdin:
                user_id = staff_auth.bootstrap_user(
                    session,
                    ctx,
                    name=args.name,
                    role=Role(args.role),
                    region_code=args.region,
                    password=_password_from_stdin(),
                )
                session.commit()
                print(json.dumps({"user_id": user_id, "name": args.name}))
            elif args.command == "create-user":
                token = services.create_user(
                    session, ctx, args.name, args.role, region_code=args.region
                )
                print(token)
            elif args.command == "set-password":
                staff_auth.set_password(
                    session, ctx, args.name, _password_from_stdin(), must_change=not args.keep
                )
                session.commit()
                print(f"password set for {args.name}")
            elif args.command == "tokens":
                return _tokens(session, ctx, args)
            elif args.command == "staff-card":
                if args.action == "assign":
                    card = (
                        _certificate_text(args.certificate)
                        if args.certificate
                        else args.guid or ""
                    )
                    guid = staff_cards.assign(session, ctx, args.name or "", card)
                    done = "assigned"
                else:
                    guid = staff_cards.revoke(session, ctx, args.guid or "", reason=args.reason)
                    done = "revoked"
                session.commit()
                print(json.dumps({"card_guid": guid, "status": done}))
            elif args.command == "reindex-residents":
                done = people.reindex_residents(session, ctx)
                session.commit()
                print(json.dumps({"reindexed": done}))
    finally:
        db.dispose(app)
    return 0


def _certificate_text(path: Path) -> str:
    """A certificate file as `staff_cards.identify` reads it: PEM as it is, DER as base64."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return data.decode("ascii", "replace")
    return base64.b64encode(data).decode()


def _alerts(session: Session, ctx: services.Context, args: argparse.Namespace) -> int:
    command = args.alerts_command
    if command == "run-once":
        notifier = Notifier(NotifySettings.from_config(os.environ))
        summary = alerts.run_once(session, ctx, notifier)
        print(json.dumps(summary.to_json()))
        return 0 if summary.failed == 0 else EXIT_FAILED
    if command == "rules":
        print(json.dumps([dataclasses.asdict(r) for r in alerts.rules(session)]))
        return 0
    if command == "rule":
        current = next(r for r in alerts.rules(session) if r.kind.value == args.kind)
        changes = {
            "threshold": args.threshold,
            "low": args.low,
            "high": args.high,
            "quiet_minutes": args.quiet_minutes,
            "enabled": None if args.enabled is None else args.enabled == "yes",
        }
        alerts.save_rule(
            session,
            ctx,
            "cli",
            dataclasses.replace(current, **{k: v for k, v in changes.items() if v is not None}),
        )
    elif command == "assign":
        alerts.assign(session, args.kiosk, args.staff)
    elif command == "contact":
        alerts.set_contact(session, args.staff, email=args.email, phone=args.phone)
    elif command == "locate":
        fleet.set_location(session, args.kiosk, args.lat, args.lon)
    elif command == "levels":
        fleet.set_slot_levels(
            session, args.kiosk, args.slot, minimum=args.minimum, capacity=args.capacity
        )
    session.commit()
    print("done")
    return 0


def _dhis2(session: Session, args: argparse.Namespace) -> int:
    path = args.mapping or os.environ.get("ONECARD_DHIS2_MAPPING")
    if not path:
        raise ConfigError("ONECARD_DHIS2_MAPPING (or --mapping) names no mapping file")
    try:
        mapping = Dhis2Mapping.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the DHIS2 mapping {path}: {exc}") from exc
    values = exports.data_value_set(session, mapping, args.year, period=args.period)
    session.rollback()
    for skipped in values.skipped:
        print(f"not mapped, left out: {skipped}", file=sys.stderr)
    if args.action == "export":
        print(values.to_csv() if args.format == "csv" else json.dumps(values.to_json(), indent=1))
        return 0
    url = os.environ.get("ONECARD_DHIS2_URL")
    if not url:
        raise ConfigError("ONECARD_DHIS2_URL is not set")
    summary = exports.push(
        url,
        os.environ.get("ONECARD_DHIS2_USER", ""),
        os.environ.get("ONECARD_DHIS2_PASSWORD", ""),
        values,
    )
    print(json.dumps(summary.to_json()))
    return 0 if not summary.conflicts and summary.status in ("SUCCESS", "OK") else EXIT_FAILED


def _password_from_stdin() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\n")


def _tokens(session: Session, ctx: services.Context, args: argparse.Namespace) -> int:
    if args.action == "list":
        for row in staff_auth.list_tokens(session, ctx):
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if args.action == "issue":
        if not args.name:
            raise ConfigError("tokens issue needs --name")
        user_id = session.scalar(select(StaffUser.id).where(StaffUser.name == args.name))
        if user_id is None:
            raise ConfigError(f"no user named {args.name!r}")
        token = staff_auth.issue_token(session, ctx, user_id, label=args.label, days=args.days)
    elif args.token_id is None:
        raise ConfigError(f"tokens {args.action} needs --id")
    elif args.action == "rotate":
        token = staff_auth.rotate_token(session, ctx, args.token_id, days=args.days)
    else:
        staff_auth.revoke_token(session, ctx, args.token_id)
        token = None
    session.commit()
    if token is not None:
        print(token)
    return 0


def _verify_audit(session: Session) -> int:
    broken = verify_chain(session)
    if broken is not None:
        print(f"audit log: the chain breaks at entry {broken}", file=sys.stderr)
        return EXIT_FAILED
    print("audit log: the chain is intact")
    return 0


def _passphrase(*, confirm: bool) -> str:
    given = os.environ.get(backups.PASSPHRASE_SETTING)
    if given:
        return given
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{backups.PASSPHRASE_SETTING} is not set and there is no terminal to ask"
        )
    first = getpass.getpass("backup passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigError("the two passphrases differ")
    return first


def _backup(out: Path, recipient: Path | None) -> int:
    if out.is_dir():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = out / f"onecard-{stamp}.backup"
    key = backups.load_recipient(recipient) if recipient else _passphrase(confirm=True)
    manifest = backups.backup(out, key)
    revisions = ", ".join(manifest["database"]["schema_revisions"]) or "none"
    print(
        f"backup written to {out}: {manifest['database']['kind']} database at schema "
        f"{revisions}, {len(manifest['files'])} files with SHA-256 in the manifest"
    )
    return 0


def _restore(path: Path, identity: Path | None, *, force: bool) -> int:
    key = backups.load_identity(identity) if identity else _passphrase(confirm=False)
    summary = backups.restore(path, key, force=force)
    print(
        f"restored the {summary.database} database of {summary.created} "
        f"(schema {', '.join(summary.schema_revisions) or 'none'}; {summary.files} files checked)"
    )
    for written in summary.keys_written:
        print(f"  key written: {written}")
    for note in summary.notes:
        print(f"  note: {note}")
    print("next: `onecard server init-db` (if this version is newer), then start the server")
    app = create_app(ServerConfig.load())
    try:
        with db.bound(app).sessionmaker() as session:
            return _verify_audit(session)
    finally:
        db.dispose(app)


def _keygen_backup_key(path: Path) -> int:
    public = backups.keygen_identity(path)
    print(f"private key (for restore --identity; keep it off the server): {path}")
    print(f"public key (for backup --recipient): {public}")
    return 0


def _keygen_secrets(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    targets = [directory / secret.file_name for secret in SECRETS]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)}")
    for secret, target in zip(SECRETS, targets, strict=True):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        print(f"{secret.setting}_FILE={target}")
    return 0


def _slots(specs: Sequence[str]) -> dict[int, str]:
    slots: dict[int, str] = {}
    for spec in specs:
        number, _, sku = spec.partition("=")
        if not number.strip().isdigit() or not sku.strip():
            raise SystemExit(f"onecard server add-kiosk: --slot wants N=SKU, got {spec!r}")
        slots[int(number)] = sku.strip()
    return slots


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user, colon, _password = credentials.partition(":")
        return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}"
    return url


if __name__ == "__main__":
    raise SystemExit(main())
