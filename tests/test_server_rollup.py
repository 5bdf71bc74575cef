"""The monthly rollup the area reports read (server.services.rollup), on SQLite and PostgreSQL:
the report is the same before a rollup, after it, after a second one (nothing added twice), and
with captures settled after the watermark (read live); the CLI runs it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from server.cli import main
from server.services import reports, rollup
from server.store.models import DispenseMonth
from tests.fixtures.database import ServerWorld
from tests.test_server_report_tables import add_dispenses, place


def live(w: ServerWorld) -> dict[tuple[str, str], int]:
    with w.sessionmaker() as session:
        table = reports.dispenses_by_area(session, 2026, level="village", period="month")
        session.rollback()
    return {
        (key, column): value
        for (key, _), cells in zip(table.rows, table.published.cells, strict=True)
        for column, value in zip(table.columns, cells, strict=True)
        if value
    }


def test_the_rollup_never_changes_a_figure(
    server_world: ServerWorld,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = server_world
    w.add_kiosk("K-VILLAGE")
    place(w, "K-VILLAGE", "C01-T01-V001")
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 3, 2), 12)
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 4, 2), 9)
    add_dispenses(w, w.kiosk.id, dt.date(2026, 4, 5), 7)
    before = live(w)
    assert before == {
        ("C01-T01-V001", "2026-03"): 12,
        ("C01-T01-V001", "2026-04"): 9,
        ("C01", "2026-04"): 7,
    }
    with w.sessionmaker() as session:
        assert rollup.refresh(session, w.ctx) == 3
        session.commit()
        assert rollup.refresh(session, w.ctx) == 0  # nothing settled since
        session.commit()
        assert session.scalar(select(func.sum(DispenseMonth.dispenses))) == 28
    assert live(w) == before
    # Settled after the watermark: read live until the next rollup, then from the rollup.
    add_dispenses(w, "K-VILLAGE", dt.date(2026, 11, 16), 6)
    with w.sessionmaker() as session:
        session.execute(
            text("UPDATE authorizations SET settled_at = :now WHERE usage_day = :day"),
            {"now": w.ctx.now(), "day": dt.date(2026, 11, 16)},
        )
        session.commit()
    after = {**before, ("C01-T01-V001", "2026-11"): 6}
    assert live(w) == after
    w.clock.advance(rollup.LAG.total_seconds() + 1)
    for name, value in w.environment(tmp_path / "ca.pem").items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    # The CLI reads the real clock, which is later than the test's: it rolls the new ones up.
    assert main(["rollup"]) == 0
    assert json.loads(capsys.readouterr().out) == {"kiosk_months": 1}
    assert live(w) == after
    with w.sessionmaker() as session:
        assert session.scalar(select(func.sum(DispenseMonth.dispenses))) == 34
