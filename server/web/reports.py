"""The district's reports page (issue 12): every table of server.services.reports for the
reader's area, suppressed, each with a plot drawn on the server and its table beside it (the
plot is an image for the eye; the table is what a screen reader reads), and a CSV of each.

    GET /reports?year=2026&period=month|quarter|year&level=town|village
    GET /reports/<table>.csv?...           one table as CSV (suppressed cells empty)
    GET  /reports/dhis2?year=&period=      the DHIS2 mapping, a preview of the data value set
    GET  /reports/dhis2.json, dhis2.csv    the data value set to download
    POST /reports/dhis2/mapping            keep a new mapping (administrators)
    POST /reports/dhis2/push               send the set to ONECARD_DHIS2_URL; its import summary
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as WerkzeugResponse
from wtforms import TextAreaField
from wtforms.validators import DataRequired, Length

from server.domain.dhis2 import Dhis2Error
from server.services import exports, reports
from server.services.reports import ReportTable
from server.store.db import db
from server.store.models import Role, StaffUser
from server.web.access import ctx, roles_required, staff_user
from server.web.base import register_navigation, staff_blueprint
from server.web.charts import bar_chart
from server.web.fleet_words import t, tl

report_pages = staff_blueprint("report_pages", __name__, url_prefix="/reports")
register_navigation(tl("Reports"), "report_pages.overview", Role.ADMINISTRATOR, Role.AUDITOR)
READERS = (Role.ADMINISTRATOR, Role.AUDITOR)

TITLES = {
    "dispenses_by_area": tl("Dispenses by area"),
    "dispenses_by_category": tl("Dispenses by category"),
    "dispenses_by_product": tl("Dispenses by product"),
    "exams_by_programme": tl("Exams by programme"),
    "exams_by_station": tl("Exams by station"),
    "appointments": tl("Appointments kept and missed"),
    "residents_enrolled": tl("Residents enrolled"),
    "residents_served": tl("Residents served this year"),
}
COLUMN_WORDS = {
    "kept": tl("kept"),
    "missed": tl("missed"),
    "enrolled": tl("enrolled"),
    "served": tl("served"),
}
ROW_WORDS = {
    "town": tl("town"),
    "village": tl("village"),
    "category": tl("category"),
    "product": tl("product"),
    "programme": tl("programme"),
    "station": tl("station"),
    "month": tl("month"),
}


@dataclass(frozen=True)
class Choice:
    year: int
    period: str
    level: str

    def args(self) -> dict[str, Any]:
        return {"year": self.year, "period": self.period, "level": self.level}


def _choice() -> Choice:
    today = ctx().today()
    raw_year = request.args.get("year", "")
    year = int(raw_year) if raw_year.isdigit() and 2000 <= int(raw_year) <= 2100 else today.year
    period = request.args.get("period", "month")
    level = request.args.get("level", "town")
    if period not in reports.PERIODS or level not in reports.AREA_LEVELS:
        abort(400)
    return Choice(year, period, level)


Builder = Callable[[Session, StaffUser, Choice], ReportTable]

BUILDERS: dict[str, Builder] = {
    "dispenses_by_area": lambda s, u, c: reports.dispenses_by_area(
        s, c.year, level=c.level, period=c.period, user=u
    ),
    "dispenses_by_category": lambda s, u, c: reports.dispenses_by_product(
        s, c.year, by="category", period=c.period, user=u
    ),
    "dispenses_by_product": lambda s, u, c: reports.dispenses_by_product(
        s, c.year, by="product", period=c.period, user=u
    ),
    "exams_by_programme": lambda s, u, c: reports.exams(s, c.year, by="programme", user=u),
    "exams_by_station": lambda s, u, c: reports.exams(s, c.year, by="station", user=u),
    "appointments": lambda s, u, c: reports.appointments(s, ctx(), c.year, user=u),
    "residents_enrolled": lambda s, u, c: reports.residents_served(s, c.year, user=u)[0],
    "residents_served": lambda s, u, c: reports.residents_served(s, c.year, user=u)[1],
}


@dataclass(frozen=True)
class Shown:
    name: str
    title: Any
    table: ReportTable
    plots: tuple[Markup, ...]
    csv_url: str


def _plots(name: str, table: ReportTable) -> tuple[Markup, ...]:
    suppressed = t("suppressed (under 5, or hiding one that is)")
    see_table = t("The figures are in the table below.")
    column_labels = [str(COLUMN_WORDS.get(c, c)) for c in table.columns]
    plots = []
    if len(table.columns) > 1:
        plots.append(
            bar_chart(
                t("%(title)s: total per column", title=TITLES[name]),
                see_table,
                column_labels,
                list(table.published.column_totals),
                suppressed=suppressed,
            )
        )
    if table.rows and name not in ("appointments",):
        plots.append(
            bar_chart(
                t("%(title)s: total per row", title=TITLES[name]),
                see_table,
                [label for _, label in table.rows],
                list(table.published.row_totals),
                suppressed=suppressed,
            )
        )
    return tuple(plots)


@report_pages.get("")
@roles_required(*READERS)
def overview() -> str:
    choice = _choice()
    user = staff_user()
    shown = []
    for name, build in BUILDERS.items():
        table = build(db.session, user, choice)
        shown.append(
            Shown(
                name,
                TITLES[name],
                table,
                _plots(name, table),
                url_for("report_pages.download", name=name, **choice.args()),
            )
        )
    db.session.rollback()
    return render_template(
        "staff/reports.html",
        choice=choice,
        shown=shown,
        periods=[("month", t("month")), ("quarter", t("quarter")), ("year", t("year"))],
        levels=[("town", t("town")), ("village", t("village"))],
        column_word=lambda c: COLUMN_WORDS.get(c, c),
        row_word=lambda r: ROW_WORDS.get(r, r),
        zip=zip,
        t=t,
    )


@report_pages.get("/<name>.csv")
@roles_required(*READERS)
def download(name: str) -> Response:
    build = BUILDERS.get(name)
    if build is None:
        abort(404)
    choice = _choice()
    table = build(db.session, staff_user(), choice)
    db.session.rollback()
    filename = f"onecard-{name}-{choice.year}-{choice.period}-{choice.level}.csv"
    return Response(
        table.to_csv(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- DHIS2 (administrators) -------------------------------------------------------------------


class MappingForm(FlaskForm):  # type: ignore[misc]
    mapping = TextAreaField(tl("Mapping (JSON)"), validators=[DataRequired(), Length(max=200_000)])


class PushForm(FlaskForm):  # type: ignore[misc]
    """The send button; year and period travel in the page's query."""


