"""DHIS2 data value sets (server.domain.dhis2): built from published figures and a mapping,
in DHIS2's JSON and CSV shapes, suppressed figures left out, bad identifiers and periods refused."""

from __future__ import annotations

import csv
import io

import pytest

from server.domain.dhis2 import (
    CSV_COLUMNS,
    Dhis2Error,
    Dhis2Mapping,
    ElementMapping,
    Figure,
    build,
    document_problems,
)

MAPPING = Dhis2Mapping(
    org_units={"T01": "OrgUnitT01a", "V001": "OrgUnitV001"},
    elements={"dispenses": ElementMapping("DispensesDE", "HllvX50cXC0")},
    data_set="OneCardSet1",
)


def test_json_and_csv_carry_the_published_figures_only() -> None:
    figures = [
        Figure("dispenses", "T01", "202611", 42),
        Figure("dispenses", "V001", "2026Q4", None),  # suppressed: not sent, not zero
        Figure("dispenses", "V002", "2026", 17),  # no org unit mapped
        Figure("exams", "T01", "202611", 9),  # no data element mapped
    ]
    result = build(figures, MAPPING)
    document = result.to_json()
    assert document == {
        "dataSet": "OneCardSet1",
        "dataValues": [
            {
                "dataElement": "DispensesDE",
                "period": "202611",
                "orgUnit": "OrgUnitT01a",
                "categoryOptionCombo": "HllvX50cXC0",
                "value": "42",
            }
        ],
    }
    assert document_problems(document) == []
    assert result.skipped == ("dispenses@V002", "exams@T01")
    rows = list(csv.reader(io.StringIO(result.to_csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1][:6] == ["DispensesDE", "202611", "OrgUnitT01a", "HllvX50cXC0", "", "42"]
    assert len(rows) == 2


@pytest.mark.parametrize("period", ["202613", "2026-11", "2026Q5", "26", "2026W1"])
def test_periods_dhis2_does_not_know_are_refused(period: str) -> None:
    with pytest.raises(Dhis2Error):
        build([Figure("dispenses", "T01", period, 10)], MAPPING)


def test_a_mapping_with_bad_identifiers_is_refused_with_each_problem_named() -> None:
    with pytest.raises(Dhis2Error) as caught:
        Dhis2Mapping.from_json(
            {
                "org_units": {"T01": "short"},
                "elements": {
                    "dispenses": {
                        "data_element": "1StartsWithDigit",
                        "category_option_combo": "HllvX50cXC0",
                    }
                },
            }
        )
    assert len(caught.value.problems) == 2
    with pytest.raises(Dhis2Error):
        Dhis2Mapping.from_json({"elements": {"dispenses": {"data_element": "x"}}})
    assert Dhis2Mapping.from_json(MAPPING.to_json()) == MAPPING


def test_document_problems_name_what_dhis2_would_refuse() -> None:
    assert document_problems(
        {
            "dataValues": [
                {
                    "dataElement": "bad",
                    "period": "2026",
                    "orgUnit": "OrgUnitT01a",
                    "categoryOptionCombo": "HllvX50cXC0",
                    "value": "-1",
                }
            ]
        }
    ) == [
        "dataValues[0].dataElement is not a UID",
        "dataValues[0].value is not a count",
    ]
    assert document_problems([]) == ["not a data value set: no dataValues list"]
