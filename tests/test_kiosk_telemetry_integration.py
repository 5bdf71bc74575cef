"""`onecard kiosk run` as its own process sends heartbeats from its background thread to the real
server, with the board driver's counters, while it serves taps; it also fetches and keeps the
signed configuration."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from kiosk.config_sync import CONFIG_FILE
from onecard.platform import KIOSK_ID, start_platform
from onecard.procs import Child
from tests.test_kiosk_process import wait_for_outcomes

pytestmark = pytest.mark.pcscd


def board_events(db_path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT detail FROM kiosk_events WHERE kind = 'board' AND kiosk_id = ? ORDER BY id",
            (KIOSK_ID,),
        ).fetchall()
    return [json.loads(detail) for (detail,) in rows]


def test_the_kiosk_process_sends_heartbeats_while_it_serves(tmp_path: Path, pcscd: object) -> None:
    with start_platform(tmp_path / "p", kiosk=False) as p:
        kiosk = Child("kiosk", p.kiosk_run_argv("--heartbeat-every", "0.5"))
        try:
            kiosk.wait_for_line(r"ready: waiting for cards", 30)
            p.card.insert()
            assert wait_for_outcomes(kiosk, 1) == ["dispensed"]
            p.card.remove()
            db_path = p.data_dir / "server.sqlite3"
            deadline = time.monotonic() + 30
            while len(events := board_events(db_path)) < 2:
                assert kiosk.proc.poll() is None, kiosk.tail()
                assert time.monotonic() < deadline, f"fewer than 2 heartbeats: {kiosk.tail()}"
                time.sleep(0.2)
        finally:
            kiosk.stop()
        assert kiosk.proc.returncode == 0, kiosk.tail()
        counters = events[-1]["counters"]
        assert isinstance(counters, dict)
        assert {"crc_errors", "retries", "resyncs"} <= set(counters)
        assert counters["frames_in"] > 0
        kept = json.loads((p.device_key_dir / CONFIG_FILE).read_text())
        assert kept["kiosk_id"] == KIOSK_ID and "signature" in kept
