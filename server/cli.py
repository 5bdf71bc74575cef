"""`onecard server ...`: init-db, seed-demo, add-kiosk, create-user, run.

`main(argv) -> exit status`; the `onecard` console script delegates its `server` subcommand here.
Configuration comes from the environment (server.config), as in production.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from server.config import ConfigError, ServerConfig
from server.errors import ApiError
from server.models import Role


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onecard server", description="The OneCard central server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init-db", help="create or upgrade the schema (Alembic migrations)")
    commands.add_parser(
        "seed-demo",
        help="regions, the condom category (3 a month), a product and a resident; prints ids as JSON",
    )
    kiosk = commands.add_parser("add-kiosk", help="register a kiosk's device key and slots")
    kiosk.add_argument("--id", required=True, dest="kiosk_id")
    kiosk.add_argument("--public-key", required=True, help="base64 of the raw 32-byte Ed25519 key")
    kiosk.add_argument("--slot", action="append", default=[], metavar="N=SKU", help="repeatable")
    kiosk.add_argument("--region", help="region code (default: the root region)")
    station = commands.add_parser("add-station", help="register a service station's device key")
    station.add_argument("--id", required=True, dest="station_id")
    station.add_argument(
        "--public-key", required=True, help="base64 of the raw 32-byte Ed25519 key"
    )
    station.add_argument("--region", help="region code (default: the root region)")
    user = commands.add_parser("create-user", help="create a staff user; prints its bearer token")
    user.add_argument("--name", required=True)
    user.add_argument("--role", required=True, choices=[r.value for r in Role])
    user.add_argument("--region", help="region code the user is scoped to (default: everywhere)")
    commands.add_parser("verify-audit", help="check the audit log's hash chain; exit 1 if broken")
    commands.add_parser("prune", help="forget spent nonces and idempotency records past their use")
    run = commands.add_parser(
        "run", help="serve the API (development server; use gunicorn in production)"
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"onecard server: configuration: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"onecard server: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    config = ServerConfig.load()
    if args.command == "init-db":
        from server.migrate import upgrade

        upgrade(config.database_url)
        print(f"schema is up to date ({_redact(config.database_url)})")
        return 0
    if args.command == "run":
        from server.app import create_app

        app = create_app(config)
        app.run(host=args.host, port=args.port, threaded=True)
        return 0

    from server import services
    from server.app import context_of, create_app
    from server.db import db

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
                from server.audit import verify_chain

                broken = verify_chain(session)
                if broken is not None:
                    print(f"audit log: the chain breaks at entry {broken}", file=sys.stderr)
                    return 1
                print("audit log: the chain is intact")
            elif args.command == "prune":
                nonces, records = services.prune(session, ctx)
                session.commit()
                print(json.dumps({"nonces": nonces, "idempotency_records": records}))
            elif args.command == "create-user":
                token = services.create_user(
                    session, ctx, args.name, args.role, region_code=args.region
                )
                print(token)
    finally:
        db.dispose(app)
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
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


if __name__ == "__main__":
    raise SystemExit(main())
