"""District reports (server.services.reports) on SQLite and PostgreSQL: the city-level kiosk's
dispenses counted (the first report left them out), every table by area, product, programme,
station and period, appointments kept and missed, residents served against enrolled; each
table small-count suppressed, scoped to the reader's area, and downloadable as CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid

from sqlalchemy import select

from server import services
from server.services import reports
from server.store.models import (
    Appointment,
    Authorization,
    AuthorizationStatus,
    Card,
    ExamProgramme,
    ExamRecord,
    Kiosk,
    Product,
    Region,
    StaffUser,
)
from tests.fixtures.database import ServerWorld
from tests.test_domain_suppression import check_protected

NOVEMBER = "2026-11"


def dispense_through_the_api(w: ServerWorld, times: int) -> None:
    """`times` dispenses at the world's kiosk (city level), three per resident (the monthly rule)."""
    done = 0
    card = w.card
    while done < times:
        if done and done % 3 == 0:
            card = w.issue_card(w.new_resident())
        authorized = w.authorize(card)
        assert authorized.status_code == 200, authorized.get_data(as_text=True)
        captured = w.capture(authorized.get_json()["authorization_id"])
        assert captured.status_code == 200, captured.get_data(as_text=True)
        done += 1


def test_a_city_level_kiosk_counts_in_the_report(server_world: ServerWorld) -> None:
    w = server_world
    dispense_through_the_api(w, 6)
    with w.sessionmaker() as session:
        city_level = session.scalar(
            select(Kiosk.region_id).where(Kiosk.id == w.kiosk.id)
        ) == session.scalar(select(Region.id).where(Region.code == "C01"))
        assert city_level  # where add-kiosk puts a kiosk by default
        rows = services.monthly_report(session, 2026)
        table = reports.dispenses_by_area(session, 2026, level="town")
        village = reports.dispenses_by_area(session, 2026, level="village", period="quarter")
    november = [r for r in rows if r["month"] == NOVEMBER]
    assert november == [
        {"town": "C01", "town_name": "Demo City", "month": NOVEMBER, "dispenses": 6, "units": 6}
    ]
    assert sum(r["dispenses"] or 0 for r in rows) == 6
    assert table.rows == (("C01", "Demo City"),)
    assert table.published.cells[0][10] == 6 and table.published.total == 6
    assert village.rows == (("C01", "Demo City"),) and village.published.cells[0] == (0, 0, 0, 6)


def add_dispenses(w: ServerWorld, kiosk_id: str, day: dt.date, count: int) -> None:
    with w.sessionmaker() as session:
        card_id = session.scalar(select(Card.id).where(Card.resident_id == w.seed.resident_id))
        top = session.scalar(
            select(Authorization.proof_counter)
            .where(Authorization.kiosk_id == kiosk_id)
            .order_by(Authorization.proof_counter.desc())
        )
        product_id, category_id = session.execute(
            select(Product.id, Product.category_id).where(Product.sku == w.seed.product_sku)
        ).one()
        at = dt.datetime.combine(day, dt.time(3), dt.UTC)
        for n in range(count):
            session.add(
                Authorization(
                    id=uuid.uuid4().hex,
                    kiosk_id=kiosk_id,
                    card_id=card_id,
                    resident_id=w.seed.resident_id,
                    product_id=product_id,
                    category_id=category_id,
                    slot=1,
                    quantity=1,
                    units=1,
                    usage_day=day,
                    proof_counter=(top or 0) + n + 1,
                    status=AuthorizationStatus.CAPTURED,
                    created_at=at,
                    settled_at=at,
                )
            )
        session.commit()


def place(w: ServerWorld, kiosk_id: str, region_code: str) -> None:
    with w.sessionmaker() as session:
        kiosk = session.get(Kiosk, kiosk_id)
        assert kiosk is not None
        kiosk.region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        session.commit()


