"""Benchmark: the monthly report per town over a year of a synthetic city's dispenses.

Builds the synthetic city (18 towns, 811 villages, 67 communities; --residents people, --dispenses
dispenses over 2026) in a fresh SQLite file and, if reachable, a fresh PostgreSQL database, then
times `services.monthly_report` (median of 5 runs).

    .venv/bin/python bench/bench_server_report.py [--residents 100000] [--dispenses 300000]
"""

from __future__ import annotations

import argparse
import base64
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import drop_postgres_database, postgres_database  # noqa: E402

from server import services, synthetic  # noqa: E402
from server.app import context_of, create_app  # noqa: E402
from server.store.db import db  # noqa: E402
from server.store.migrate import upgrade  # noqa: E402


def run(label: str, url: str, data_dir: Path, residents: int, dispenses: int) -> None:
    app = create_app(
        {
            "ONECARD_DATABASE_URL": url,
            "ONECARD_DATA_DIR": str(data_dir),
            "ONECARD_FIELD_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
    )
    try:
        upgrade(db.bound(app).engine)
        ctx = context_of(app)
        with db.bound(app).sessionmaker() as session:
            began = time.perf_counter()
            synthetic.generate(session, ctx, residents=residents, dispenses=dispenses, year=2026)
            built = time.perf_counter() - began
            if session.get_bind().dialect.name == "postgresql":
                from sqlalchemy import text

                session.execute(text("ANALYZE"))
                session.commit()
            times = []
            for _ in range(5):
                began = time.perf_counter()
                rows = services.monthly_report(session, 2026)
                times.append((time.perf_counter() - began) * 1000)
                session.rollback()
        print(
            f"{label}: synthetic city of {residents} residents, {dispenses} dispenses built in {built:.1f} s"
        )
        print(
            f"  monthly report per town, 2026: {len(rows)} rows, median {statistics.median(times):.0f} ms "
            f"(min {min(times):.0f}, max {max(times):.0f})"
        )
    finally:
        db.dispose(app)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--residents", type=int, default=100_000)
    parser.add_argument("--dispenses", type=int, default=300_000)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-report-") as tmp:
        run(
            "SQLite",
            f"sqlite:///{Path(tmp) / 'city.db'}",
            Path(tmp),
            args.residents,
            args.dispenses,
        )
        if not args.sqlite_only:
            pg = postgres_database()
            if pg is None:
                print("PostgreSQL: not reachable at 127.0.0.1:5432, skipped")
                return 0
            try:
                run("PostgreSQL", pg.url, Path(tmp), args.residents, args.dispenses)
            finally:
                assert pg.pg_user is not None and pg.pg_name is not None
                drop_postgres_database(pg.pg_user, pg.pg_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
