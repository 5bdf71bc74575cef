"""Benchmark of the kiosk hot path over real HTTP: gunicorn + PostgreSQL (and optionally SQLite).

One run measures, on the same machine and the same database:
1. the kiosk path: N simulated kiosks (default 64, the issue's figure) authorize and capture in a
   loop; each authorization counts once it is captured. The kiosks run in a separate, lean
   load-generator process (bench/server_load_generator.py: asyncio, raw keep-alive HTTP, authorize
   requests signed before the clock starts), so its CPU is measured and kept small;
2. pgbench's simple-update TPS (`pgbench -N`, same number of clients) on the same database;
3. a no-op endpoint (`GET /api/v1/server-key`, no database) of the same server, same configuration, same clients.

4. the same kiosks in an open loop at 25, 50 and 75% of the rate measured in 1: taps arrive at
   random (Poisson) whether or not the server keeps up, and latency counts from when each tap was
   due. The closed loop's latency is only queueing (64 kiosks always waiting: 64 / rate, by
   Little's law); the open loop's is what a kiosk sees at a given load.

It prints authorizations/s, p50/p99 of authorize and capture, and the ratios to both baselines.

    .venv/bin/python bench/bench_server.py [--seconds 10] [--clients 64] [--database postgresql]
        [--workers <cores>] [--threads 4] [--server gunicorn|granian]

The server is started as in production (server.wsgi:app under gunicorn's gthread worker,
configured from the environment; the schema comes from the migrations). Each kiosk's cards have a
large allowance (the bench measures the path, not refusals); every answer is checked, so an error
fails the bench instead of inflating it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from sqlalchemy import update

from cardsvc import requestsig
from cardsvc.ca import CardCA

HERE = Path(__file__).resolve().parent
PG = "postgresql+psycopg://{user}@127.0.0.1:5432/{database}"
TARGET_RATE = 1500.0
TARGET_P99_MS = 20.0
TARGET_PGBENCH_RATIO = 0.15
# Open-loop runs after the closed loop, at these shares of the saturation rate it measured.
PACED_SHARES = (0.25, 0.5, 0.75)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(
    database_url: str, env: dict[str, str], ca: CardCA, clients: int, cards_per_kiosk: int
) -> list[dict[str, Any]]:
    """Seed the database; return the kiosks' specs for the load generator."""
    from server import services
    from server.app import context_of, create_app
    from server.store.db import db
    from server.store.migrate import upgrade
    from server.store.models import EntitlementRule

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
                    der = card_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
                    cards.append([guid.hex(), base64.b64encode(der).decode()])
                session.commit()
                raw_key = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
                kiosks.append(
                    {
                        "id": kiosk_id,
                        "key": base64.b64encode(raw_key).decode(),
                        "cards": cards,
                        "counter": 0,
                    }
                )
    finally:
        db.dispose(app)
    return kiosks


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def server_command(kind: str, port: int, workers: int, threads: int) -> list[str]:
    """The server as production starts it: gunicorn with server.gunicorn_config, or granian (a
    Rust WSGI server) with the same workers and threads, for the side-by-side figures."""
    if kind == "granian":
        return [
            str(Path(sys.executable).with_name("granian")),
            "--interface",
            "wsgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--blocking-threads",
            str(threads),
            "--backlog",
            "2048",
            "--log-level",
            "warning",
            "server.wsgi:app",
        ]
    return gunicorn_command(port, workers, threads)


def gunicorn_command(port: int, workers: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:server.gunicorn_config",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--backlog",
        "2048",
        "--keep-alive",
        "75",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "server.wsgi:app",
    ]


