"""`onecard kiosk run` with its screen, as its own process: the page in Chromium follows the
process, and a crash while the screen shows "dispensing" recovers as without a screen (the
board is asked, the item that fell is captured once) and the screen says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from onecard.platform import start_platform
from onecard.procs import Child, free_port
from tests.pages import assert_accessible, chromium, shot

pytestmark = pytest.mark.pcscd

# A motor that runs for 2 s: time to cut the kiosk's power while it turns.
SLOW_BOARD = {"timings": {"run_ms": 2000, "drop_delay_ms": 30, "drop_window_ms": 200, "max_run_ms": 4000, "boot_ms": 60}}  # fmt: skip


def wait_screen(page: Any, screen: str) -> None:
    page.wait_for_selector(f"body[data-screen={screen}]", timeout=30_000)


def authorizations(database_url: str) -> list[tuple[str, int | None]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT status, board_txn FROM authorizations"))
            return [(str(status), board_txn) for status, board_txn in rows]
    finally:
        engine.dispose()


def test_a_crash_while_dispensing_recovers_and_the_screen_says_so(
    tmp_path: Path, pcscd: object
) -> None:
    config = tmp_path / "board.json"
    config.write_text(json.dumps(SLOW_BOARD))
    with start_platform(tmp_path / "p", kiosk=False, board_args=["--config", str(config)]) as p:
        port = free_port()
        argv = p.kiosk_run_argv("--screen-port", str(port), screen=True)
        kiosk = Child("kiosk", argv)
        try:
            kiosk.wait_for_line(r"kiosk screen: ", 30)
            with chromium() as browser:
                context = browser.new_context(
                    viewport={"width": 1080, "height": 1920}, bypass_csp=True
                )
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                wait_screen(page, "idle")
                page.wait_for_selector("#offers li")  # the signed configuration arrived
                p.card.insert()
                wait_screen(page, "choosing")
                page.locator(".offer[data-slot='1'] button.take").click()
                page.wait_for_selector("#steps li[data-step=dispense][data-state=now]")
                kiosk.proc.kill()  # the kiosk's power is cut while the motor turns
                kiosk.stop()  # reaps it and closes its output
                p.card.remove()
                assert [s for s, _ in authorizations(p.server_env["ONECARD_DATABASE_URL"])] == [
                    "reserved"
                ]

                kiosk = Child("kiosk", argv)  # power back: the page reconnects by itself
                kiosk.wait_for_line(r"kiosk screen: ", 30)
                page.wait_for_function(
                    "document.getElementById('lines').innerText.includes('中断')",
                    timeout=30_000,
                )
                wait_screen(page, "idle")
                main = page.inner_text("main")
                assert "本机已处理完一笔中断的交易。" in main
                shot(page, tmp_path / "screenshots", "recovered-idle-zh")
                assert_accessible(page)
                context.close()
            [(status, board_txn)] = authorizations(p.server_env["ONECARD_DATABASE_URL"])
            assert status == "captured" and board_txn is not None  # it fell: charged once
        finally:
            kiosk.stop()
