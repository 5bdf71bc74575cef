"""Offline mode on the real stack: the server process stopped and started again, the card through
pcscd, the board over a pty, the sync over HTTP into the server's database.

With the server gone, a tap is approved by the kiosk alone within the signed allowance and the
next is refused; with the server back, the sync applies the offline dispense exactly once, also
when its first answer was lost and the kiosk restarted and sent it again. The same approval is
then seen from `onecard kiosk run` as its own process.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kiosk.client import ServerClient
from kiosk.config_sync import CONFIG_FILE, ConfigSync
from kiosk.errors import ServerUnavailableError
from kiosk.journal import Journal, TxnState
from kiosk.offline import OfflineMode, Reason
from kiosk.tap import Kiosk, TapOutcome
from kiosk.telemetry import Chore, Chores, Heartbeat
from onecard.platform import KIOSK_ID, Platform, start_platform, start_server
from server.services.seeding import LUBE_RULE_UNITS
from tests.test_kiosk_integration import tap
from tests.test_kiosk_process import start_kiosk, wait_for_outcomes

pytestmark = pytest.mark.pcscd


def server_rows(p: Platform, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{p.data_dir / 'server.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute(query).fetchall()


def offline_kiosk(p: Platform, journal: Journal, server: Any, signed: ConfigSync) -> Kiosk:
    return Kiosk(
        kiosk_id=KIOSK_ID,
        journal=journal,
        server=server,
        board=p.board,
        ca_certificate_der=p.ca.certificate_der,
        offline=OfflineMode(journal, lambda: signed.current, lambda: server.last_contact),
    )


class LosesSyncAnswers:
    """The real client, but the answer to POST /sync never comes back (the server applied it)."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client

    def sync(self, transactions: list[dict[str, Any]], idempotency_key: str) -> dict[str, Any]:
        self.client.sync(transactions, idempotency_key)
        raise ServerUnavailableError("the answer was lost")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_offline_within_the_allowance_then_synced_once_across_a_restart(
    tmp_path: Path, pcscd: object
) -> None:
    with start_platform(tmp_path / "p") as p:
        signed = ConfigSync(p.client, p.device_key_dir, KIOSK_ID)  # key pinned by the platform
        config = signed.refresh()
        assert config.offline.units_per_card_per_day >= 1
        journal = p.kiosk.journal
        kiosk = offline_kiosk(p, journal, p.client, signed)

        # The heartbeat, from the chores thread, reaches the server with the board's counters.
        beat = Heartbeat(
            p.client,
            p.board,
            journal,
            config=lambda: signed.current,
            last_contact=lambda: p.client.last_contact,
            busy=kiosk.serving.is_set,
        )
        sent = threading.Event()

        def send() -> None:
            beat.send()
            sent.set()

        with Chores([Chore("telemetry", 3600, send)]):
            assert sent.wait(30), "no heartbeat was sent"
        (detail,) = server_rows(
            p, "SELECT detail FROM kiosk_events WHERE kind = 'board' ORDER BY id DESC LIMIT 1"
        )[0:1]
        counters = json.loads(detail[0])["counters"]
        assert {"crc_errors", "retries", "resyncs", "frames_in"} <= set(counters)
        assert counters["frames_in"] > 0

        p.server.stop()
        served = tap(p, kiosk)
        assert served.outcome is TapOutcome.DISPENSED, served.message
        assert served.reason == "offline"
        over = tap(p, kiosk)
        assert over.outcome is TapOutcome.REFUSED, over.message
        assert over.reason == Reason.LIMIT_REACHED
        assert kiosk.recover() == []  # the server is still away: all stays in the journal

        port = int(p.server_url.rsplit(":", 1)[1])
        server = start_server(p.server_env, port)
        try:
            lossy = offline_kiosk(p, journal, LosesSyncAnswers(p.client), signed)
            lossy.recover()
            txn = journal.get(served.txn_id or 0)
            assert txn.state is TxnState.SYNCING  # applied at the server, not known here
            assert server_rows(p, "SELECT count(*) FROM authorizations WHERE offline") == [(1,)]

            # The kiosk restarts: a new journal handle and client; it sends the same batch again.
            with (
                Journal(journal.path) as reopened,
                ServerClient(p.server_url, KIOSK_ID, p.client._key) as client,
            ):
                restarted = offline_kiosk(p, reopened, client, signed)
                assert (txn.id, TxnState.SYNCED) in restarted.recover()
                assert restarted.recover() == []
                assert reopened.get(txn.id).request is None  # the proof is gone
                assert reopened.open_transactions() == []  # the refused tap was settled too
            rows = server_rows(
                p, "SELECT status, board_txn FROM authorizations WHERE offline ORDER BY created_at"
            )
            assert [(str(s).lower(), b) for s, b in rows] == [("captured", txn.id)]

            after = tap(p)  # online again: the offline item was charged once
            assert after.outcome is TapOutcome.DISPENSED, after.message
            assert after.remaining == {"condoms": p.seed.limit - 2, "lubricant": LUBE_RULE_UNITS}
        finally:
            server.stop()


def test_the_kiosk_process_serves_offline_within_the_signed_allowance(
    tmp_path: Path, pcscd: object
) -> None:
    with start_platform(tmp_path / "p", kiosk=False) as p:
        kiosk = start_kiosk(p)
        try:
            deadline = time.monotonic() + 30
            while not (p.device_key_dir / CONFIG_FILE).exists():  # fetched by its chores thread
                assert kiosk.proc.poll() is None, kiosk.tail()
                assert time.monotonic() < deadline, f"no configuration kept: {kiosk.tail()}"
                time.sleep(0.1)
            p.server.stop()
            for visit in (1, 2):
                p.card.insert()
                seen = wait_for_outcomes(kiosk, visit)
                p.card.remove()
            assert seen == ["dispensed", "refused"], kiosk.tail()
            assert any("Served offline" in line for line in kiosk.lines)
        finally:
            kiosk.stop()
        assert kiosk.proc.returncode == 0, kiosk.tail()
        with Journal(p.device_key_dir / "journal.sqlite3") as journal:
            queued = journal.in_state(TxnState.OFFLINE_DISPENSED)
        assert len(queued) == 1 and queued[0].outcome == "ok"  # kept for the sync
