"""Aggregate reports, with small counts suppressed so a report cannot single out a person."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from server.services.context import _table
from server.services.people import subtree_ids
from server.store.models import Authorization, AuthorizationStatus, Kiosk, Region, StaffUser

SMALL_COUNT = 5


def monthly_report(
    session: Session,
    year: int,
    *,
    min_count: int = SMALL_COUNT,
    user: StaffUser | None = None,
) -> list[dict[str, Any]]:
    """Items dispensed per town (where the kiosk stands) per month of `year`.

    Aggregates only; a cell counting fewer than `min_count` dispenses is suppressed (None), so a
    report cannot single out a person. Kiosks stand in villages or communities; their town is
    the parent region. For a `user` scoped to an area, only the kiosks in that area count.
    """
    leaf = _table(Region).alias("leaf")
    town = _table(Region).alias("town")
    if session.get_bind().dialect.name == "postgresql":
        month = func.to_char(Authorization.usage_day, "YYYY-MM")
    else:
        month = func.strftime("%Y-%m", Authorization.usage_day)
    scope = (
        Kiosk.region_id.in_(subtree_ids(session, user.region_id))
        if user is not None and user.region_id is not None
        else true()
    )
    rows = session.execute(
        select(
            town.c.code,
            town.c.name,
            month.label("month"),
            func.count(),
            func.sum(Authorization.units),
        )
        .select_from(Authorization)
        .join(Kiosk, Kiosk.id == Authorization.kiosk_id)
        .join(leaf, leaf.c.id == Kiosk.region_id)
        .join(town, town.c.id == leaf.c.parent_id)
        .where(
            Authorization.status == AuthorizationStatus.CAPTURED,
            Authorization.usage_day >= dt.date(year, 1, 1),
            Authorization.usage_day < dt.date(year + 1, 1, 1),
            scope,
        )
        .group_by(town.c.code, town.c.name, month)
        .order_by(town.c.code, month)
    ).all()
    return [
        {
            "town": code,
            "town_name": name,
            "month": month_text,
            "dispenses": count if count >= min_count else None,
            "units": int(units) if count >= min_count else None,
        }
        for code, name, month_text, count, units in rows
    ]
