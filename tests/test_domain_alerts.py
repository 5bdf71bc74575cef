"""Fleet alert rules (server.domain.alerts): each kind fires at its threshold and not before;
an offline kiosk's stale figures do not fire; reconcile opens one alert per finding until it
clears, and a quiet period keeps a flapping finding from opening it again at once."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from server.domain.alerts import (
    DEFAULT_RULES,
    AlertKind,
    AlertRule,
    Connection,
    KioskState,
    SlotState,
    connection,
    evaluate,
    reconcile,
)

NOW = dt.datetime(2026, 11, 16, 2, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


def healthy(**changes: object) -> KioskState:
    state = KioskState(
        kiosk_id="K-1",
        created_at=NOW - dt.timedelta(days=30),
        last_seen_at=NOW - MIN,
        slots=(SlotState(1, 20, 5, 40), SlotState(2, 12, 5, 40)),
        door_open=False,
        temperature_c=21.0,
        last_dispense_at=NOW - dt.timedelta(hours=2),
    )
    return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


def kinds(state: KioskState, rules: tuple[AlertRule, ...] = DEFAULT_RULES) -> list[tuple[str, str]]:
    return [(f.kind.value, f.subject) for f in evaluate(state, rules, NOW)]


def test_a_healthy_kiosk_raises_nothing() -> None:
    assert kinds(healthy()) == []


def test_connection_from_the_heartbeat_age() -> None:
    offline = dt.timedelta(minutes=10)
    assert connection(NOW - MIN, NOW, offline) is Connection.ONLINE
    assert connection(NOW - 3 * MIN, NOW, offline) is Connection.LATE
    assert connection(NOW - 10 * MIN, NOW, offline) is Connection.OFFLINE
    assert connection(None, NOW, offline) is Connection.OFFLINE


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"last_seen_at": NOW - 9 * MIN}, []),
        ({"last_seen_at": NOW - 10 * MIN}, [("offline", "kiosk")]),
        ({"last_seen_at": None}, [("offline", "kiosk")]),
        ({"slots": (SlotState(1, 5, 5, 40), SlotState(2, 6, 5, 40))}, [("stock_low", "slot:1")]),
        (
            {"slots": (SlotState(1, 0, 5, 40), SlotState(2, None, 5, 40))},
            [("stock_empty", "slot:1")],
        ),
        ({"faults": ("motor_1",)}, [("fault", "kiosk")]),
        ({"door_open": True, "door_open_since": NOW - 4 * MIN}, []),
        ({"door_open": True, "door_open_since": NOW - 5 * MIN}, [("door_open", "kiosk")]),
        ({"temperature_c": 35.0}, []),
        ({"temperature_c": 35.5}, [("temperature", "kiosk")]),
        ({"temperature_c": 1.5}, [("temperature", "kiosk")]),
        ({"last_dispense_at": NOW - dt.timedelta(hours=23)}, []),
        ({"last_dispense_at": NOW - dt.timedelta(hours=24)}, [("no_dispense", "kiosk")]),
        ({"last_dispense_at": None}, [("no_dispense", "kiosk")]),  # none since it was made
        ({"oldest_reservation_at": NOW - 14 * MIN, "open_reservations": 1}, []),
        (
            {"oldest_reservation_at": NOW - 15 * MIN, "open_reservations": 2},
            [("reservation_open", "kiosk")],
        ),
    ],
)
def test_each_rule_fires_at_its_threshold(
    changes: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert kinds(healthy(**changes)) == expected


def test_an_offline_kiosk_says_offline_not_its_stale_figures() -> None:
    state = healthy(
        last_seen_at=NOW - dt.timedelta(hours=1),
        faults=("motor_1",),
        slots=(SlotState(1, 0, 5, 40),),
        last_dispense_at=NOW - dt.timedelta(days=3),
        oldest_reservation_at=NOW - dt.timedelta(hours=1),
    )
    assert kinds(state) == [("offline", "kiosk"), ("reservation_open", "kiosk")]


def test_a_station_never_raises_no_dispense_and_disabled_rules_are_silent() -> None:
    assert kinds(healthy(kind="station", last_dispense_at=None)) == []
    rules = tuple(
        dataclasses.replace(r, enabled=r.kind is not AlertKind.FAULT) for r in DEFAULT_RULES
    )
    assert kinds(healthy(faults=("jam",)), rules) == []


def test_findings_carry_figures_only() -> None:
    state = healthy(slots=(SlotState(3, 2, 5, 40),))
    (finding,) = evaluate(state, DEFAULT_RULES, NOW)
    assert finding.key == ("K-1", "stock_low", "slot:3")
    assert dict(finding.detail) == {"stock": 2, "minimum": 5, "capacity": 40}


def test_reconcile_opens_once_clears_and_keeps_quiet() -> None:
    fault = evaluate(healthy(faults=("jam",)), DEFAULT_RULES, NOW)
    key = fault[0].key
    first = reconcile(fault, [], {}, DEFAULT_RULES, NOW)
    assert [f.key for f in first.opened] == [key] and first.cleared == ()
    again = reconcile(fault, [key], {}, DEFAULT_RULES, NOW + MIN)
    assert again.opened == () and again.cleared == ()  # one message until it clears
    gone = reconcile([], [key], {}, DEFAULT_RULES, NOW + 2 * MIN)
    assert gone.cleared == (key,)
    cleared_at = {key: NOW + 2 * MIN}
    flap = reconcile(fault, [], cleared_at, DEFAULT_RULES, NOW + 10 * MIN)
    assert flap.opened == ()  # within the fault rule's 30 quiet minutes
    later = reconcile(fault, [], cleared_at, DEFAULT_RULES, NOW + 32 * MIN)
    assert [f.key for f in later.opened] == [key]