def _dhis2_page(mapping_form: MappingForm, summary: exports.ImportSummary | None = None) -> str:
    choice = _choice()
    mapping = exports.stored_mapping(db.session)
    values = None
    if mapping is not None:
        values = exports.data_value_set(
            db.session, mapping, choice.year, period=choice.period, user=staff_user()
        )
    db.session.rollback()
    return render_template(
        "staff/dhis2.html",
        choice=choice,
        mapping_form=mapping_form,
        push=PushForm(),
        values=values,
        summary=summary,
        target=os.environ.get(DHIS2_URL),
        periods=[("month", t("month")), ("quarter", t("quarter")), ("year", t("year"))],
        t=t,
    )


DHIS2_URL = "ONECARD_DHIS2_URL"


@report_pages.get("/dhis2")
@roles_required(Role.ADMINISTRATOR)
def dhis2() -> str:
    stored = exports.stored_mapping(db.session)
    form = MappingForm(
        data={"mapping": json.dumps(stored.to_json() if stored else SAMPLE_MAPPING, indent=1)}
    )
    return _dhis2_page(form)


SAMPLE_MAPPING = {
    "org_units": {"C01-T01-V001": "AbCdEfGhIj1"},
    "elements": {
        "dispenses": {"data_element": "AbCdEfGhIj2", "category_option_combo": "HllvX50cXC0"}
    },
    "data_set": None,
    "attribute_option_combo": None,
}


@report_pages.post("/dhis2/mapping")
@roles_required(Role.ADMINISTRATOR)
def dhis2_mapping() -> WerkzeugResponse | tuple[str, int]:
    form = MappingForm()
    if form.validate():
        try:
            exports.save_mapping(db.session, ctx(), staff_user(), form.mapping.data)
        except Dhis2Error as exc:
            db.session.rollback()
            form.mapping.errors = list(exc.problems)
        else:
            db.session.commit()
            flash(t("The mapping is kept."), "ok")
            return redirect(url_for("report_pages.dhis2", **_choice().args()))
    return _dhis2_page(form), 400


@report_pages.get("/dhis2.<kind>")
@roles_required(Role.ADMINISTRATOR)
def dhis2_download(kind: str) -> Response:
    mapping = exports.stored_mapping(db.session)
    if mapping is None or kind not in ("json", "csv"):
        abort(404)
    choice = _choice()
    values = exports.data_value_set(
        db.session, mapping, choice.year, period=choice.period, user=staff_user()
    )
    db.session.rollback()
    body = values.to_csv() if kind == "csv" else json.dumps(values.to_json(), indent=1)
    return Response(
        body,
        mimetype="text/csv" if kind == "csv" else "application/json",
        headers={
            "Content-Disposition": f'attachment; filename="dataValueSets-{choice.year}-{choice.period}.{kind}"'
        },
    )


@report_pages.post("/dhis2/push")
@roles_required(Role.ADMINISTRATOR)
def dhis2_push() -> str | tuple[str, int]:
    mapping = exports.stored_mapping(db.session)
    url = os.environ.get(DHIS2_URL)
    if mapping is None or not url:
        abort(409)
    choice = _choice()
    values = exports.data_value_set(
        db.session, mapping, choice.year, period=choice.period, user=staff_user()
    )
    summary = exports.send(
        db.session,
        ctx(),
        staff_user(),
        url,
        (os.environ.get("ONECARD_DHIS2_USER", ""), os.environ.get("ONECARD_DHIS2_PASSWORD", "")),
        values,
        f"{choice.year}:{choice.period}",
    )
    db.session.commit()
    stored = exports.stored_mapping(db.session)
    form = MappingForm(data={"mapping": json.dumps(stored.to_json() if stored else {}, indent=1)})
    return _dhis2_page(form, summary)
