"""Export to DHIS2: the published (suppressed) dispenses per village and period as a data value
set, and its push to a DHIS2 server (`POST /api/dataValueSets`) with the import summary read
back.

The figures come from the same suppressed table as the report (server.services.reports), at
village level with its totals, so DHIS2 learns nothing the report does not show; suppressed
cells are left out (server.domain.dhis2). The mapping (regions to org units, figure names to
data elements) is the administrator's: kept in the database from the reports page
(`stored_mapping`, `save_mapping`), or a JSON file for the CLI (`ONECARD_DHIS2_MAPPING`); the server
(`ONECARD_DHIS2_URL`) and its account (`ONECARD_DHIS2_USER`, `ONECARD_DHIS2_PASSWORD`) come
from the configuration.

Figure names: `dispenses` (captured dispenses at the kiosks of the org unit's village).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests
from sqlalchemy.orm import Session

from server.domain.dhis2 import DataValueSet, Dhis2Error, Dhis2Mapping, Figure, build
from server.errors import ServiceUnavailable
from server.services.context import Context
from server.services.reports import dispenses_by_area
from server.store import audit
from server.store.models import Dhis2MappingRow, StaffUser

TIMEOUT_S = 60.0


def stored_mapping(session: Session) -> Dhis2Mapping | None:
    """The administrator's mapping kept in the database (the reports page edits it)."""
    row = session.get(Dhis2MappingRow, 1)
    return None if row is None else Dhis2Mapping.from_json(json.loads(row.mapping))


def save_mapping(session: Session, ctx: Context, user: StaffUser, text: str) -> Dhis2Mapping:
    """Check and keep a mapping given as JSON; raises Dhis2Error naming each problem. No commit."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise Dhis2Error([f"not JSON: {exc}"]) from exc
    if not isinstance(document, dict):
        raise Dhis2Error(["not a JSON object"])
    mapping = Dhis2Mapping.from_json(document)
    row = session.get(Dhis2MappingRow, 1)
    if row is None:
        row = Dhis2MappingRow(id=1)
        session.add(row)
    row.mapping = json.dumps(mapping.to_json(), sort_keys=True)
    row.updated_at, row.updated_by = ctx.now(), user.id
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="dhis2.mapping",
        subject="dhis2_mapping:1",
        detail={"org_units": len(mapping.org_units), "elements": sorted(mapping.elements)},
    )
    return mapping


def dhis2_period(period_key: str) -> str:
    """Our period keys ('2026-11', '2026-Q4', '2026') in DHIS2's ISO form."""
    return period_key.replace("-Q", "Q").replace("-", "")


def figures(
    session: Session, year: int, *, period: str = "month", user: StaffUser | None = None
) -> list[Figure]:
    table = dispenses_by_area(session, year, level="village", period=period, user=user)
    found = []
    for (code, _), cells in zip(table.rows, table.published.cells, strict=True):
        for column, value in zip(table.columns, cells, strict=True):
            found.append(Figure("dispenses", code, dhis2_period(column), value))
    return found


def data_value_set(
    session: Session,
    mapping: Dhis2Mapping,
    year: int,
    *,
    period: str = "month",
    user: StaffUser | None = None,
) -> DataValueSet:
    return build(figures(session, year, period=period, user=user), mapping)


@dataclass(frozen=True)
class ImportSummary:
    status: str
    imported: int
    updated: int
    ignored: int
    deleted: int
    conflicts: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "conflicts": list(self.conflicts)}


def read_summary(answer: dict[str, Any]) -> ImportSummary:
    """DHIS2 answers an ImportSummary, wrapped in a WebMessage (`response`) since 2.38."""
    summary = answer.get("response", answer) if isinstance(answer.get("response"), dict) else answer
    count = summary.get("importCount", {})
    return ImportSummary(
        status=str(summary.get("status", answer.get("status", "?"))),
        imported=int(count.get("imported", 0)),
        updated=int(count.get("updated", 0)),
        ignored=int(count.get("ignored", 0)),
        deleted=int(count.get("deleted", 0)),
        conflicts=tuple(
            str(c.get("value", c)) if isinstance(c, dict) else str(c)
            for c in summary.get("conflicts", []) or []
        ),
    )


def push(url: str, user: str, password: str, values: DataValueSet) -> ImportSummary:
    """POST the set to `<url>/api/dataValueSets` and read its import summary."""
    try:
        response = requests.post(
            url.rstrip("/") + "/api/dataValueSets",
            json=values.to_json(),
            auth=(user, password),
            headers={"Accept": "application/json"},
            timeout=TIMEOUT_S,
        )
    except requests.RequestException as exc:
        raise ServiceUnavailable(
            f"DHIS2 could not be reached: {exc}", code="dhis2_unreachable"
        ) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ServiceUnavailable(
            f"DHIS2 answered {response.status_code} without an import summary", code="dhis2_refused"
        )
    return read_summary(answer)


def send(
    session: Session,
    ctx: Context,
    user: StaffUser,
    url: str,
    account: tuple[str, str],
    values: DataValueSet,
    label: str,
) -> ImportSummary:
    """Push for a staff member and record it in the audit log (what, how many, the answer).
    No commit."""
    summary = push(url, account[0], account[1], values)
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="dhis2.push",
        subject=f"dhis2:{label}",
        detail={
            "values": len(values.data_values),
            "status": summary.status,
            "imported": summary.imported,
            "conflicts": len(summary.conflicts),
        },
    )
    return summary
