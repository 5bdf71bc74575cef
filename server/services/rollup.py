"""Dispenses rolled up per kiosk and month, so the area reports read thousands of rows instead of
a year of dispenses (a city's million).

`refresh` (`onecard server rollup`, run every minute by onecard-alerts.service) adds to
`dispense_months` every capture settled after the watermark and at least `LAG` ago, then moves
the watermark. A capture is final (an authorization never leaves `captured`) and its
`settled_at` is the server's clock when it was settled (online capture or offline sync alike),
so each is added exactly once; `LAG` leaves time for a settlement's transaction to commit
before its moment is passed (one lasts milliseconds). The state row is locked while a refresh
runs, so two at once do not add twice.

`area_counts` answers (region, month) -> (dispenses, units) for a year: the rolled-up months
plus the captures settled after the watermark, read through the partial index on settled_at.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Date, Integer, cast, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.services.context import Context
from server.store.models import (
    Authorization,
    AuthorizationStatus,
    DispenseMonth,
    Kiosk,
    RollupState,
)

NAME = "dispense_months"
LAG = dt.timedelta(minutes=5)
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _month_start(session: Session, column: object) -> object:
    if _postgres(session):
        return cast(func.date_trunc("month", column), Date)
    return func.date(column, "start of month")


def _month_number(session: Session, column: object) -> object:
    if _postgres(session):
        return cast(func.extract("month", column), Integer)
    return cast(func.strftime("%m", column), Integer)


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def watermark(session: Session) -> dt.datetime | None:
    value = session.scalar(select(RollupState.watermark).where(RollupState.name == NAME))
    return None if value is None else _utc(value)


def refresh(session: Session, ctx: Context) -> int:
    """Roll up the captures settled since the watermark (up to LAG ago); the kiosk-months
    touched. No commit: the caller commits, the state row stays locked until then."""
    upto = ctx.now() - LAG
    state = session.scalar(select(RollupState).where(RollupState.name == NAME).with_for_update())
    since = EPOCH if state is None else _utc(state.watermark)
    if upto <= since:
        return 0
    month = _month_start(session, Authorization.usage_day)
    rows = (
        session.connection()
        .execute(
            select(Authorization.kiosk_id, month, func.count(), func.sum(Authorization.units))
            .where(
                Authorization.status == AuthorizationStatus.CAPTURED,
                Authorization.settled_at > since,
                Authorization.settled_at <= upto,
            )
            .group_by(Authorization.kiosk_id, month)
        )
        .all()
    )
    if rows:
        insert = pg_insert if _postgres(session) else sqlite_insert
        values = [
            {
                "kiosk_id": kiosk_id,
                "month": first if isinstance(first, dt.date) else dt.date.fromisoformat(str(first)),
                "dispenses": int(n),
                "units": int(units or 0),
            }
            for kiosk_id, first, n, units in rows
        ]
        statement = insert(DispenseMonth)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["kiosk_id", "month"],
                set_={
                    "dispenses": DispenseMonth.dispenses + statement.excluded.dispenses,
                    "units": DispenseMonth.units + statement.excluded.units,
                },
            ),
            values,
        )
    if state is None:
        session.add(RollupState(name=NAME, watermark=upto))
    else:
        state.watermark = upto
    session.flush()
    return len(rows)


def area_counts(
    session: Session, year: int, scope: Sequence[int] | None
) -> dict[tuple[int, int], tuple[int, int]]:
    """(kiosk region id, month 1-12) -> (dispenses, units) of `year`, kiosks in `scope` (region
    ids; None: all): the rollup plus what was settled after its watermark."""
    first, end = dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
    since = watermark(session)
    in_scope = Kiosk.region_id.in_(list(scope)) if scope is not None else None
    counts: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    conn = session.connection()
    if since is not None:
        month = _month_number(session, DispenseMonth.month)
        query = (
            select(
                Kiosk.region_id,
                month,
                func.sum(DispenseMonth.dispenses),
                func.sum(DispenseMonth.units),
            )
            .join(Kiosk, Kiosk.id == DispenseMonth.kiosk_id)
            .where(DispenseMonth.month >= first, DispenseMonth.month < end)
            .group_by(Kiosk.region_id, month)
        )
        if in_scope is not None:
            query = query.where(in_scope)
        for region_id, m, n, units in conn.execute(query).all():
            counts[(region_id, int(m))][0] += int(n)
            counts[(region_id, int(m))][1] += int(units or 0)
    month = _month_number(session, Authorization.usage_day)
    tail = (
        select(Kiosk.region_id, month, func.count(), func.sum(Authorization.units))
        .join(Kiosk, Kiosk.id == Authorization.kiosk_id)
        .where(
            Authorization.status == AuthorizationStatus.CAPTURED,
            Authorization.usage_day >= first,
            Authorization.usage_day < end,
        )
        .group_by(Kiosk.region_id, month)
    )
    if since is not None:
        tail = tail.where(Authorization.settled_at > since)
    if in_scope is not None:
        tail = tail.where(in_scope)
    for region_id, m, n, units in conn.execute(tail).all():
        counts[(region_id, int(m))][0] += int(n)
        counts[(region_id, int(m))][1] += int(units or 0)
    return {key: (n, units) for key, (n, units) in counts.items()}
