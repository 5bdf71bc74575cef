"""Aggregate reports for a district: every table small-count suppressed (server.domain.suppression)
before anyone sees it, scoped to the reader's area, with a CSV of each.

Tables (rows x columns, with row and column totals):
- dispenses by town or by village, per month, quarter or year (where the kiosk stands);
- dispenses by product or by category, per period;
- exams by programme or by station, per month;
- appointments kept and missed, per month (kept: an exam of the same programme recorded for the
  same person at the same station on the appointment's day; missed: a booking whose time has
  passed without one);
- residents enrolled and served (a dispense or an exam in the year), per town of residence.

A kiosk's town is the town or subdistrict above its region; a kiosk registered at city level
(where `add-kiosk` puts one by default) counts in a row of the city's own, instead of being
left out as the first report did. Counts are grouped by kiosk (or station) and month in SQL, then
rolled up in Python over the region tree (a city has ~1,000 regions), so one query serves
every level and period. The area tables read the monthly rollup (server.services.rollup) and
the captures settled since it last ran.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, func, select, true
from sqlalchemy.orm import Session

from server.domain.suppression import THRESHOLD, SuppressedTable, suppress
from server.errors import InvalidRequest
from server.services.context import Context
from server.services.people import subtree_ids
from server.services.rollup import area_counts
from server.store.models import (
    Appointment,
    Authorization,
    AuthorizationStatus,
    Category,
    ExamProgramme,
    ExamRecord,
    Kiosk,
    Product,
    Region,
    RegionKind,
    Resident,
    ResidentStatus,
    StaffUser,
)

SMALL_COUNT = THRESHOLD
TOWN_KINDS = frozenset({RegionKind.TOWN, RegionKind.SUBDISTRICT})
VILLAGE_KINDS = frozenset({RegionKind.VILLAGE, RegionKind.COMMUNITY})
PERIODS = ("month", "quarter", "year")
AREA_LEVELS = ("town", "village")


@dataclass(frozen=True)
class ReportTable:
    """One published table: its rows' and columns' labels and the suppressed counts."""

    name: str
    row_heading: str
    rows: tuple[tuple[str, str], ...]  # (key, label)
    columns: tuple[str, ...]
    published: SuppressedTable

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "row_heading": self.row_heading,
            "columns": list(self.columns),
            "rows": [
                {"key": key, "label": label, "cells": list(cells), "total": total}
                for (key, label), cells, total in zip(
                    self.rows, self.published.cells, self.published.row_totals, strict=True
                )
            ],
            "column_totals": list(self.published.column_totals),
            "total": self.published.total,
            "suppressed_below": self.published.threshold,
        }

    def to_csv(self) -> str:
        """Suppressed cells are empty fields (SUPPRESSED_NOTE says so beside the download)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([self.row_heading, "label", *self.columns, "total"])
        for (key, label), cells, total in zip(
            self.rows, self.published.cells, self.published.row_totals, strict=True
        ):
            writer.writerow([key, label, *(_csv_value(c) for c in cells), _csv_value(total)])
        writer.writerow(
            [
                "total",
                "",
                *(_csv_value(c) for c in self.published.column_totals),
                _csv_value(self.published.total),
            ]
        )
        return out.getvalue()


def _csv_value(value: int | None) -> str:
    return "" if value is None else str(value)


SUPPRESSED_NOTE = "empty cells are suppressed (fewer than 5, or hiding one that is)"


class RegionTree:
    """The region tree in memory: each region's town and village (or itself above them)."""

    def __init__(self, session: Session) -> None:
        self.regions = {
            rid: (parent, code, name, kind)
            for rid, parent, code, name, kind in session.execute(
                select(Region.id, Region.parent_id, Region.code, Region.name, Region.kind)
            )
        }

    def at_level(self, region_id: int, level: str) -> int:
        """The region's ancestor (or itself) at `level` ("town" or "village"); a region above
        that level stands for itself."""
        kinds = TOWN_KINDS if level == "town" else VILLAGE_KINDS
        current: int | None = region_id
        while current is not None:
            parent, _, _, kind = self.regions[current]
            if kind in kinds:
                return current
            current = parent
        return region_id

    def label(self, region_id: int) -> tuple[str, str]:
        _, code, name, _ = self.regions[region_id]
        return code, name


def _scope(session: Session, user: StaffUser | None) -> list[int] | None:
    if user is None or user.region_id is None:
        return None
    return subtree_ids(session, user.region_id)


def _in(column: Any, ids: list[int] | None) -> ColumnElement[bool]:
    return true() if ids is None else column.in_(ids)