def load(spec_path: Path, mode: str, seconds: float, rate: float = 0.0) -> dict[str, Any]:
    """Run the load generator as its own process; its JSON result."""
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "server_load_generator.py"),
            str(spec_path),
            mode,
            str(seconds),
            str(rate),
        ],
        capture_output=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def pgbench_tps(user: str, database: str, clients: int, seconds: float) -> float | None:
    """pgbench -N (simple update: no branch/teller contention) on the same database."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return None
    common = ["-h", "127.0.0.1", "-p", "5432", "-U", user]
    subprocess.run(
        [pgbench, *common, "-i", "-q", "-s", "10", database], check=True, capture_output=True
    )
    done = subprocess.run(
        [
            pgbench,
            *common,
            "-N",
            "-n",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(int(seconds)),
            database,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    subprocess.run([pgbench, *common, "-i", "-I", "d", database], check=True, capture_output=True)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection", done.stdout)
    return float(match.group(1)) if match else None


@dataclass
class Database:
    label: str
    url: str
    pg_user: str | None = None
    pg_name: str | None = None


def run(db: Database, args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="onecard-bench-") as tmp:
        ca = CardCA.create(Path(tmp) / "ca")
        ca_path = Path(tmp) / "ca.pem"
        ca_path.write_bytes(ca.certificate.public_bytes(Encoding.PEM))
        env = {
            "ONECARD_DATA_DIR": str(Path(tmp) / "data"),
            "ONECARD_FIELD_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "ONECARD_CARD_CA_CERT": str(ca_path),
        }
        kiosks = prepare(db.url, env, ca, args.clients, cards_per_kiosk=4)
        pg_tps = None
        if db.pg_user and db.pg_name and not args.no_pgbench:
            pg_tps = pgbench_tps(db.pg_user, db.pg_name, args.clients, args.seconds)
        port = free_port()
        server = subprocess.Popen(
            server_command(args.server, port, args.workers, args.threads),
            env={**os.environ, **env, "ONECARD_DATABASE_URL": db.url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        spec_path = Path(tmp) / "spec.json"
        spec = {"host": "127.0.0.1", "port": port, "kiosks": kiosks}
        try:
            for _ in range(400):
                try:
                    urllib.request.urlopen(base + "/api/v1/health", timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError(
                            server.stderr.read().decode() if server.stderr else "server died"
                        ) from None
                    time.sleep(0.05)
            # Warm up every worker (imports, connection pools, caches), then measure.
            spec_path.write_text(json.dumps(spec))
            warm = load(spec_path, "kiosk", 2.0)
            for kiosk in kiosks:
                kiosk["counter"] = warm["counters"][kiosk["id"]]
            spec_path.write_text(json.dumps(spec))
            cpu_before = cpu_of_tree(server.pid)
            kiosk_run = load(spec_path, "kiosk", args.seconds)
            server_cpu = cpu_of_tree(server.pid) - cpu_before
            saturation = len(kiosk_run["authorize_ms"]) / kiosk_run["elapsed"]
            paced_runs = []
            last = kiosk_run
            for share in PACED_SHARES:
                for kiosk in kiosks:
                    kiosk["counter"] = last["counters"][kiosk["id"]]
                spec_path.write_text(json.dumps(spec))
                last = load(spec_path, "paced", args.seconds, share * saturation)
                paced_runs.append((share, share * saturation, last))
            noop_run = load(spec_path, "noop", min(args.seconds, 5.0))
        finally:
            server.terminate()
            server.wait(10)
    return report(db.label, args, kiosk_run, paced_runs, noop_run, pg_tps, server_cpu)


def cpu_of_tree(pid: int) -> float:
    """User+system CPU seconds of a process and its children, from /proc (Linux)."""
    return sum(cpu_split_of_tree(pid))


def cpu_split_of_tree(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children, from /proc (Linux)."""
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
        except OSError:
            pass
    return user, system


