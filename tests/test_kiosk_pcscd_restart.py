"""pcscd restarts under a running kiosk: `onecard kiosk run` on the real platform, pcscd stopped
and started again while the kiosk waits for cards, and the next tap is served, charged once.

Only a pcscd this session started is restarted (`PcscdHandle.restart`, by its pid); with one that
was already running the test is skipped. Under CI=true the session starts its own pcscd.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cardsvc.vcard import VirtualPivCard
from cardsvc.vpcd import VpcdLink
from onecard.platform import Platform, start_platform
from onecard.procs import Child
from tests.fixtures.pcscd import PcscdHandle
from tests.test_kiosk_process import outcomes, start_kiosk, wait_for_outcomes

LOST = "card reader service lost; waiting for it"
BACK = "card reader service back"
LEFT = "card left; waiting for the next card"


def said(kiosk: Child, text: str) -> int:
    return sum(text in line for line in list(kiosk.lines))


def wait_until(condition: Callable[[], bool], timeout: float, what: str, kiosk: Child) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert kiosk.proc.poll() is None, f"the kiosk exited: {kiosk.tail(20)}"
        assert time.monotonic() < deadline, f"{what} not within {timeout} s: {kiosk.tail(20)}"
        time.sleep(0.05)


def server_rows(p: Platform, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{p.data_dir / 'server.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute(query).fetchall()


@pytest.mark.pcscd
def test_kiosk_process_serves_the_next_tap_after_pcscd_restarts(
    tmp_path: Path, pcscd: PcscdHandle
) -> None:
    if not pcscd.owned:
        pytest.skip("pcscd was already running and is not ours to restart (CI=true starts one)")
    with start_platform(tmp_path / "p", kiosk=False) as p:
        kiosk = start_kiosk(p)
        try:
            p.card.insert()
            assert wait_for_outcomes(kiosk, 1) == ["dispensed"]
            p.card.remove()
            # The kiosk waits out each card before the next one, across an outage too (so one
            # presence is never served twice): restart once it waits for the next card.
            kiosk.wait_for_line(LEFT, 30)

            old_pid = pcscd.pid
            pcscd.restart()  # while the kiosk waits for the next card
            assert pcscd.pid != old_pid

            started = time.monotonic()
            p.card.insert()  # the card-sim links to the new pcscd's vpcd
            seen = wait_for_outcomes(kiosk, 2, timeout=60)
            p.card.remove()
            print(f"tap served {time.monotonic() - started:.1f} s after pcscd came back")
            assert seen == ["dispensed", "dispensed"], kiosk.tail(20)
            assert any(LOST in line for line in kiosk.lines), kiosk.tail(20)
            assert any(BACK in line for line in kiosk.lines), kiosk.tail(20)
            assert any(
                f"allowance left: condoms {p.seed.limit - 2}" in line for line in kiosk.lines
            ), kiosk.tail(20)
        finally:
            kiosk.stop()
        assert kiosk.proc.returncode == 0, kiosk.tail(20)
    rows = server_rows(p, "SELECT status, units FROM authorizations ORDER BY created_at")
    assert rows == [("captured", 1), ("captured", 1)]


@pytest.mark.pcscd
def test_a_card_left_on_the_reader_through_a_restart_is_not_served_twice(
    tmp_path: Path, pcscd: PcscdHandle
) -> None:
    """The card-sim stays inserted: its link drops with pcscd and comes back to the new vpcd by
    itself, so the new pcscd shows a card; the kiosk, still waiting that card out, serves it
    only after it has been lifted and tapped again."""
    if not pcscd.owned:
        pytest.skip("pcscd was already running and is not ours to restart (CI=true starts one)")
    with start_platform(tmp_path / "p", kiosk=False) as p:
        kiosk = start_kiosk(p)
        try:
            p.card.insert()
            assert wait_for_outcomes(kiosk, 1) == ["dispensed"]

            pcscd.restart()  # the card stays in the reader
            wait_until(lambda: said(kiosk, BACK) == 1, 60, "the reader service back", kiosk)
            wait_until(
                lambda: p.card.send("status").startswith("ok inserted"),
                30,
                "the card linked to the new pcscd",
                kiosk,
            )
            # The kiosk polls every 0.5 s and sees a present card at once: a double serve
            # would show within this.
            time.sleep(2.0)
            assert outcomes(kiosk) == ["dispensed"], kiosk.tail(20)
            assert said(kiosk, LEFT) == 0

            p.card.remove()
            kiosk.wait_for_line(LEFT, 30)
            p.card.insert()
            assert wait_for_outcomes(kiosk, 2, timeout=60) == ["dispensed", "dispensed"]
            p.card.remove()
        finally:
            kiosk.stop()
        assert kiosk.proc.returncode == 0, kiosk.tail(20)
    rows = server_rows(p, "SELECT status, units FROM authorizations ORDER BY created_at")
    assert rows == [("captured", 1), ("captured", 1)]


def test_the_card_links_again_when_vpcd_drops_it() -> None:
    """What a pcscd restart is to the card: vpcd closes the socket; an inserted card connects
    again (to whatever listens on the port next) and answers there."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(10)
    link = VpcdLink(VirtualPivCard(None), "127.0.0.1", port)
    try:
        link.insert(wait=None)  # connects in the background
        first, _ = listener.accept()
        first.close()  # pcscd stopped
        second, _ = listener.accept()  # the link came back by itself
        with second:
            second.settimeout(10)
            second.sendall(bytes.fromhex("000104"))  # vpcd: get ATR
            answer = b""
            while len(answer) < 2 + len(link.card.atr):
                chunk = second.recv(100)
                assert chunk, "the card closed the new link"
                answer += chunk
            assert answer == len(link.card.atr).to_bytes(2, "big") + link.card.atr
            assert link.inserted
    finally:
        link.remove()
        listener.close()
    assert not link.inserted