def _month(session: Session, column: Any) -> Any:
    """The month number (1-12) of a date column: a number per row is cheaper than text."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("month", column), Integer)
    return cast(func.strftime("%m", column), Integer)


def _month_key(year: int, month: Any) -> str:
    return f"{year}-{int(month):02d}"


def period_of(month: str, period: str) -> str:
    """'2026-11' as the month, quarter ('2026-Q4') or year ('2026') it falls in."""
    if period == "month":
        return month
    if period == "quarter":
        return f"{month[:4]}-Q{(int(month[5:7]) - 1) // 3 + 1}"
    return month[:4]


def periods_of_year(year: int, period: str) -> tuple[str, ...]:
    if period == "month":
        return tuple(f"{year}-{m:02d}" for m in range(1, 13))
    if period == "quarter":
        return tuple(f"{year}-Q{q}" for q in range(1, 5))
    return (str(year),)


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise InvalidRequest(f"{what} must be one of {list(allowed)}", code="field_invalid")


def _table(
    name: str,
    row_heading: str,
    counts: dict[tuple[str, str], dict[str, int]],
    columns: Sequence[str],
) -> ReportTable:
    rows = tuple(sorted(counts))
    if not rows:  # nothing counted: every total is a zero, and zero is under the threshold
        empty = SuppressedTable(
            (), (), (None,) * len(columns), None, frozenset(), frozenset(), THRESHOLD
        )
        return ReportTable(name, row_heading, rows, tuple(columns), empty)
    matrix = [[counts[row].get(column, 0) for column in columns] for row in rows]
    return ReportTable(name, row_heading, rows, tuple(columns), suppress(matrix))


def _year_bounds(year: int) -> tuple[dt.date, dt.date]:
    return dt.date(year, 1, 1), dt.date(year + 1, 1, 1)


def _dispense_counts(
    session: Session, year: int, scope: list[int] | None, key: Any
) -> list[tuple[Any, str, int, int]]:
    """(key, month, dispenses, units) for the captured dispenses of `year` in scope."""
    first, end = _year_bounds(year)
    month = _month(session, Authorization.usage_day)
    query = (
        select(key, month, func.count(), func.sum(Authorization.units))
        .select_from(Authorization)
        .join(Kiosk, Kiosk.id == Authorization.kiosk_id)
        .where(
            Authorization.status == AuthorizationStatus.CAPTURED,
            Authorization.usage_day >= first,
            Authorization.usage_day < end,
            _in(Kiosk.region_id, scope),
        )
        .group_by(key, month)
    )
    # Core rows straight from the connection: the ORM's row handling costs more than the query.
    return [
        (k, _month_key(year, m), int(n), int(u or 0))
        for k, m, n, u in session.connection().execute(query).all()
    ]


def dispenses_by_area(
    session: Session,
    year: int,
    *,
    level: str = "town",
    period: str = "month",
    user: StaffUser | None = None,
) -> ReportTable:
    """Dispenses per town (or village) where the kiosk stands, per period of `year`."""
    _check(level, AREA_LEVELS, "level")
    _check(period, PERIODS, "period")
    tree = RegionTree(session)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (region_id, month), (n, _) in area_counts(session, year, _scope(session, user)).items():
        row = tree.label(tree.at_level(region_id, level))
        counts[row][period_of(_month_key(year, month), period)] += n
    return _table(f"dispenses_by_{level}", level, counts, periods_of_year(year, period))


def dispenses_by_product(
    session: Session,
    year: int,
    *,
    by: str = "product",
    period: str = "month",
    user: StaffUser | None = None,
) -> ReportTable:
    """Dispenses per product (or category) per period of `year`."""
    _check(by, ("product", "category"), "by")
    _check(period, PERIODS, "period")
    if by == "product":
        labels = {
            pid: (sku, name)
            for pid, sku, name in session.execute(select(Product.id, Product.sku, Product.name))
        }
        key = Authorization.product_id
    else:
        labels = {
            cid: (code, name)
            for cid, code, name in session.execute(
                select(Category.id, Category.code, Category.name)
            )
        }
        key = Authorization.category_id
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item, month, n, _ in _dispense_counts(session, year, _scope(session, user), key):
        counts[labels[item]][period_of(month, period)] += n
    return _table(f"dispenses_by_{by}", by, counts, periods_of_year(year, period))


def exams(
    session: Session, year: int, *, by: str = "programme", user: StaffUser | None = None
) -> ReportTable:
    """Exams given per programme (or station) per month of `year`."""
    _check(by, ("programme", "station"), "by")
    first, end = _year_bounds(year)
    key = ExamRecord.programme_id if by == "programme" else ExamRecord.station_id
    month = _month(session, ExamRecord.given_on)
    query = (
        select(key, month, func.count())
        .where(ExamRecord.given_on >= first, ExamRecord.given_on < end)
        .group_by(key, month)
    )
    scope = _scope(session, user)
    if scope is not None:
        query = query.join(Kiosk, Kiosk.id == ExamRecord.station_id).where(
            Kiosk.region_id.in_(scope)
        )
    if by == "programme":
        labels: dict[Any, tuple[str, str]] = {
            pid: (code, name)
            for pid, code, name in session.execute(
                select(ExamProgramme.id, ExamProgramme.code, ExamProgramme.name)
            )
        }
    else:
        labels = {sid: (sid, sid) for sid in session.scalars(select(Kiosk.id))}
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item, month, n in session.connection().execute(query):
        counts[labels[item]][_month_key(year, month)] += int(n)
    return _table(f"exams_by_{by}", by, counts, periods_of_year(year, "month"))


def appointments(
    session: Session, ctx: Context, year: int, *, user: StaffUser | None = None
) -> ReportTable:
    """Appointments kept and missed per month of `year`, every month a row (bookings still
    ahead are neither)."""
    first, end = _year_bounds(year)
    scope = _scope(session, user)
    rows = session.execute(
        select(
            Appointment.station_id,
            Appointment.programme_id,
            Appointment.resident_id,
            Appointment.starts_at,
        )
        .join(Kiosk, Kiosk.id == Appointment.station_id)
        .where(Appointment.status == "booked", _in(Kiosk.region_id, scope))
    ).all()
    given = {
        (s, p, r, d)
        for s, p, r, d in session.execute(
            select(
                ExamRecord.station_id,
                ExamRecord.programme_id,
                ExamRecord.resident_id,
                ExamRecord.given_on,
            )
            .join(Kiosk, Kiosk.id == ExamRecord.station_id)
            .where(
                ExamRecord.given_on >= first - dt.timedelta(days=1),
                ExamRecord.given_on < end + dt.timedelta(days=1),
                _in(Kiosk.region_id, scope),
            )
        )
    }
    now = ctx.now()
    counts: dict[tuple[str, str], dict[str, int]] = {
        (month, month): defaultdict(int) for month in periods_of_year(year, "month")
    }
    for station, programme, resident, starts_at in rows:
        day = ctx.today(_utc(starts_at))
        if not first <= day < end:
            continue
        month = f"{day:%Y-%m}"
        if (station, programme, resident, day) in given:
            counts[(month, month)]["kept"] += 1
        elif _utc(starts_at) < now:
            counts[(month, month)]["missed"] += 1
    return _table("appointments", "month", counts, ("kept", "missed"))


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def residents_served(
    session: Session, year: int, *, user: StaffUser | None = None
) -> tuple[ReportTable, ReportTable]:
    """Residents enrolled, and residents served in `year` (a dispense or an exam), per town of
    residence: two one-column tables, as the two are not added together."""
    first, end = _year_bounds(year)
    tree = RegionTree(session)
    scope = _scope(session, user)
    enrolled: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for region_id, n in session.execute(
        select(Resident.region_id, func.count())
        .where(Resident.status == ResidentStatus.ACTIVE, _in(Resident.region_id, scope))
        .group_by(Resident.region_id)
    ):
        enrolled[tree.label(tree.at_level(region_id, "town"))]["enrolled"] += int(n)
    dispensed = select(Authorization.resident_id.label("resident_id")).where(
        Authorization.status == AuthorizationStatus.CAPTURED,
        Authorization.usage_day >= first,
        Authorization.usage_day < end,
    )
    examined = select(ExamRecord.resident_id.label("resident_id")).where(
        ExamRecord.given_on >= first, ExamRecord.given_on < end
    )
    people = dispensed.union(examined).subquery()
    served: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for region_id, n in session.execute(
        select(Resident.region_id, func.count())
        .join(people, people.c.resident_id == Resident.id)
        .where(_in(Resident.region_id, scope))
        .group_by(Resident.region_id)
    ):
        served[tree.label(tree.at_level(region_id, "town"))]["served"] += int(n)
    return (
        _table("residents_enrolled", "town", enrolled, ("enrolled",)),
        _table("residents_served", "town", served, ("served",)),
    )


def monthly_report(
    session: Session,
    year: int,
    *,
    min_count: int = SMALL_COUNT,
    user: StaffUser | None = None,
) -> list[dict[str, Any]]:
    """Items dispensed per town (where the kiosk stands) per month of `year`, as rows of
    (town, month, dispenses, units); dispenses and units suppressed together (None) wherever
    the dispenses table hides the cell (`min_count` 0: nothing hidden, for tests and benches)."""
    tree = RegionTree(session)
    dispenses: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    units: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (region_id, month_number), (n, u) in area_counts(
        session, year, _scope(session, user)
    ).items():
        month = _month_key(year, month_number)
        row = tree.label(tree.at_level(region_id, "town"))
        dispenses[row][month] += n
        units[row][month] += u
    rows = sorted(dispenses)
    months = periods_of_year(year, "month")
    matrix = [[dispenses[r].get(m, 0) for m in months] for r in rows]
    shown = suppress(matrix, min_count).cells if rows else ()
    # Every cell of the table, zeros and suppressed ones included: leaving out a row would
    # publish it as zero.
    return [
        {
            "town": code,
            "town_name": name,
            "month": month,
            "dispenses": shown[i][j],
            "units": units[(code, name)][month] if shown[i][j] is not None else None,
        }
        for i, (code, name) in enumerate(rows)
        for j, month in enumerate(months)
    ]


__all__ = [
    "SMALL_COUNT",
    "SUPPRESSED_NOTE",
    "RegionTree",
    "ReportTable",
    "appointments",
    "dispenses_by_area",
    "dispenses_by_product",
    "exams",
    "monthly_report",
    "period_of",
    "periods_of_year",
    "residents_served",
]
