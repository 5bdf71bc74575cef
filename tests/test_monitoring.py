"""The operator's monitoring (issue 12): the fleet's figures in /metrics, read at scrape time
from kiosks that sent heartbeats; deploy/monitoring's Prometheus rules pass `promtool check
rules`, the Grafana dashboard parses, and every metric either names is one the server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from server.services import alerts
from tests.fixtures.database import ServerWorld

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
RULES = MONITORING / "onecard-rules.yml"
DASHBOARD = MONITORING / "grafana-onecard.json"
SERIES = re.compile(r"^(\w+?)(?:\{(.*)\})? (\S+)$")


def scrape(w: ServerWorld) -> dict[str, float]:
    response = w.client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    found = {}
    for line in response.get_data(as_text=True).splitlines():
        match = SERIES.match(line)
        if match and not line.startswith("#"):
            found[f"{match[1]}{{{match[2] or ''}}}"] = float(match[3])
    return found


def test_the_fleet_figures_are_in_metrics(server_world: ServerWorld) -> None:
    w = server_world
    kiosk = w.add_kiosk("K-0002")
    response = w.post(
        "/api/v1/telemetry",
        {"stock": {"1": 0}, "events": [{"kind": "fault", "detail": {"board": ["jam"]}},
                                       {"kind": "board", "detail": {"door_open": True}}]},
        kiosk=kiosk,
    )  # fmt: skip
    assert response.status_code == 200
    assert w.post("/api/v1/telemetry", {"stock": {"1": 9}, "events": []}).status_code == 200
    with w.sessionmaker() as session:
        alerts.evaluate_fleet(session, w.ctx)
        session.commit()
    figures = scrape(w)
    assert figures['onecard_kiosks{kind="kiosk",state="online"}'] == 2
    assert figures['onecard_kiosks{kind="kiosk",state="offline"}'] == 0
    assert figures['onecard_slots{level="empty"}'] == 1
    assert figures["onecard_kiosks_faulted{}"] == 1
    assert figures["onecard_kiosks_door_open{}"] == 1
    assert figures['onecard_alerts_open{kind="fault"}'] == 1
    assert figures['onecard_alerts_open{kind="stock_empty"}'] == 1
    w.clock.advance(11 * 60)
    assert scrape(w)['onecard_kiosks{kind="kiosk",state="offline"}'] == 2


def exported_names(w: ServerWorld) -> set[str]:
    assert w.authorize().status_code == 200  # a request and an authorization: their series exist
    names = {key.split("{")[0] for key in scrape(w)}
    return names | {"up"}


def named_metrics(expression: str) -> set[str]:
    words = set(re.findall(r"\b(onecard_\w+|up)\b", expression))
    return words


def test_the_rules_pass_promtool_and_name_exported_metrics(server_world: ServerWorld) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (scripts/system-deps.sh)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    rules = yaml.safe_load(RULES.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "onecard-fleet" and dashboard["panels"]
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exported = exported_names(server_world)
    unknown = sorted({name for e in expressions for name in named_metrics(e)} - exported)
    assert unknown == [], f"metrics named but not exported: {unknown}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
