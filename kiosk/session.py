"""The screen session: what the resident (or technician) sees, as a state machine.

Pure apart from a lock and listeners: explicit states (`Screen`), an explicit transition table
(`SCREEN_TRANSITIONS`, checked on every move), and a timeout on every state that waits for a
person or a device (`TIMEOUTS`). A timeout warns `WARN_BEFORE_S` seconds before it fires when
the person can do something about it (`EXTENDABLE`), and `extend()` gives them the time again.
IDLE waits for a card and has no timeout; it is where every other state ends.

The kiosk core (kiosk.attendant) moves the session; the screen (kiosk.screen) only shows its
`Snapshot` and posts the person's actions (`post()`), which the core takes with `next_action()`.
The transaction's own state machine, with its exactly-once guarantees, stays in kiosk.journal:
this one only says what is on the screen.

Privacy: a snapshot holds what is left to take and the products, never the card GUID, a name
or anything else about the person.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Screen(StrEnum):
    IDLE = "idle"  # waiting for a card: what the kiosk offers, how to use it
    RECOVERING = "recovering"  # settling what a crash left open (the screen says so)
    CHECKING = "checking"  # the card is read, proves itself, is verified; the server is asked
    CHOOSING = "choosing"  # the resident picks a product
    DISPENSING = "dispensing"  # authorize, motor, drop sensor, capture/void
    TAKE_ITEM = "take_item"  # the drop sensor saw it fall
    REFUSED = "refused"  # the card or the rules said no (reason, next date)
    FAULT = "fault"  # empty, jam, no drop, server unreachable, card pulled
    REMOVE_CARD = "remove_card"  # done: take the card (a reminder if it stays)
    STAFF_PIN = "staff_pin"  # a staff card: the PIN, checked by the card
    MAINTENANCE = "maintenance"  # per-slot stock, refill, test dispense, faults


SCREEN_TRANSITIONS: Mapping[Screen, frozenset[Screen]] = {
    Screen.IDLE: frozenset({Screen.CHECKING, Screen.RECOVERING, Screen.REMOVE_CARD}),
    Screen.RECOVERING: frozenset({Screen.IDLE, Screen.FAULT}),
    Screen.CHECKING: frozenset(
        {Screen.CHOOSING, Screen.REFUSED, Screen.FAULT, Screen.STAFF_PIN, Screen.IDLE}
    ),
    Screen.CHOOSING: frozenset(
        {Screen.DISPENSING, Screen.REFUSED, Screen.FAULT, Screen.REMOVE_CARD, Screen.IDLE}
    ),
    Screen.DISPENSING: frozenset(
        {Screen.TAKE_ITEM, Screen.REFUSED, Screen.FAULT, Screen.CHOOSING, Screen.IDLE}
    ),
    Screen.TAKE_ITEM: frozenset({Screen.REMOVE_CARD, Screen.IDLE}),
    Screen.REFUSED: frozenset({Screen.REMOVE_CARD, Screen.IDLE}),
    # A fault may offer another product of the same category (back to CHOOSING).
    Screen.FAULT: frozenset({Screen.REMOVE_CARD, Screen.IDLE, Screen.CHOOSING}),
    Screen.REMOVE_CARD: frozenset({Screen.IDLE, Screen.REMOVE_CARD}),
    Screen.STAFF_PIN: frozenset(
        {Screen.MAINTENANCE, Screen.STAFF_PIN, Screen.REFUSED, Screen.REMOVE_CARD, Screen.IDLE}
    ),
    Screen.MAINTENANCE: frozenset({Screen.MAINTENANCE, Screen.REMOVE_CARD, Screen.IDLE}),
}

# Seconds each state may last before the core moves on (None: no timeout, IDLE only).
TIMEOUTS: Mapping[Screen, float | None] = {
    Screen.IDLE: None,
    Screen.RECOVERING: 60.0,
    Screen.CHECKING: 20.0,
    Screen.CHOOSING: 60.0,
    Screen.DISPENSING: 40.0,  # the board's own deadline is 20 s; settling takes a few more
    Screen.TAKE_ITEM: 15.0,
    Screen.REFUSED: 20.0,
    Screen.FAULT: 20.0,
    Screen.REMOVE_CARD: 15.0,  # then a reminder, again every 15 s while the card stays
    Screen.STAFF_PIN: 60.0,
    Screen.MAINTENANCE: 300.0,
}
# States whose timeout the person can push back ("More time"); they are warned first.
EXTENDABLE = frozenset({Screen.CHOOSING, Screen.STAFF_PIN, Screen.MAINTENANCE})
WARN_BEFORE_S = 15.0


class SessionError(Exception):
    """A move the screen's state machine does not have: a programming error."""


@dataclass(frozen=True)
class Snapshot:
    """What the screen shows now. `view` is the state's content as plain values (products,
    what is left, the reason code, the next date, progress), never anything about the person."""

    seq: int
    screen: Screen
    view: Mapping[str, Any]
    language: str
    speech: bool
    seconds_left: float | None
    warn: bool
    extendable: bool


