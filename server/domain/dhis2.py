"""DHIS2 aggregate exchange: our published figures as a `dataValueSet` (JSON and CSV).

Pure: figures and a mapping in, the document out; the push (`POST /api/dataValueSets`) lives
in server.services.exports. The format is DHIS2's (Web API, "Data values"):

- JSON: `{"dataSet"?, "dataValues": [{"dataElement", "period", "orgUnit",
  "categoryOptionCombo", "attributeOptionCombo"?, "value"}]}`, identifiers being DHIS2 UIDs
  (11 characters: a letter, then letters or digits) and values strings;
- CSV: one data value per line, in DHIS2's column order `dataelement, period, orgunit,
  categoryoptioncombo, attributeoptioncombo, value, storedby, lastupdated, comment, followup`
  with a header line (DHIS2 reads the columns by position);
- periods in DHIS2's ISO forms: `202612` (month), `2026Q4` (quarter), `2026` (year).

The mapping is the administrator's: our region codes to org-unit UIDs, our figure names to a
data element and a category option combo. Only published (suppressed) figures are exported:
a suppressed cell is left out, never sent as zero, so DHIS2 learns no more than the report shows.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

UID = re.compile(r"^[A-Za-z][A-Za-z0-9]{10}$")
PERIOD = re.compile(r"^(\d{4})(?:(0[1-9]|1[0-2])|Q([1-4]))?$")
CSV_COLUMNS = (
    "dataelement",
    "period",
    "orgunit",
    "categoryoptioncombo",
    "attributeoptioncombo",
    "value",
    "storedby",
    "lastupdated",
    "comment",
    "followup",
)


class Dhis2Error(ValueError):
    """A mapping or a document that DHIS2 would refuse; `problems` names each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ElementMapping:
    data_element: str
    category_option_combo: str


@dataclass(frozen=True)
class Dhis2Mapping:
    org_units: Mapping[str, str]  # region code -> org unit UID
    elements: Mapping[str, ElementMapping]  # figure name -> data element and combo
    data_set: str | None = None
    attribute_option_combo: str | None = None

    def problems(self) -> list[str]:
        found = []
        for code, uid in sorted(self.org_units.items()):
            if not UID.match(uid):
                found.append(f"org unit for {code}: {uid!r} is not a DHIS2 UID")
        for figure, element in sorted(self.elements.items()):
            for label, uid in (
                ("data element", element.data_element),
                ("category option combo", element.category_option_combo),
            ):
                if not UID.match(uid):
                    found.append(f"{label} for {figure}: {uid!r} is not a DHIS2 UID")
        optional: tuple[tuple[str, str | None], ...] = (
            ("data set", self.data_set),
            ("attribute option combo", self.attribute_option_combo),
        )
        for label, maybe in optional:
            if maybe is not None and not UID.match(maybe):
                found.append(f"{label}: {maybe!r} is not a DHIS2 UID")
        return found

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Dhis2Mapping:
        try:
            mapping = cls(
                org_units={str(k): str(v) for k, v in document.get("org_units", {}).items()},
                elements={
                    str(k): ElementMapping(str(v["data_element"]), str(v["category_option_combo"]))
                    for k, v in document.get("elements", {}).items()
                },
                data_set=document.get("data_set"),
                attribute_option_combo=document.get("attribute_option_combo"),
            )
        except (AttributeError, KeyError, TypeError) as exc:
            raise Dhis2Error([f"mapping malformed: {exc}"]) from exc
        problems = mapping.problems()
        if problems:
            raise Dhis2Error(problems)
        return mapping

    def to_json(self) -> dict[str, Any]:
        return {
            "org_units": dict(self.org_units),
            "elements": {
                k: {
                    "data_element": v.data_element,
                    "category_option_combo": v.category_option_combo,
                }
                for k, v in self.elements.items()
            },
            "data_set": self.data_set,
            "attribute_option_combo": self.attribute_option_combo,
        }


@dataclass(frozen=True)
class Figure:
    """One published figure: what (`name`), where (a region code), when (a DHIS2 period)."""

    name: str
    region_code: str
    period: str
    value: int | None  # None: suppressed, not exported


@dataclass(frozen=True)
class DataValueSet:
    data_values: tuple[dict[str, str], ...]
    data_set: str | None = None
    skipped: tuple[str, ...] = field(default=())  # figures with no mapping, said to the user

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"dataValues": [dict(v) for v in self.data_values]}
        if self.data_set is not None:
            document = {"dataSet": self.data_set, **document}
        return document

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for v in self.data_values:
            writer.writerow(
                [
                    v["dataElement"],
                    v["period"],
                    v["orgUnit"],
                    v["categoryOptionCombo"],
                    v.get("attributeOptionCombo", ""),
                    v["value"],
                    "",
                    "",
                    "",
                    "",
                ]
            )
        return out.getvalue()


def period_problem(period: str) -> str | None:
    return (
        None if PERIOD.match(period) else f"period {period!r} is not a DHIS2 month, quarter or year"
    )


def build(figures: Iterable[Figure], mapping: Dhis2Mapping) -> DataValueSet:
    """The data value set for `figures`: suppressed ones left out, unmapped ones named in
    `skipped` (a region or a figure the administrator has not mapped)."""
    problems = mapping.problems()
    values: list[dict[str, str]] = []
    skipped: list[str] = []
    for figure in figures:
        problem = period_problem(figure.period)
        if problem:
            problems.append(problem)
            continue
        if figure.value is None:
            continue
        element = mapping.elements.get(figure.name)
        org_unit = mapping.org_units.get(figure.region_code)
        if element is None or org_unit is None:
            skipped.append(f"{figure.name}@{figure.region_code}")
            continue
        value = {
            "dataElement": element.data_element,
            "period": figure.period,
            "orgUnit": org_unit,
            "categoryOptionCombo": element.category_option_combo,
            "value": str(int(figure.value)),
        }
        if mapping.attribute_option_combo is not None:
            value["attributeOptionCombo"] = mapping.attribute_option_combo
        values.append(value)
    if problems:
        raise Dhis2Error(problems)
    return DataValueSet(tuple(values), mapping.data_set, tuple(sorted(set(skipped))))


def document_problems(document: Any) -> list[str]:
    """What DHIS2 would refuse in a JSON data value set (the checks its import makes on shape,
    identifiers and periods; not whether the UIDs exist on that server)."""
    if not isinstance(document, dict) or not isinstance(document.get("dataValues"), list):
        return ["not a data value set: no dataValues list"]
    found = []
    if "dataSet" in document and not UID.match(str(document["dataSet"])):
        found.append("dataSet is not a UID")
    for n, value in enumerate(document["dataValues"]):
        if not isinstance(value, dict):
            found.append(f"dataValues[{n}] is not an object")
            continue
        for key in ("dataElement", "orgUnit", "categoryOptionCombo"):
            if not UID.match(str(value.get(key, ""))):
                found.append(f"dataValues[{n}].{key} is not a UID")
        if "attributeOptionCombo" in value and not UID.match(str(value["attributeOptionCombo"])):
            found.append(f"dataValues[{n}].attributeOptionCombo is not a UID")
        problem = period_problem(str(value.get("period", "")))
        if problem:
            found.append(f"dataValues[{n}]: {problem}")
        if not re.fullmatch(r"\d+", str(value.get("value", ""))):
            found.append(f"dataValues[{n}].value is not a count")
    return found
