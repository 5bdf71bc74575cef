"""Export to DHIS2 against a local stand-in (a real HTTP server) that checks what it receives
as DHIS2 would (path, method, basic auth, JSON shape, UIDs, periods) and answers an import
summary; the CLI prints the set as JSON and CSV, suppressed cells left out. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from server.cli import main
from server.domain.dhis2 import Dhis2Mapping, ElementMapping, document_problems
from server.services import exports
from tests.fixtures.database import ServerWorld
from tests.test_server_report_tables import add_dispenses, place

MAPPING = Dhis2Mapping(
    org_units={"C01-T01-V001": "WillowComm1", "C01-T02": "HillTown001"},
    elements={"dispenses": ElementMapping("CondomDisp1", "HllvX50cXC0")},
    data_set="OneCardSet1",
)


@dataclass
class StandIn:
    received: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        expected = "Basic " + base64.b64encode(b"exporter:secret").decode()
        problems = []
        if request.method != "POST" or request.path != "/dhis/api/dataValueSets":
            problems.append(f"{request.method} {request.path}")
        if request.headers.get("Authorization") != expected:
            problems.append("authentication")
        if request.mimetype != "application/json":
            problems.append(request.mimetype)
        document = json.loads(request.get_data() or b"null")
        problems += document_problems(document)
        if problems:
            self.refusals += problems
            body = {"httpStatus": "Conflict", "status": "ERROR", "response": {"responseType": "ImportSummary", "status": "ERROR", "importCount": {"imported": 0, "updated": 0, "ignored": 0, "deleted": 0}, "conflicts": [{"object": "request", "value": p} for p in problems]}}  # fmt: skip
            return Response(json.dumps(body), status=409, mimetype="application/json")(
                environ, start_response
            )
        self.received.append(document)
        count = len(document["dataValues"])
        body = {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK", "message": "Import was successful.", "response": {"responseType": "ImportSummary", "status": "SUCCESS", "importCount": {"imported": count, "updated": 0, "ignored": 0, "deleted": 0}, "conflicts": []}}  # fmt: skip
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


@pytest.fixture
def dhis2() -> Iterator[tuple[StandIn, str]]:
    stand_in = StandIn()
    httpd = make_server("127.0.0.1", 0, stand_in, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in, f"http://127.0.0.1:{httpd.server_port}/dhis"
    finally:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()


def test_the_published_figures_reach_dhis2_and_its_summary_is_read(
    server_world: ServerWorld, dhis2: tuple[StandIn, str]
) -> None:
    w = server_world
    stand_in, url = dhis2
    w.add_kiosk("K-VILLAGE")
    place(w, "K-VILLAGE", "C01-T01-V001")
    w.add_kiosk("K-HILL")
    place(w, "K-HILL", "C01-T02")
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 3, 2), 12)
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 4, 2), 9)
    add_dispenses(w, "K-HILL", dt.date(2026, 3, 9), 8)
    add_dispenses(w, "K-HILL", dt.date(2026, 4, 9), 2)  # small: hidden, with a complement
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 11, 2), 20)
    with w.sessionmaker() as session:
        values = exports.data_value_set(session, MAPPING, 2026, period="month")
    sent = {(v["orgUnit"], v["period"]): v["value"] for v in values.data_values}
    assert ("HillTown001", "202604") not in sent  # the 2: never sent, not even as zero
    assert sent[("WillowComm1", "202605")] == "0"
    # The 2's rectangle hides the 8 beside it and the 12 and 9 of the other village; the
    # November dispenses are published.
    for hidden in [("HillTown001", "202603"), ("WillowComm1", "202603"), ("WillowComm1", "202604")]:
        assert hidden not in sent
    assert sent[("WillowComm1", "202611")] == "20"
    summary = exports.push(url, "exporter", "secret", values)
    assert stand_in.refusals == []
    assert (summary.status, summary.imported, summary.conflicts) == ("SUCCESS", len(sent), ())
    assert stand_in.received == [values.to_json()]

    wrong = exports.push(url, "exporter", "wrong", values)
    assert wrong.status == "ERROR" and wrong.conflicts == ("authentication",)


def test_the_cli_prints_json_and_csv(
    server_world: ServerWorld,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = server_world
    w.add_kiosk("K-VILLAGE")
    place(w, "K-VILLAGE", "C01-T01-V001")
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 3, 2), 12)
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(MAPPING.to_json()))
    for name, value in w.environment(tmp_path / "ca.pem").items():
        monkeypatch.setenv(name, value)
    assert (
        main(
            ["dhis2", "export", "--mapping", str(mapping), "--year", "2026", "--period", "quarter"]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document_problems(document) == []
    assert [(v["orgUnit"], v["period"], v["value"]) for v in document["dataValues"]] == [
        ("WillowComm1", "2026Q1", "12"), ("WillowComm1", "2026Q2", "0"),
        ("WillowComm1", "2026Q3", "0"), ("WillowComm1", "2026Q4", "0"),
    ]  # fmt: skip
    assert (
        main(
            [
                "dhis2",
                "export",
                "--mapping",
                str(mapping),
                "--year",
                "2026",
                "--period",
                "year",
                "--format",
                "csv",
            ]
        )
        == 0
    )
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[1][:6] == ["CondomDisp1", "2026", "WillowComm1", "HllvX50cXC0", "", "12"]