@dataclass
class _State:
    screen: Screen = Screen.IDLE
    view: dict[str, Any] = field(default_factory=dict)
    entered: float = 0.0
    deadline: float | None = None
    seq: int = 0


class ScreenSession:
    """One kiosk's screen. Thread-safe: the core moves it, the screen's threads read it."""

    def __init__(
        self,
        *,
        language: str = "zh_CN",
        timeouts: Mapping[Screen, float | None] = TIMEOUTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeouts = dict(timeouts)
        self._clock = clock
        self._lock = threading.Condition()
        self._state = _State(entered=clock())
        self.default_language = language
        self._language = language
        self._speech = False
        self._actions: queue.Queue[dict[str, Any]] = queue.Queue()
        self._listeners: list[Callable[[Snapshot], None]] = []

    # ----------------------------------------------------------------- the core's side

    @property
    def screen(self) -> Screen:
        return self._state.screen

    def go(self, screen: Screen, **view: Any) -> Snapshot:
        """Move to `screen` showing `view`; refuses a move the table does not have. Actions
        posted for the screen that is left are dropped (a late tap on an old button)."""
        with self._lock:
            current = self._state.screen
            if screen is not current and screen not in SCREEN_TRANSITIONS[current]:
                raise SessionError(f"the screen cannot go from {current} to {screen}")
            if screen is Screen.IDLE:
                # Each person starts in the kiosk's language, with speech off.
                self._language = self.default_language
                self._speech = False
            now = self._clock()
            timeout = self._timeouts.get(screen)
            self._state = _State(
                screen=screen,
                view=dict(view),
                entered=now,
                deadline=None if timeout is None else now + timeout,
                seq=self._state.seq + 1,
            )
            self._drain()
            self._lock.notify_all()
        return self._publish()

    def update(self, **view: Any) -> Snapshot:
        """Change what the current screen shows (progress, stock) without moving."""
        with self._lock:
            self._state.view.update(view)
            self._state.seq += 1
            self._lock.notify_all()
        return self._publish()

    def expired(self) -> bool:
        """True once the current state's timeout has passed."""
        deadline = self._state.deadline
        return deadline is not None and self._clock() >= deadline

    def seconds_left(self) -> float | None:
        deadline = self._state.deadline
        return None if deadline is None else max(0.0, deadline - self._clock())

    def next_action(self, timeout: float) -> dict[str, Any] | None:
        """The person's next action on the current screen, or None within `timeout` seconds."""
        try:
            return self._actions.get(timeout=timeout)
        except queue.Empty:
            return None

    # ----------------------------------------------------------------- the screen's side

    def post(self, action: dict[str, Any]) -> bool:
        """An action from the screen (a choice, a PIN, a maintenance command). Language,
        speech and "more time" are handled here at once; the rest goes to the core. False when
        the current screen takes no actions."""
        kind = action.get("action")
        if kind == "language":
            self.set_language(str(action.get("language", "")))
            return True
        if kind == "speech":
            self.set_speech(bool(action.get("on")))
            return True
        if kind == "extend":
            return self.extend()
        if self._state.screen is Screen.IDLE:
            return False
        self._actions.put(dict(action, seq=self._state.seq))
        return True

    def set_language(self, language: str) -> None:
        with self._lock:
            self._language = language
            self._state.seq += 1
        self._publish()

    def set_speech(self, on: bool) -> None:
        with self._lock:
            self._speech = on
            self._state.seq += 1
        self._publish()

    def extend(self) -> bool:
        """Give the person the state's whole time again; only where EXTENDABLE."""
        with self._lock:
            screen = self._state.screen
            timeout = self._timeouts.get(screen)
            if screen not in EXTENDABLE or timeout is None:
                return False
            self._state.deadline = self._clock() + timeout
            self._state.seq += 1
        self._publish()
        return True

    def snapshot(self) -> Snapshot:
        with self._lock:
            s = self._state
            left = self.seconds_left()
            return Snapshot(
                seq=s.seq,
                screen=s.screen,
                view=dict(s.view),
                language=self._language,
                speech=self._speech,
                seconds_left=left,
                warn=s.screen in EXTENDABLE and left is not None and left <= WARN_BEFORE_S,
                extendable=s.screen in EXTENDABLE,
            )

    def wait_for_change(self, seq: int, timeout: float) -> Snapshot:
        """The snapshot once it differs from `seq` (or after `timeout`): the page's stream."""
        with self._lock:
            self._lock.wait_for(lambda: self._state.seq != seq, timeout=timeout)
        return self.snapshot()

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Call `listener` with every new snapshot (speech, the demo's log)."""
        self._listeners.append(listener)

    def _publish(self) -> Snapshot:
        snapshot = self.snapshot()
        for listener in list(self._listeners):
            listener(snapshot)
        return snapshot

    def _drain(self) -> None:
        while True:
            try:
                self._actions.get_nowait()
            except queue.Empty:
                return
