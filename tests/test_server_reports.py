"""The synthetic city and the monthly report per town, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from server import services, synthetic
from server.store.models import Authorization, Region, RegionKind, Usage
from tests.fixtures.database import ServerWorld
from tests.test_server_openapi import check_answer


def test_synthetic_city_and_monthly_report(server_world: ServerWorld) -> None:
    w = server_world
    with w.sessionmaker() as session:
        city = synthetic.generate(session, w.ctx, residents=600, dispenses=3_000, year=2026, seed=7)
        assert (city.towns, city.villages, city.communities) == (18, 811, 67)
        kinds = dict(
            session.execute(
                select(Region.kind, func.count())
                .where(Region.code.like("T%") | Region.code.like("L%"))
                .group_by(Region.kind)
            ).all()
        )
        assert kinds == {RegionKind.TOWN: 18, RegionKind.VILLAGE: 811, RegionKind.COMMUNITY: 67}
        assert session.scalar(select(func.count()).select_from(Authorization)) == 3_000
        assert session.scalar(select(func.sum(Usage.captured))) == 3_000
        rows = services.monthly_report(session, 2026, min_count=0)
        assert sum(r["dispenses"] for r in rows) == 3_000
        assert {r["month"] for r in rows} == {f"2026-{m:02d}" for m in range(1, 13)}
        assert len({r["town"] for r in rows}) == 18
        suppressed = services.monthly_report(session, 2026)
        small = {(r["town"], r["month"]) for r in rows if 0 < r["dispenses"] < services.SMALL_COUNT}
        hidden = {(r["town"], r["month"]) for r in suppressed if r["dispenses"] is None}
        assert small <= hidden  # and their complements (tests/test_domain_suppression.py)
        assert services.monthly_report(session, 2025) == []
        auditor = services.create_user(session, w.ctx, "auditor", "auditor")
    response = w.client.get(
        "/api/v1/reports/monthly?year=2026", headers={"Authorization": f"Bearer {auditor}"}
    )
    check_answer("GET", "/api/v1/reports/monthly", response)
    assert len(response.get_json()["rows"]) == len(rows)
    technician = w.client.get(
        "/api/v1/reports/monthly", headers={"Authorization": f"Bearer {w.token}"}
    )
    assert technician.status_code == 403