def report(
    label: str,
    args: argparse.Namespace,
    kiosk_run: dict[str, Any],
    paced_runs: list[tuple[float, float, dict[str, Any]]],
    noop_run: dict[str, Any],
    pg_tps: float | None,
    server_cpu: float,
) -> bool:
    authorize = kiosk_run["authorize_ms"]
    capture = kiosk_run["capture_ms"]
    elapsed = kiosk_run["elapsed"]
    rate = len(authorize) / elapsed
    noop_rate = len(noop_run["authorize_ms"]) / noop_run["elapsed"]
    p99 = percentile(authorize, 99)
    print(
        f"{label}: {args.clients} kiosks, {elapsed:.1f} s, {args.server} "
        f"{args.workers} workers x {args.threads} threads, {os.cpu_count()} CPUs"
    )
    print(
        f"  authorizations (each captured) {len(authorize)}: {rate:.0f}/s "
        f"({2 * rate:.0f} kiosk requests/s)   target >= {TARGET_RATE:.0f}/s"
    )
    print(
        f"  authorize latency ms   p50 {percentile(authorize, 50):.1f}  p99 {p99:.1f}"
        f"   target p99 <= {TARGET_P99_MS:.0f} (closed loop: {args.clients} kiosks always "
        f"waiting, so this is queueing, {args.clients}/rate by Little's law)"
    )
    print(
        f"  capture latency ms     p50 {percentile(capture, 50):.1f}  "
        f"p99 {percentile(capture, 99):.1f}"
    )
    if paced_runs:
        print(
            "  open loop (taps arrive at random at a set rate; latency counts from when each tap "
            "was due):"
        )
    for share, offered, run in paced_runs:
        done = len(run["authorize_ms"]) / run["elapsed"]
        a, c = run["authorize_ms"], run["capture_ms"]
        verdict = "meets" if percentile(a, 99) <= TARGET_P99_MS else "misses"
        print(
            f"    offered {offered:4.0f}/s ({share:.0%} of saturation), done {done:4.0f}/s: "
            f"authorize p50 {percentile(a, 50):.1f} p99 {percentile(a, 99):.1f} ms, "
            f"capture p50 {percentile(c, 50):.1f} p99 {percentile(c, 99):.1f} ms "
            f"({verdict} the p99 target)"
        )
    print(
        f"  CPU seconds per authorization+capture: server {1000 * server_cpu / max(1, len(authorize)):.2f} ms, "
        f"load generator {1000 * kiosk_run['cpu_seconds'] / max(1, len(authorize)):.2f} ms"
    )
    if pg_tps is not None:
        print(
            f"  pgbench -N             {pg_tps:.0f} TPS; authorizations/s at {rate / pg_tps:.3f} of it"
            f"   target >= {TARGET_PGBENCH_RATIO}"
        )
    noop_p50 = percentile(noop_run["authorize_ms"], 50)
    print(
        f"  no-op GET /api/v1/server-key {noop_rate:.0f} requests/s (p50 {noop_p50:.1f} ms); "
        f"kiosk requests/s at {2 * rate / noop_rate:.3f} of it, authorizations/s at "
        f"{rate / noop_rate:.3f}"
    )
    errors = kiosk_run["errors"] + noop_run["errors"]
    errors += [e for _, _, run in paced_runs for e in run["errors"]]
    if errors:
        print(f"  ERRORS {len(errors)}: {errors[0]}")
    return not errors


def postgres_database() -> Database | None:
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
                    return Database("PostgreSQL", PG.format(user=user, database=name), user, name)
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
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--database", choices=["postgresql", "sqlite", "both"], default="postgresql"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-pgbench", action="store_true")
    parser.add_argument("--server", choices=["gunicorn", "granian"], default="gunicorn")
    args = parser.parse_args()
    ok = True
    if args.database in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="onecard-bench-db-") as tmp:
            ok &= run(Database("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}"), args)
    if args.database in ("postgresql", "both"):
        pg = postgres_database()
        if pg is None:
            print("PostgreSQL: not reachable at 127.0.0.1:5432, skipped")
            return 1
        try:
            ok &= run(pg, args)
        finally:
            assert pg.pg_user and pg.pg_name
            drop_postgres_database(pg.pg_user, pg.pg_name)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
