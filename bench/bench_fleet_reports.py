"""Benchmark (issue 12), on PostgreSQL: a synthetic city with a year of activity, then
- the monthly report per town and per village (the suppressed tables the reports page shows),
  read from the monthly rollup (server.services.rollup, refreshed first as its timer would),
- the fleet page for every kiosk (server time of GET /fleet, signed in as a city administrator,
  and the fleet read alone),
- evaluating every alert rule over the fleet (read, evaluate, reconcile),
- a /metrics scrape (the fleet gauges read at scrape time).
Medians of --runs runs, printed with the scale used.

The issue's city is 100,000 residents, 1,000,000 dispenses, 20,000 exams and 2,400 kiosks;
`--scale 0.1` divides the residents, dispenses and exams by ten (the kiosks stay 2,400: the fleet
figures are about them), for a quicker run.

    .venv/bin/python bench/bench_fleet_reports.py [--scale 1.0] [--runs 5]
"""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import drop_postgres_database, postgres_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from server import synthetic  # noqa: E402
from server.app import context_of, create_app  # noqa: E402
from server.services import alerts, fleet, reports, rollup, staff_auth  # noqa: E402
from server.store.db import db  # noqa: E402
from server.store.migrate import upgrade  # noqa: E402
from server.store.models import Role  # noqa: E402

PASSWORD = "bench password 1"


def timed(label: str, runs: int, work: Callable[[], Any]) -> None:
    times = []
    result = None
    for _ in range(runs):
        began = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - began) * 1000)
    size = f" ({result})" if result is not None else ""
    print(
        f"  {label}: median {statistics.median(times):.0f} ms "
        f"(min {min(times):.0f}, max {max(times):.0f}){size}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--kiosks", type=int, default=2_400)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    residents = int(100_000 * args.scale)
    dispenses = int(1_000_000 * args.scale)
    exams = int(20_000 * args.scale)
    pg = postgres_database()
    if pg is None:
        print("PostgreSQL: not reachable at 127.0.0.1:5432; this benchmark needs it")
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="onecard-fleet-") as tmp:
            app = create_app(
                {
                    "ONECARD_DATABASE_URL": pg.url,
                    "ONECARD_DATA_DIR": tmp,
                    "ONECARD_FIELD_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
                    "ONECARD_COOKIE_SECURE": "0",
                    "ONECARD_PRODUCTION": "0",
                }
            )
            try:
                run(app, args, residents, dispenses, exams)
            finally:
                db.dispose(app)
    finally:
        assert pg.pg_user is not None and pg.pg_name is not None
        drop_postgres_database(pg.pg_user, pg.pg_name)
    return 0


def run(app: Any, args: argparse.Namespace, residents: int, dispenses: int, exams: int) -> None:
    upgrade(db.bound(app).engine)
    ctx = context_of(app)
    with db.bound(app).sessionmaker() as session:
        began = time.perf_counter()
        city = synthetic.generate(
            session,
            ctx,
            residents=residents,
            dispenses=dispenses,
            kiosks=args.kiosks,
            exams=exams,
            year=ctx.today().year - 1,  # a whole year of activity, all of it in the past
        )
        built = time.perf_counter() - began
        staff_auth.bootstrap_user(
            session, ctx, name="bench-admin", role=Role.ADMINISTRATOR, region_code=None,
            password=PASSWORD, must_change=False,
        )  # fmt: skip
        session.commit()
        session.execute(text("ANALYZE"))
        session.commit()
        print(
            f"PostgreSQL, scale {args.scale}: {city.residents} residents, {city.dispenses} "
            f"dispenses, {exams} exams, {city.kiosks} kiosks (+{city.towns} stations); "
            f"built in {built:.0f} s"
        )
        year = ctx.today().year - 1
        began = time.perf_counter()
        touched = rollup.refresh(session, ctx)  # what onecard-alerts.timer runs every minute
        session.commit()
        print(
            f"  rollup of the year's dispenses, first run: {(time.perf_counter() - began) * 1000:.0f} ms "
            f"({touched} kiosk-months)"
        )

        def refresh_again() -> str:
            again = rollup.refresh(session, ctx)
            session.commit()
            return f"{again} kiosk-months touched"

        timed("rollup, a minute later (nothing new settled)", args.runs, refresh_again)

        def report(level: str) -> Callable[[], str]:
            def work() -> str:
                table = reports.dispenses_by_area(session, year, level=level, period="month")
                session.rollback()
                return f"{len(table.rows)} rows x {len(table.columns)} months, {len(table.published.primary)} small, {len(table.published.complementary)} complementary"

            return work

        timed("monthly report per town", args.runs, report("town"))
        timed("monthly report per village", args.runs, report("village"))

        rules = alerts.rules(session)

        def read_fleet() -> str:
            rows = fleet.fleet(session, ctx, rules)
            session.rollback()
            return f"{len(rows)} kiosks and stations"

        timed("fleet read (services.fleet)", args.runs, read_fleet)

        began = time.perf_counter()
        summary, _ = alerts.evaluate_fleet(session, ctx)
        session.commit()  # the alerts open, as in production, for the page and the scrape
        print(
            f"  alert rules, first run over the fleet (opens every alert): "
            f"{(time.perf_counter() - began) * 1000:.0f} ms ({summary.opened} alerts opened)"
        )

        def evaluate() -> str:
            again, _ = alerts.evaluate_fleet(session, ctx)
            session.rollback()
            return f"{again.findings} findings, {again.opened} new"

        timed(
            "alert rules over the fleet, steady state (read + evaluate + reconcile)",
            args.runs,
            evaluate,
        )

    client = app.test_client()
    page = client.get("/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page
    )
    assert token is not None, "no CSRF token on the sign-in page"
    signed = client.post(
        "/sign-in", data={"csrf_token": token[1], "name": "bench-admin", "password": PASSWORD}
    )
    assert signed.status_code in (302, 303), signed.status_code

    def fleet_page() -> str:
        response = client.get("/fleet")
        assert response.status_code == 200, response.status_code
        return f"{len(response.data) // 1024} KiB, {summary.opened} open alerts"

    timed("fleet page GET /fleet (server time)", args.runs, fleet_page)

    def metrics() -> str:
        response = client.get("/metrics")
        assert response.status_code == 200
        return f"{len(response.data)} bytes"

    timed("GET /metrics (fleet gauges at scrape time)", args.runs, metrics)


if __name__ == "__main__":
    raise SystemExit(main())
