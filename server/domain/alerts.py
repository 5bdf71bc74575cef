"""Fleet alert rules: what is wrong with a kiosk now, and which alerts open or clear.

Pure: a kiosk's state and the rules in, findings out; no clock, no database. Rules are data
(`AlertRule`: a kind, its threshold, a quiet period), kept in the database and edited by an
administrator. The kinds (issue 12):

- `offline`: no heartbeat for `threshold` minutes;
- `stock_low`: a slot at or under its minimum (and not empty);
- `stock_empty`: a slot with nothing left;
- `fault`: the board reported a fault (or could not be reached) in its last heartbeat;
- `door_open`: the door is open (for `threshold` minutes, 0 = at once);
- `temperature`: outside [`low`, `high`] degrees Celsius;
- `no_dispense`: online, and nothing dispensed for `threshold` hours;
- `reservation_open`: a reservation open longer than `threshold` minutes.

A finding names a kiosk, a kind and a subject (`slot:3` for a slot, `kiosk` otherwise) and
carries figures only: no card, no person. `reconcile` turns the findings and the open alerts
into alerts to open (one per kiosk, kind and subject, until it clears) and alerts to clear; a
finding within the quiet period after the same alert cleared does not open it again (a door
that flaps, a slot hovering at its minimum).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AlertKind(StrEnum):
    OFFLINE = "offline"
    STOCK_LOW = "stock_low"
    STOCK_EMPTY = "stock_empty"
    FAULT = "fault"
    DOOR_OPEN = "door_open"
    TEMPERATURE = "temperature"
    NO_DISPENSE = "no_dispense"
    RESERVATION_OPEN = "reservation_open"


class Connection(StrEnum):
    """A device's state from its last heartbeat's age."""

    ONLINE = "online"
    LATE = "late"
    OFFLINE = "offline"


LATE_AFTER = dt.timedelta(minutes=3)  # three heartbeats (one a minute) missed


@dataclass(frozen=True)
class AlertRule:
    kind: AlertKind
    threshold: float = 0.0  # minutes (offline, door_open, reservation_open) or hours (no_dispense)
    low: float | None = None  # temperature only, degrees Celsius
    high: float | None = None
    quiet_minutes: int = 30
    enabled: bool = True


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(AlertKind.OFFLINE, threshold=10),
    AlertRule(AlertKind.STOCK_LOW, quiet_minutes=120),
    AlertRule(AlertKind.STOCK_EMPTY),
    AlertRule(AlertKind.FAULT),
    AlertRule(AlertKind.DOOR_OPEN, threshold=5),
    AlertRule(AlertKind.TEMPERATURE, low=2.0, high=35.0, quiet_minutes=60),
    AlertRule(AlertKind.NO_DISPENSE, threshold=24, quiet_minutes=24 * 60),
    AlertRule(AlertKind.RESERVATION_OPEN, threshold=15),
)


@dataclass(frozen=True)
class SlotState:
    slot: int
    stock: int | None
    minimum: int | None
    capacity: int | None


@dataclass(frozen=True)
class KioskState:
    """What the fleet knows of one kiosk (or station) now."""

    kiosk_id: str
    created_at: dt.datetime
    last_seen_at: dt.datetime | None
    kind: str = "kiosk"
    slots: tuple[SlotState, ...] = ()
    faults: tuple[str, ...] = ()
    door_open: bool | None = None
    door_open_since: dt.datetime | None = None
    temperature_c: float | None = None
    last_dispense_at: dt.datetime | None = None
    oldest_reservation_at: dt.datetime | None = None
    open_reservations: int = 0


@dataclass(frozen=True)
class Finding:
    kiosk_id: str
    kind: AlertKind
    subject: str  # "kiosk" or "slot:N"
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kiosk_id, self.kind.value, self.subject


def connection(
    last_seen_at: dt.datetime | None, now: dt.datetime, offline_after: dt.timedelta
) -> Connection:
    if last_seen_at is None or now - last_seen_at >= offline_after:
        return Connection.OFFLINE
    if now - last_seen_at >= LATE_AFTER:
        return Connection.LATE
    return Connection.ONLINE


def offline_after(rules: Iterable[AlertRule]) -> dt.timedelta:
    for rule in rules:
        if rule.kind is AlertKind.OFFLINE:
            return dt.timedelta(minutes=rule.threshold)
    return dt.timedelta(minutes=10)


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)


def evaluate(state: KioskState, rules: Sequence[AlertRule], now: dt.datetime) -> list[Finding]:
    """Every rule that fires for `state` at `now`."""
    found: list[Finding] = []
    seen = connection(state.last_seen_at, now, offline_after(rules))
    for rule in rules:
        if not rule.enabled:
            continue
        kind = rule.kind
        if kind is AlertKind.OFFLINE:
            if state.last_seen_at is None:
                found.append(Finding(state.kiosk_id, kind, "kiosk", {"never_seen": True}))
            elif now - state.last_seen_at >= dt.timedelta(minutes=rule.threshold):
                found.append(
                    Finding(
                        state.kiosk_id,
                        kind,
                        "kiosk",
                        {"minutes_since_heartbeat": _minutes(now - state.last_seen_at)},
                    )
                )
            continue
        if seen is Connection.OFFLINE and kind is not AlertKind.RESERVATION_OPEN:
            continue  # what an offline kiosk last said is stale; the offline alert speaks
        if kind in (AlertKind.STOCK_LOW, AlertKind.STOCK_EMPTY):
            for slot in state.slots:
                if slot.stock is None:
                    continue
                empty = slot.stock <= 0
                low = not empty and slot.minimum is not None and slot.stock <= slot.minimum
                if (kind is AlertKind.STOCK_EMPTY and empty) or (
                    kind is AlertKind.STOCK_LOW and low
                ):
                    found.append(
                        Finding(
                            state.kiosk_id,
                            kind,
                            f"slot:{slot.slot}",
                            {
                                "stock": slot.stock,
                                "minimum": slot.minimum,
                                "capacity": slot.capacity,
                            },
                        )
                    )
        elif kind is AlertKind.FAULT:
            if state.faults:
                found.append(Finding(state.kiosk_id, kind, "kiosk", {"faults": list(state.faults)}))
        elif kind is AlertKind.DOOR_OPEN:
            if state.door_open:
                since = state.door_open_since or state.last_seen_at or now
                if now - since >= dt.timedelta(minutes=rule.threshold):
                    found.append(
                        Finding(
                            state.kiosk_id, kind, "kiosk", {"open_minutes": _minutes(now - since)}
                        )
                    )
        elif kind is AlertKind.TEMPERATURE:
            t = state.temperature_c
            if t is not None and (
                (rule.low is not None and t < rule.low) or (rule.high is not None and t > rule.high)
            ):
                found.append(
                    Finding(
                        state.kiosk_id,
                        kind,
                        "kiosk",
                        {"temperature_c": t, "low": rule.low, "high": rule.high},
                    )
                )
        elif kind is AlertKind.NO_DISPENSE:
            if state.kind != "kiosk" or seen is not Connection.ONLINE:
                continue
            since = state.last_dispense_at or state.created_at
            if now - since >= dt.timedelta(hours=rule.threshold):
                found.append(
                    Finding(
                        state.kiosk_id,
                        kind,
                        "kiosk",
                        {"hours_since_dispense": int((now - since).total_seconds() // 3600)},
                    )
                )
        elif kind is AlertKind.RESERVATION_OPEN:
            oldest = state.oldest_reservation_at
            if oldest is not None and now - oldest >= dt.timedelta(minutes=rule.threshold):
                found.append(
                    Finding(
                        state.kiosk_id,
                        kind,
                        "kiosk",
                        {"open": state.open_reservations, "oldest_minutes": _minutes(now - oldest)},
                    )
                )
    return found


Key = tuple[str, str, str]


@dataclass(frozen=True)
class Changes:
    opened: tuple[Finding, ...]
    cleared: tuple[Key, ...]


def reconcile(
    findings: Iterable[Finding],
    open_keys: Iterable[Key],
    cleared_at: Mapping[Key, dt.datetime],
    rules: Sequence[AlertRule],
    now: dt.datetime,
) -> Changes:
    """Alerts to open (a finding with no open alert, outside its quiet period) and to clear (an
    open alert with no finding). `cleared_at`: when each key's last alert cleared."""
    quiet = {rule.kind.value: dt.timedelta(minutes=rule.quiet_minutes) for rule in rules}
    current = {f.key: f for f in findings}
    still_open = set(open_keys)
    opened = []
    for key, finding in sorted(current.items()):
        if key in still_open:
            continue
        last = cleared_at.get(key)
        if last is not None and now - last < quiet.get(key[1], dt.timedelta(0)):
            continue
        opened.append(finding)
    cleared = tuple(sorted(k for k in still_open if k not in current))
    return Changes(tuple(opened), cleared)
