"""The fleet, restock and report pages in Debian's Chromium against the real server (its own
process, real HTTP), in Simplified Chinese and English, axe-core on every page, screenshots kept
(tests/pages.py): the fleet with its offline map and open alerts acknowledged and resolved, the
printable restock list, the reports with their server-drawn plots, tables and CSV downloads, and
a town technician who sees only the town's kiosks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from onecard.platform import start_server
from onecard.procs import free_port
from server import synthetic
from server.app import context_of, create_app
from server.services import alerts, fleet, seed_demo, staff_auth
from server.services.kiosks import add_kiosk, record_telemetry
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import Role
from tests.pages import assert_accessible, chromium, page_in, shot
from tests.test_server_dhis2_export import MAPPING, StandIn
from tests.test_station_page import random_public_key

FIELD_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
PASSWORD = "correct horse battery"


@dataclass
class Stage:
    url: str
    shots: Path
    dhis2: StandIn


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    base = tmp_path_factory.mktemp("fleet-pages")
    env = {
        "ONECARD_DATABASE_URL": f"sqlite:///{base / 'onecard.db'}",
        "ONECARD_DATA_DIR": str(base / "data"),
        "ONECARD_FIELD_KEY": FIELD_KEY,
        "ONECARD_COOKIE_SECURE": "0",
    }
    upgrade(env["ONECARD_DATABASE_URL"])
    app = create_app(env)
    try:
        with db.bound(app).sessionmaker() as session:
            ctx = context_of(app)
            seed = seed_demo(session, ctx)
            synthetic.generate(session, ctx, residents=400, dispenses=3_000, kiosks=12, exams=300)
            for name, role, region in [
                ("admin-city", Role.ADMINISTRATOR, None),
                ("tech-town", Role.TECHNICIAN, "C01-T01"),
                ("auditor-city", Role.AUDITOR, None),
            ]:
                staff_auth.bootstrap_user(
                    session,
                    ctx,
                    name=name,
                    role=role,
                    region_code=region,
                    password=PASSWORD,
                    must_change=False,
                )
            add_kiosk(
                session,
                ctx,
                "K-WILLOW",
                random_public_key(),
                {1: seed.product_sku},
                region_code="C01-T01-V001",
            )
            add_kiosk(
                session,
                ctx,
                "K-HILL",
                random_public_key(),
                {1: seed.product_sku},
                region_code="C01-T02",
            )
            fleet.set_location(session, "K-WILLOW", 31.05, 121.02)
            fleet.set_location(session, "K-HILL", 31.10, 121.20)
            fleet.set_slot_levels(session, "K-WILLOW", 1, minimum=4, capacity=30)
            record_telemetry(
                session, ctx, "K-WILLOW", stock={1: 0},
                events=[("board", {"door_open": False, "temperature_c": 21.5}), ("fault", {"board": ["jam"]})],
            )  # fmt: skip
            record_telemetry(session, ctx, "K-HILL", stock={1: 12}, events=[])
            alerts.evaluate_fleet(session, ctx)
            session.commit()
    finally:
        db.dispose(app)
    stand_in = StandIn()
    dhis2 = make_server("127.0.0.1", 0, stand_in, threaded=True)
    thread = threading.Thread(target=dhis2.serve_forever, daemon=True)
    thread.start()
    env.update(
        ONECARD_DHIS2_URL=f"http://127.0.0.1:{dhis2.server_port}/dhis",
        ONECARD_DHIS2_USER="exporter",
        ONECARD_DHIS2_PASSWORD="secret",
    )
    port = free_port()
    try:
        server = start_server({**os.environ, **env}, port)
        try:
            yield Stage(f"http://127.0.0.1:{port}", base / "screenshots", stand_in)
        finally:
            server.stop()
    finally:
        dhis2.shutdown()
        thread.join(10)
        dhis2.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def sign_in(page: Any, stage: Stage, name: str) -> None:
    page.goto(f"{stage.url}/sign-in")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")


WORDS = {
    "zh-CN": {"fleet": "设备", "open_alerts": "未处理的告警", "restock": "补货清单", "reports": "报表", "ack": "确认"},
    "en-US": {"fleet": "Fleet", "open_alerts": "Open alerts", "restock": "Restock list", "reports": "Reports", "ack": "Acknowledge"},
}  # fmt: skip


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_the_fleet_page_its_map_alerts_and_restock_list(
    stage: Stage, browser: Any, locale: str
) -> None:
    words = WORDS[locale]
    with page_in(browser, locale) as page:
        sign_in(page, stage, "admin-city")
        page.goto(f"{stage.url}/fleet")
        assert page.locator("h1").inner_text() == words["fleet"]
        assert page.locator("#alerts").inner_text() == words["open_alerts"]
        kiosks = page.locator("#fleet tbody tr[data-kiosk]")
        assert kiosks.count() == 12 + 2 + 18  # synthetic kiosks, the two placed here, 18 stations
        assert (
            page.locator('#fleet tr[data-kiosk="K-WILLOW"]').get_attribute("data-state") == "online"
        )
        # The map: the placed kiosks drawn, none fetched from anywhere.
        assert (
            page.locator("svg.map circle, svg.map rect[width='12'], svg.map polygon").count() >= 14
        )
        kinds = page.locator("#open-alerts tr[data-kiosk], #open-alerts tr[data-alert]")
        assert kinds.count() >= 2
        willow = page.locator('#open-alerts tr[data-kind="fault"]').first
        assert "K-WILLOW" in willow.inner_text()
        assert_accessible(page)
        shot(page, stage.shots, f"fleet-{locale}")
        if locale == "en-US":
            willow.get_by_role("button", name=words["ack"]).click()
            acknowledged = page.locator('#open-alerts tr[data-kind="fault"]').first
            assert acknowledged.locator(".badge").count() == 1
            acknowledged.get_by_role("button", name="Resolve").click()
            assert page.locator('#open-alerts tr[data-kind="fault"]').count() == 0
            page.goto(f"{stage.url}/fleet/alerts")
            assert "resolved by hand" in page.locator("#alert-history").inner_text()
            assert_accessible(page)
        page.goto(f"{stage.url}/fleet/restock")
        assert page.locator("h1").inner_text() == words["restock"]
        willow_line = page.locator('table.restock tr[data-kiosk="K-WILLOW"]')
        assert willow_line.locator("td").nth(5).inner_text() == "30"
        page.emulate_media(media="print")
        assert page.locator(".topbar").is_hidden()
        page.emulate_media(media="screen")
        assert_accessible(page)
        shot(page, stage.shots, f"restock-{locale}")
        assert page.script_errors == []


def test_a_town_technician_sees_the_towns_kiosks_only(stage: Stage, browser: Any) -> None:
    with page_in(browser, "en-US") as page:
        sign_in(page, stage, "tech-town")
        page.goto(f"{stage.url}/fleet")
        shown = page.locator("#fleet tbody tr[data-kiosk]").evaluate_all(
            "rows => rows.map(r => r.dataset.kiosk)"
        )
        assert shown == ["K-WILLOW"]
        assert page.goto(f"{stage.url}/reports").status == 403


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_the_reports_page_plots_tables_and_csv(stage: Stage, browser: Any, locale: str) -> None:
    with page_in(browser, locale) as page:
        sign_in(page, stage, "auditor-city")
        page.goto(f"{stage.url}/reports?year=2026&period=quarter&level=town")
        assert page.locator("h1").inner_text() == WORDS[locale]["reports"]
        area = page.locator('table[data-report="dispenses_by_area"]')
        towns = area.locator("tbody tr").count()
        assert towns >= 2  # the towns with a synthetic kiosk
        assert page.locator("#dispenses_by_area svg.chart").count() == 2
        assert page.locator('svg.chart[role="img"] title').count() >= 8
        exams = page.locator('table[data-report="exams_by_programme"] tbody tr')
        assert exams.count() >= 1
        assert_accessible(page)
        shot(page, stage.shots, f"reports-{locale}")
        link = page.locator("#dispenses_by_area a[download]")
        response = page.request.get(stage.url + link.get_attribute("href"))
        assert response.status == 200 and response.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(response.text())))
        assert rows[0] == ["town", "label", "2026-Q1", "2026-Q2", "2026-Q3", "2026-Q4", "total"]
        assert rows[-1][0] == "total" and rows[-1][-1] == "3000"
        assert len(rows) == towns + 2  # header, a row per town, the totals
        assert page.script_errors == []


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_an_administrator_keeps_a_dhis2_mapping_and_sends_the_figures(
    stage: Stage, browser: Any, locale: str
) -> None:
    with page_in(browser, locale) as page:
        sign_in(page, stage, "admin-city")
        page.goto(f"{stage.url}/reports?year=2026")
        page.click("#to-dhis2")
        page.fill("#mapping", "{not json")
        page.click("#save-mapping")
        assert page.locator('[data-field="mapping"] .error').count() == 1
        assert_accessible(page)
        mapping = MAPPING.to_json()
        mapping["org_units"] = {"L0000": "WillowComm1", "L0007": "HillTown001"}
        page.fill("#mapping", json.dumps(mapping))
        page.click("#save-mapping")
        assert page.locator("#value-count").count() == 1
        before = len(stage.dhis2.received)
        page.click("#send")
        summary = page.locator("#import-summary")
        assert "SUCCESS" in summary.inner_text()
        assert stage.dhis2.refusals == []
        assert len(stage.dhis2.received) == before + 1
        sent = stage.dhis2.received[-1]["dataValues"]
        assert {v["orgUnit"] for v in sent} <= {"WillowComm1", "HillTown001"}
        assert all(v["value"].isdigit() for v in sent)
        assert_accessible(page)
        shot(page, stage.shots, f"dhis2-{locale}")
        assert page.script_errors == []
