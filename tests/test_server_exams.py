"""Exam eligibility at service stations: the pure rules, and the station API on both databases."""

from __future__ import annotations

import datetime as dt

import pytest

from server import exams, services
from server.exams import ExamReason, Programme
from server.rules import Holder
from tests.fixtures.database import ServerWorld, TestCard, TestKiosk
from tests.test_server_openapi import check_answer

D = dt.date
YEARLY_CHECK = Programme(
    "check", "Yearly check", frozenset("F"), min_age=21, max_age=64, interval_days=365
)
ONCE = Programme("pre", "Pre-pregnancy", frozenset("FM"), min_age=20, max_age=49, once=True)
WOMAN = Holder(D(1994, 5, 17), "F")


@pytest.mark.parametrize(
    ("programme", "holder", "history", "expected"),
    [
        (YEARLY_CHECK, WOMAN, [], (True, None, None)),
        (YEARLY_CHECK, WOMAN, [D(2026, 1, 10)], (False, ExamReason.TOO_SOON, D(2027, 1, 10))),
        (YEARLY_CHECK, WOMAN, [D(2025, 11, 16)], (True, None, None)),  # exactly 365 days
        (YEARLY_CHECK, Holder(D(1994, 5, 17), "M"), [], (False, ExamReason.SEX_NOT_SERVED, None)),
        (
            YEARLY_CHECK,
            Holder(D(2006, 3, 1), "F"),
            [],
            (False, ExamReason.TOO_YOUNG, D(2027, 3, 1)),
        ),
        (YEARLY_CHECK, Holder(D(1960, 1, 1), "F"), [], (False, ExamReason.TOO_OLD, None)),
        (
            YEARLY_CHECK,
            Holder(D(1962, 6, 1), "F"),
            [D(2026, 6, 1)],
            (False, ExamReason.TOO_SOON, None),
        ),  # 65 by then
        (
            YEARLY_CHECK,
            Holder(D(1994, 5, 17), "F", active=False),
            [],
            (False, ExamReason.INACTIVE, None),
        ),
        (ONCE, WOMAN, [], (True, None, None)),
        (ONCE, WOMAN, [D(2020, 1, 1)], (False, ExamReason.ALREADY_GIVEN, None)),
        (ONCE, Holder(D(2008, 2, 29), "M"), [], (False, ExamReason.TOO_YOUNG, D(2028, 2, 29))),
        (YEARLY_CHECK, Holder(D(2008, 2, 29), "F"), [], (False, ExamReason.TOO_YOUNG, D(2029, 3, 1))),
    ],
)
def test_exam_rules(
    programme: Programme, holder: Holder, history: list[dt.date], expected: tuple
) -> None:  # type: ignore[type-arg]
    decision = exams.evaluate(programme, holder, history, D(2026, 11, 16))
    assert (decision.eligible, decision.reason, decision.next_eligible_on) == expected


def station(w: ServerWorld) -> TestKiosk:
    desk = TestKiosk("ST-0001")
    with w.sessionmaker() as session:
        services.add_station(session, w.ctx, desk.id, desk.public_key_b64)
    return desk


def test_a_station_checks_eligibility_and_records_exams(server_world: ServerWorld) -> None:
    w = server_world
    desk = station(w)

    def tap() -> dict:  # type: ignore[type-arg]
        return {"proof": desk.tap(w.card, w.clock)}

    first = w.post("/api/v1/exams/eligibility", tap(), kiosk=desk)
    check_answer("POST", "/api/v1/exams/eligibility", first)
    assert [(p["programme"], p["eligible"]) for p in first.get_json()["programmes"]] == [
        ("pre_pregnancy", True),
        ("reproductive_health_check", True),
    ]
    assert set(first.get_json()["programmes"][0]) == {
        "programme",
        "name",
        "eligible",
        "reason",
        "next_eligible_on",
    }

    recorded = w.post(
        "/api/v1/exams/records",
        {**tap(), "programme": "reproductive_health_check", "staff": "Dr Wang"},
        kiosk=desk,
    )
    check_answer("POST", "/api/v1/exams/records", recorded)
    assert recorded.status_code == 201 and recorded.get_json()["given_on"] == "2026-11-16"

    later = {
        p["programme"]: p
        for p in w.post("/api/v1/exams/eligibility", tap(), kiosk=desk).get_json()["programmes"]
    }
    assert later["reproductive_health_check"] == {
        "programme": "reproductive_health_check",
        "name": "Yearly reproductive-health check",
        "eligible": False,
        "reason": "too_soon",
        "next_eligible_on": "2027-11-16",
    }
    again = w.post(
        "/api/v1/exams/records", {**tap(), "programme": "reproductive_health_check"}, kiosk=desk
    )
    check_answer("POST", "/api/v1/exams/records", again)
    assert again.status_code == 409 and again.get_json()["reason"] == "too_soon"
    assert (
        w.post(
            "/api/v1/exams/records", {**tap(), "programme": "pre_pregnancy"}, kiosk=desk
        ).status_code
        == 201
    )
    assert (
        w.post(
            "/api/v1/exams/records", {**tap(), "programme": "pre_pregnancy"}, kiosk=desk
        ).get_json()["reason"]
        == "already_given"
    )
    unknown = w.post("/api/v1/exams/records", {**tap(), "programme": "dental"}, kiosk=desk)
    assert unknown.status_code == 404 and unknown.get_json()["code"] == "programme_unknown"


def test_devices_keep_to_their_kind_and_cards_are_checked(server_world: ServerWorld) -> None:
    w = server_world
    desk = station(w)
    kiosk_at_exams = w.post("/api/v1/exams/eligibility", {"proof": w.kiosk.tap(w.card, w.clock)})
    assert kiosk_at_exams.status_code == 403 and kiosk_at_exams.get_json()["code"] == "wrong_device"
    station_dispensing = w.authorize(kiosk=desk)
    assert (
        station_dispensing.status_code == 403
        and station_dispensing.get_json()["code"] == "wrong_device"
    )
    stranger = w.post(
        "/api/v1/exams/eligibility", {"proof": desk.tap(TestCard(w.ca), w.clock)}, kiosk=desk
    )
    check_answer("POST", "/api/v1/exams/eligibility", stranger)
    assert stranger.status_code == 422 and stranger.get_json()["code"] == "card_unknown"
    proof = desk.tap(w.card, w.clock)
    assert w.post("/api/v1/exams/eligibility", {"proof": proof}, kiosk=desk).status_code == 200
    replay = w.post("/api/v1/exams/eligibility", {"proof": proof}, kiosk=desk)
    assert replay.status_code == 422 and replay.get_json()["code"] == "counter_replayed"