def test_tables_by_area_product_and_period_are_suppressed_and_scoped(
    server_world: ServerWorld,
) -> None:
    w = server_world
    dispense_through_the_api(w, 1)  # the product and category exist in a row
    w.add_kiosk("K-VILLAGE")
    place(w, "K-VILLAGE", "C01-T01-V001")
    w.add_kiosk("K-HILL")
    place(w, "K-HILL", "C01-T02")
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 3, 2), 12)
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 4, 2), 2)  # small
    add_dispenses(w, "K-HILL", dt.date(2026, 3, 9), 9)
    add_dispenses(w, "K-HILL", dt.date(2026, 4, 9), 8)
    add_dispenses(w, "K-HILL", dt.date(2026, 11, 9), 3)  # small
    with w.sessionmaker() as session:
        towns = reports.dispenses_by_area(session, 2026, level="town", period="quarter")
        assert towns.rows == (
            ("C01", "Demo City"),
            ("C01-T01", "Riverside Subdistrict"),
            ("C01-T02", "Hill Town"),
        )
        truth = [[0, 0, 0, 1], [12, 2, 0, 0], [9, 8, 0, 3]]
        check_protected(truth, towns.published)
        assert towns.published.cells[1][1] is None and towns.published.cells[2][3] is None
        assert towns.published.cells[0][3] is None  # the city kiosk's single dispense
        by_year = reports.dispenses_by_area(session, 2026, level="village", period="year")
        assert by_year.rows[1] == ("C01-T01-V001", "Willow Community")
        check_protected([[1], [14], [20]], by_year.published)
        assert by_year.published.cells[0] == (None,)  # and one other row hides it
        assert by_year.published.total == 35
        product = reports.dispenses_by_product(session, 2026, by="category", period="month")
        assert product.rows == (("condoms", "Condoms"),)
        assert product.published.total == 35
        check_protected([[0, 0, 21, 10, 0, 0, 0, 0, 0, 0, 4, 0]], product.published)
        assert product.published.cells[0][2] == 21 and product.published.cells[0][10] is None

        hill = services.create_user(
            session, w.ctx, "hill-admin", "administrator", region_code="C01-T02"
        )
        assert hill
        hill_user = session.scalar(select(StaffUser).where(StaffUser.name == "hill-admin"))
        scoped = reports.dispenses_by_area(
            session, 2026, level="town", period="quarter", user=hill_user
        )
        assert scoped.rows == (("C01-T02", "Hill Town"),)
        assert scoped.published.row_totals == (20,)
        assert [r["town"] for r in services.monthly_report(session, 2026, user=hill_user)] == [
            "C01-T02"
        ] * 12

    rows = list(csv.reader(io.StringIO(towns.to_csv())))
    assert rows[0] == ["town", "label", "2026-Q1", "2026-Q2", "2026-Q3", "2026-Q4", "total"]
    assert rows[2][:4] == [
        "C01-T01",
        "Riverside Subdistrict",
        "12" if towns.published.cells[1][0] else "",
        "",
    ]
    assert rows[-1][0] == "total"
    assert towns.to_json()["rows"][2]["cells"] == list(towns.published.cells[2])


def test_exams_appointments_and_residents_served(server_world: ServerWorld) -> None:
    w = server_world
    w.add_kiosk("ST-1")
    place(w, "ST-1", "C01-T01-V001")
    residents = [w.seed.resident_id] + [w.new_resident() for _ in range(6)]
    with w.sessionmaker() as session:
        programme = session.scalar(
            select(ExamProgramme).where(ExamProgramme.code == "reproductive_health_check")
        )
        assert programme is not None
        now = w.ctx.now()  # 2026-11-16 10:00 in the city
        for n, resident in enumerate(residents):
            day = dt.date(2026, 10, 5 + n)
            starts = dt.datetime.combine(day, dt.time(1), dt.UTC)  # 09:00 in the city
            session.add(
                Appointment(
                    station_id="ST-1",
                    programme_id=programme.id,
                    resident_id=resident,
                    starts_at=starts,
                    status="booked",
                    created_at=now,
                )
            )
            if n < 5:  # five came, two did not
                session.add(
                    ExamRecord(
                        programme_id=programme.id,
                        resident_id=resident,
                        station_id="ST-1",
                        given_on=day,
                        created_at=now,
                    )
                )
        session.add(  # a booking still ahead is neither kept nor missed
            Appointment(
                station_id="ST-1",
                programme_id=programme.id,
                resident_id=residents[0],
                starts_at=now + dt.timedelta(days=3),
                status="booked",
                created_at=now,
            )
        )
        session.commit()
        kept = reports.appointments(session, w.ctx, 2026)
        assert [key for key, _ in kept.rows] == [f"2026-{m:02d}" for m in range(1, 13)]
        assert kept.columns == ("kept", "missed")
        # October: kept 5, missed 2 (small, so hidden with its complements); nothing yet in
        # November.
        truth = [[0, 0]] * 9 + [[5, 2], [0, 0], [0, 0]]
        check_protected(truth, kept.published)
        assert kept.published.cells[9][1] is None and kept.published.cells[10] == (0, 0)
        by_programme = reports.exams(session, 2026, by="programme")
        assert by_programme.rows == (("reproductive_health_check", programme.name),)
        assert by_programme.published.cells[0][9] == 5
        by_station = reports.exams(session, 2026, by="station")
        assert by_station.rows == (("ST-1", "ST-1"),)
        enrolled, served = reports.residents_served(session, 2026)
        assert enrolled.rows == (("C01-T01", "Riverside Subdistrict"),)
        assert enrolled.published.cells == ((7,),)
        assert served.published.cells == ((5,),)
