"""Benchmark: authorize + capture over real HTTP, on SQLite and (if reachable) PostgreSQL.

The server runs in its own process (werkzeug's threaded server, request logging off), configured
from the environment as in production; the schema comes from the migrations. N simulated kiosks
(threads, each with its own device key, its own cards and a keep-alive connection) tap, authorize
and capture in a loop for a fixed time. Prints the number of authorize+capture pairs per second
and the p50/p99 latency of each call.

    .venv/bin/python bench/bench_server.py [--seconds 5] [--clients 16] [--sqlite-only]

Each kiosk's cards have a large allowance (the bench measures the path, not refusals); every
answer is checked, so an error fails the bench instead of inflating it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from cardsvc import requestsig
from cardsvc.ca import CardCA
from cardsvc.verify import TapChallenge

PG = "postgresql+psycopg://{user}@127.0.0.1:5432/{database}"
SERVE = """
import logging, sys
from werkzeug.serving import WSGIRequestHandler, make_server
from server.app import create_app
class Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass
logging.getLogger("werkzeug").setLevel(logging.ERROR)
httpd = make_server("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True, request_handler=Quiet)
httpd.serve_forever()
"""


@dataclass
class Kiosk:
    id: str
    key: Ed25519PrivateKey
    cards: list[tuple[bytes, ec.EllipticCurvePrivateKey]]
    counter: int = 0
    authorize_ms: list[float] = field(default_factory=list)
    capture_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(
    database_url: str, env: dict[str, str], ca: CardCA, clients: int, cards_per_kiosk: int
) -> list[Kiosk]:
    from server import services
    from server.app import context_of, create_app
    from server.db import db
    from server.migrate import upgrade
    from server.models import EntitlementRule

    app = create_app({**env, "ONECARD_DATABASE_URL": database_url})
    upgrade(db.bound(app).engine)
    ctx = context_of(app)
    kiosks = []
    try:
        with db.bound(app).sessionmaker() as session:
            seed = services.seed_demo(session, ctx)
            session.execute(update(EntitlementRule).values(units=10_000_000, per_visit_cap=None))
            session.commit()
            for i in range(clients):
                key = Ed25519PrivateKey.generate()
                kiosk_id = f"K-B{i:03d}"
                services.add_kiosk(
                    session,
                    ctx,
                    kiosk_id,
                    requestsig.public_key_to_raw(key.public_key()),
                    {1: seed.product_sku},
                )
                cards = []
                for _ in range(cards_per_kiosk):
                    resident = services.enrol_resident(
                        session,
                        ctx,
                        name="Bench Resident",
                        sex="F",
                        birth_date=datetime(1990, 1, 1).date(),
                        phone=None,
                        id_number="B" + secrets.token_hex(8),
                        region_id=seed.village_region_id,
                    )
                    card_key = ec.generate_private_key(ec.SECP256R1())
                    guid = secrets.token_bytes(16)
                    cert = ca.issue(
                        card_key.public_key(), guid, datetime.now(UTC) + timedelta(days=365)
                    )
                    services.issue_card(session, ctx, resident.id, cert, None)
                    cards.append((guid, card_key))
                session.commit()
                kiosks.append(Kiosk(kiosk_id, key, cards))
    finally:
        db.dispose(app)
    return kiosks


def signed_post(http: requests.Session, base: str, kiosk: Kiosk, path: str, body: dict) -> dict:  # type: ignore[type-arg]
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers = requestsig.sign(
        kiosk.key, kiosk.id, "POST", path, int(time.time()), secrets.token_hex(16), raw
    ).as_dict()
    headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = secrets.token_hex(12)
    response = http.post(base + path, data=raw, headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
    return response.json()  # type: ignore[no-any-return]


def drive(base: str, kiosk: Kiosk, deadline: float, start: threading.Barrier) -> None:
    with requests.Session() as http:
        start.wait()
        i = 0
        while time.perf_counter() < deadline:
            guid, card_key = kiosk.cards[i % len(kiosk.cards)]
            i += 1
            kiosk.counter += 1
            challenge = TapChallenge(
                kiosk.id, kiosk.counter, int(time.time() * 1000), secrets.token_bytes(16), guid
            )
            proof = challenge.to_json(
                card_key.sign(challenge.to_bytes(), ec.ECDSA(hashes.SHA256()))
            )
            try:
                t0 = time.perf_counter()
                answer = signed_post(
                    http, base, kiosk, "/api/v1/authorizations", {"proof": proof, "slot": 1}
                )
                t1 = time.perf_counter()
                if not answer.get("approved"):
                    raise RuntimeError(f"refused: {answer}")
                signed_post(
                    http,
                    base,
                    kiosk,
                    f"/api/v1/authorizations/{answer['authorization_id']}/capture",
                    {"board_txn": i},
                )
                t2 = time.perf_counter()
            except (RuntimeError, requests.RequestException) as exc:
                kiosk.errors.append(str(exc))
                continue
            kiosk.authorize_ms.append((t1 - t0) * 1000)
            kiosk.capture_ms.append((t2 - t1) * 1000)


def drive_noop(base: str, deadline: float, start: threading.Barrier, counts: list[int]) -> None:
    with requests.Session() as http:
        start.wait()
        n = 0
        while time.perf_counter() < deadline:
            if http.get(base + "/api/v1/health", timeout=30).status_code == 200:
                n += 1
        counts.append(n)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if len(values) > 1
        else values[0]
    )


def server_command(kind: str, port: int, workers: int) -> tuple[list[str], str]:
    if kind == "gunicorn":
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--threads",
            "8",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "server.wsgi:app",
        ]
        return command, f"gunicorn, {workers} workers x 8 threads"
    return [sys.executable, "-c", SERVE, str(port)], "werkzeug threaded server, 1 process"


def run(
    label: str, database_url: str, seconds: float, clients: int, kind: str, workers: int
) -> bool:
    with tempfile.TemporaryDirectory(prefix="onecard-bench-") as tmp:
        ca = CardCA.create(Path(tmp) / "ca")
        ca_path = Path(tmp) / "ca.pem"
        from cryptography.hazmat.primitives.serialization import Encoding

        ca_path.write_bytes(ca.certificate.public_bytes(Encoding.PEM))
        env = {
            "ONECARD_DATA_DIR": str(Path(tmp) / "data"),
            "ONECARD_FIELD_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "ONECARD_CARD_CA_CERT": str(ca_path),
        }
        kiosks = prepare(database_url, env, ca, clients, cards_per_kiosk=4)
        port = free_port()
        command, described = server_command(kind, port, workers)
        server = subprocess.Popen(
            command,
            env={**os.environ, **env, "ONECARD_DATABASE_URL": database_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    requests.get(base + "/api/v1/health", timeout=1)
                    break
                except requests.RequestException:
                    if server.poll() is not None:
                        raise RuntimeError(
                            server.stderr.read().decode() if server.stderr else "server died"
                        ) from None
                    time.sleep(0.05)
            start = threading.Barrier(clients + 1)
            began = time.perf_counter()
            deadline = began + seconds
            threads = [
                threading.Thread(target=drive, args=(base, k, deadline, start)) for k in kiosks
            ]
            for t in threads:
                t.start()
            start.wait()
            began = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - began
            # Baseline: the same server and clients on a no-op endpoint (no database, no crypto).
            counts: list[int] = []
            start = threading.Barrier(clients + 1)
            noop_seconds = min(seconds, 3.0)
            deadline = time.perf_counter() + noop_seconds
            threads = [
                threading.Thread(target=drive_noop, args=(base, deadline, start, counts))
                for _ in kiosks
            ]
            for t in threads:
                t.start()
            start.wait()
            for t in threads:
                t.join()
            noop_rate = sum(counts) / noop_seconds
        finally:
            server.terminate()
            server.wait(10)
    authorize = [v for k in kiosks for v in k.authorize_ms]
    capture = [v for k in kiosks for v in k.capture_ms]
    errors = [e for k in kiosks for e in k.errors]
    pairs = len(authorize)
    print(f"{label}: {clients} kiosks, {elapsed:.1f} s, {described}, {os.cpu_count()} CPUs")
    print(
        f"  authorize+capture pairs   {pairs}  ({pairs / elapsed:.0f}/s, {2 * pairs / elapsed:.0f} requests/s)"
    )
    print(
        f"  authorize latency ms      p50 {percentile(authorize, 50):.1f}  p99 {percentile(authorize, 99):.1f}"
    )
    print(
        f"  capture latency ms        p50 {percentile(capture, 50):.1f}  p99 {percentile(capture, 99):.1f}"
    )
    ratio = (2 * pairs / elapsed) / noop_rate if noop_rate else float("nan")
    print(
        f"  no-op GET /api/v1/health  {noop_rate:.0f} requests/s (kiosk calls run at {ratio:.2f} of it)"
    )
    if errors:
        print(f"  ERRORS {len(errors)}: {errors[0]}")
    return not errors


def postgres_database() -> tuple[str, str, str] | None:
    try:
        import psycopg

        for user in ("postgres", os.environ.get("USER", "root")):
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=5432,
                    user=user,
                    dbname="test",
                    autocommit=True,
                    connect_timeout=3,
                ) as c:
                    name = f"onecard_bench_{secrets.token_hex(4)}"
                    c.execute(f'CREATE DATABASE "{name}"')
                    return PG.format(user=user, database=name), user, name
            except psycopg.OperationalError:
                continue
    except ImportError:
        pass
    return None


def drop_postgres_database(user: str, name: str) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=5432, user=user, dbname="test", autocommit=True
    ) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sqlite-only", action="store_true")
    try:
        import gunicorn  # noqa: F401

        default_server = "gunicorn"
    except ImportError:
        default_server = "werkzeug"
    parser.add_argument("--server", choices=["gunicorn", "werkzeug"], default=default_server)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="onecard-bench-db-") as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        ok &= run("SQLite", sqlite_url, args.seconds, args.clients, args.server, args.workers)
    if not args.sqlite_only:
        pg = postgres_database()
        if pg is None:
            print("PostgreSQL: not reachable at 127.0.0.1:5432, skipped")
        else:
            url, user, name = pg
            try:
                ok &= run("PostgreSQL", url, args.seconds, args.clients, args.server, args.workers)
            finally:
                drop_postgres_database(user, name)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
