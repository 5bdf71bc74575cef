"""The fleet page for administrators and technicians, scoped to their area (issue 12).

GET  /fleet                          kiosks and stations: state, stock, faults, door,
                                     temperature, last dispense, open reservations; the
                                     offline map; the open alerts with acknowledge/resolve
GET  /fleet/restock                  the restock list by town (a route), printable
GET  /fleet/alerts                   the alert history
POST /fleet/alerts/<id>/acknowledge  someone is on it
POST /fleet/alerts/<id>/resolve      fixed: close it
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from flask import redirect, render_template, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from server.services import alerts, fleet
from server.store.db import db
from server.store.models import Role
from server.web.access import ctx, query_int, roles_required, staff_user
from server.web.base import register_navigation, staff_blueprint
from server.web.charts import MapPoint, fleet_map
from server.web.fleet_words import t, tl

fleet_pages = staff_blueprint("fleet", __name__, url_prefix="/fleet")
register_navigation(tl("Fleet"), "fleet.overview", Role.ADMINISTRATOR, Role.TECHNICIAN)
FLEET_ROLES = (Role.ADMINISTRATOR, Role.TECHNICIAN)

STATE_WORDS = {"online": tl("online"), "late": tl("late"), "offline": tl("offline")}
KIND_WORDS = {
    "offline": tl("offline"),
    "stock_low": tl("stock low"),
    "stock_empty": tl("empty"),
    "fault": tl("fault"),
    "door_open": tl("door open"),
    "temperature": tl("temperature out of range"),
    "no_dispense": tl("no dispense"),
    "reservation_open": tl("reservation open"),
}


PAGE_ROWS = 200
ALERTS_SHOWN = 50


def _needs_attention(row: fleet.FleetRow) -> bool:
    s = row.state
    return (
        row.connection.value != "online"
        or bool(s.faults)
        or bool(s.door_open)
        or any(slot.needs_restock for slot in row.slots)
    )


class ActionForm(FlaskForm):  # type: ignore[misc]
    """A button; its CSRF token only."""


@fleet_pages.context_processor
def _words() -> dict[str, Any]:
    return {"t": t, "state_word": STATE_WORDS.get, "kind_word": lambda k: KIND_WORDS.get(k, k)}


def _minutes_ago(moment: dt.datetime | None, now: dt.datetime) -> int | None:
    return None if moment is None else int((now - moment).total_seconds() // 60)


@fleet_pages.get("")
@roles_required(*FLEET_ROLES)
def overview() -> str:
    user = staff_user()
    now = ctx().now()
    in_force = alerts.rules(db.session)
    rows = fleet.fleet(db.session, ctx(), in_force, user=user)
    open_alerts = alerts.history(db.session, user, open_only=True, limit=ALERTS_SHOWN + 1)
    db.session.rollback()
    # What needs someone first; the table is paged, the counts and the map cover everything.
    rows.sort(key=lambda row: (not _needs_attention(row), row.town_code, row.kiosk_id))
    pages = max(1, -(-len(rows) // PAGE_ROWS))
    page = min(max(1, query_int("page", 1)), pages)
    counts = Counter(row.connection.value for row in rows)
    states = {state: str(word) for state, word in STATE_WORDS.items()}  # once, not per kiosk
    points = [
        MapPoint(
            row.kiosk_id,
            row.latitude,
            row.longitude,
            row.town_name,
            row.connection.value,
            f"{row.kiosk_id} · {row.region_name} · {states[row.connection.value]}",
        )
        for row in rows
        if row.latitude is not None and row.longitude is not None
    ]
    unplaced = sum(1 for row in rows if row.latitude is None or row.longitude is None)
    drawing = fleet_map(
        t("Map of the kiosks"),
        t(
            "%(placed)s kiosks placed by their coordinates over their towns; the table below lists every kiosk.",
            placed=len(points),
        ),
        points,
    )
    return render_template(
        "staff/fleet.html",
        rows=rows[(page - 1) * PAGE_ROWS : page * PAGE_ROWS],
        total=len(rows),
        page=page,
        pages=pages,
        more_alerts=len(open_alerts) > ALERTS_SHOWN,
        counts=counts,
        open_alerts=open_alerts[:ALERTS_SHOWN],
        drawing=drawing,
        unplaced=unplaced,
        now=now,
        minutes_ago=lambda moment: _minutes_ago(moment, now),
        states=states,
        action=ActionForm(),
    )


@fleet_pages.get("/restock")
@roles_required(*FLEET_ROLES)
def restock() -> str:
    rows = fleet.fleet(db.session, ctx(), alerts.rules(db.session), user=staff_user())
    lines = fleet.restock_list(rows)
    db.session.rollback()
    towns: dict[tuple[str, str], list[fleet.RestockLine]] = {}
    for line in lines:
        towns.setdefault((line.town_code, line.town_name), []).append(line)
    return render_template("staff/restock.html", towns=towns, printed=ctx().now())


@fleet_pages.get("/alerts")
@roles_required(*FLEET_ROLES)
def history() -> str:
    items = alerts.history(db.session, staff_user())
    db.session.rollback()
    return render_template("staff/fleet_alerts.html", items=items)


@fleet_pages.post("/alerts/<int:alert_id>/acknowledge")
@roles_required(*FLEET_ROLES)
def acknowledge(alert_id: int) -> Response:
    alerts.acknowledge(db.session, ctx(), staff_user(), alert_id)
    db.session.commit()
    return redirect(url_for("fleet.overview") + "#alerts")


@fleet_pages.post("/alerts/<int:alert_id>/resolve")
@roles_required(*FLEET_ROLES)
def resolve(alert_id: int) -> Response:
    alerts.resolve(db.session, ctx(), staff_user(), alert_id)
    db.session.commit()
    return redirect(url_for("fleet.overview") + "#alerts")
