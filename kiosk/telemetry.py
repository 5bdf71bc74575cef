"""Telemetry: the kiosk's heartbeat to POST /api/v1/telemetry, and the background chores.

A heartbeat carries the stock per slot as the board counts it, and events (the server's
`TELEMETRY_KINDS`): `board` with the driver's line and protocol counters (crc_errors, retries,
resyncs, timeouts, ...), `fault` when the board reports faults or cannot be reached, `door` when
the door opened or closed; the board event also carries the door, the temperature and the
kiosk's own state (open and queued transactions, last contact, configuration and
revocation versions). No card, no person.

`Chores` runs such periodic work (heartbeat, configuration refresh) on a thread of its own, so a
slow or absent server never holds up a tap; the heartbeat also keeps off the board while a card
is being served (`busy`), so it does not wait behind a dispense nor make one wait.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from kiosk.board import BoardError
from kiosk.config_sync import SignedConfig
from kiosk.journal import OFFLINE_QUEUED, Journal, TxnState

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 60.0
CONFIG_EVERY_S = 300.0


class TelemetryServer(Protocol):
    def telemetry(self, heartbeat: dict[str, Any], idempotency_key: str) -> dict[str, Any]: ...


def collect(
    board: Any,
    *,
    known_slots: frozenset[int] | None = None,
    kiosk_state: Mapping[str, Any] | None = None,
    door_was_open: bool | None = None,
) -> dict[str, Any]:
    """The heartbeat document. `board` is any BoardDriver; `counters()` and `status()` are read
    when the driver has them. Slots the server does not know (`known_slots`, from the signed
    configuration) are reported in the board event instead of the stock, which the server
    checks against its own slots.

    Two rows per heartbeat at the server (its own `heartbeat` with the stock, and `board`);
    `fault` only while the board reports one, `door` only when the door changed since the
    last heartbeat (`door_was_open`): a city of kiosks beats every minute."""
    events: list[dict[str, Any]] = []
    stock: dict[int, int] = {}
    board_detail: dict[str, Any] = {}
    try:
        stock = dict(board.stock())
        status = getattr(board, "status", None)
        if callable(status):
            s = status()
            board_detail["door_open"] = s.door_open
            board_detail["temperature_c"] = s.temperature_c
            if s.door_open != door_was_open:
                events.append({"kind": "door", "detail": {"open": s.door_open}})
            if s.faults:
                events.append({"kind": "fault", "detail": {"board": sorted(s.faults)}})
    except BoardError as exc:
        events.append({"kind": "fault", "detail": {"board_unreachable": str(exc)}})
    counters = getattr(board, "counters", None)
    if callable(counters):  # after the exchanges above, so they count too
        board_detail["counters"] = dict(counters())
    if known_slots is not None:
        unknown = {str(k): v for k, v in stock.items() if k not in known_slots}
        if unknown:
            board_detail["stock_of_unconfigured_slots"] = unknown
        stock = {k: v for k, v in stock.items() if k in known_slots}
    if kiosk_state:
        board_detail["kiosk"] = dict(kiosk_state)
    events.insert(0, {"kind": "board", "detail": board_detail})
    return {"stock": {str(k): v for k, v in sorted(stock.items())}, "events": events}


def kiosk_state(
    journal: Journal, config: SignedConfig | None, last_contact: float | None
) -> dict[str, Any]:
    """The kiosk's own part of a heartbeat: counts and versions only."""
    return {
        "open_transactions": len(journal.open_transactions()),
        "offline_queued": len(journal.in_state(*OFFLINE_QUEUED, TxnState.SYNCING)),
        "offline_rejected": len(journal.in_state(TxnState.SYNC_REJECTED)),
        "last_contact": last_contact,
        "config_issued_at": config.issued_at.isoformat() if config is not None else None,
        "revocation_version": config.revocation_version if config is not None else None,
    }


@dataclass
class Heartbeat:
    """Sends one heartbeat per `send()`; returns the server's answer, None when it skipped."""

    server: TelemetryServer
    board: Any
    journal: Journal
    config: Callable[[], SignedConfig | None]
    last_contact: Callable[[], float | None]
    busy: Callable[[], bool] = lambda: False
    on_revocation_version: Callable[[str], None] | None = None
    _door_open: bool | None = None  # as the server last heard it

    def send(self) -> dict[str, Any] | None:
        if self.busy():
            return None  # a tap is using the board: the next round reports
        config = self.config()
        document = collect(
            self.board,
            # Without a configuration the server's slots are unknown: stock goes in the board
            # event only, since the server refuses a heartbeat naming a slot it does not have.
            known_slots=frozenset(config.slots) if config is not None else frozenset(),
            kiosk_state=kiosk_state(self.journal, config, self.last_contact()),
            door_was_open=self._door_open,
        )
        answer = self.server.telemetry(document, uuid.uuid4().hex)
        board = document["events"][0]["detail"]
        if "door_open" in board:
            self._door_open = board["door_open"]
        version = answer.get("revocation_version")
        if (
            self.on_revocation_version is not None
            and isinstance(version, str)
            and (config is None or version != config.revocation_version)
        ):
            self.on_revocation_version(version)  # the list changed: fetch the new one now
        return answer


@dataclass(frozen=True)
class Chore:
    name: str
    every_s: float
    run: Callable[[], object]


class Chores:
    """Periodic work on one daemon thread: each chore runs at start, then every `every_s`
    seconds; a chore that fails is logged and tried again at its next turn. A context manager:
    the thread stops (and is joined) on exit, or when `stop` is set."""

    def __init__(self, chores: list[Chore], stop: threading.Event | None = None) -> None:
        self._chores = chores
        self._stop = stop or threading.Event()
        self._wake = threading.Event()
        self._due = {c.name: 0.0 for c in chores}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kiosk-chores", daemon=True)
        self.runs: dict[str, int] = {c.name: 0 for c in chores}
        self.failures: dict[str, int] = {c.name: 0 for c in chores}

    def __enter__(self) -> Chores:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def soon(self, name: str) -> None:
        """Run chore `name` at the next turn instead of waiting for its period."""
        with self._lock:
            self._due[name] = 0.0
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for chore in self._chores:
                if self._stop.is_set():
                    return
                with self._lock:
                    due = self._due[chore.name] <= now
                    if due:
                        self._due[chore.name] = now + chore.every_s
                if not due:
                    continue
                try:
                    chore.run()
                    self.runs[chore.name] += 1
                except Exception as exc:  # a chore must never end the thread
                    self.failures[chore.name] += 1
                    log.warning("kiosk chore %s failed: %s", chore.name, exc)
            with self._lock:
                wait = max(0.0, min(self._due.values()) - time.monotonic())
            self._wake.wait(timeout=min(wait, 5.0))
            self._wake.clear()
