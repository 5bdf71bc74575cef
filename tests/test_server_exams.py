"""Exam eligibility at service stations: the pure rules, and the station API on both databases."""

from __future__ import annotations

import datetime as dt

import pytest

from server import services
from server.domain import exams
from server.domain.exams import ExamReason, Programme
from server.domain.rules import Holder
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
        (
            YEARLY_CHECK,
            Holder(D(2008, 2, 29), "F"),
            [],
            (False, ExamReason.TOO_YOUNG, D(2029, 3, 1)),
        ),
    ],
)
def test_exam_rules(
    programme: Programme, holder: Holder, history: list[dt.date], expected: tuple
) -> None:  # type: ignore[type-arg]
    decision = exams.evaluate(programme, holder, history, D(2026, 11, 16))
    assert (decision.eligible, decision.reason, decision.next_eligible_on) == expected


COUPLES = Programme(
    "pre", "Pre-pregnancy", frozenset("FM"), min_age=20, max_age=49, once=True, requires_plan=True
)


@pytest.mark.parametrize(
    ("plan_since", "history", "expected"),
    [
        (None, [], (False, ExamReason.NO_PLAN)),
        (D(2026, 10, 1), [], (True, None)),
        (D(2026, 10, 1), [D(2026, 10, 5)], (False, ExamReason.ALREADY_GIVEN)),
        (D(2026, 10, 1), [D(2025, 3, 5)], (True, None)),  # given under an earlier plan
    ],
)
def test_couples_programme_is_once_per_plan(
    plan_since: dt.date | None,
    history: list[dt.date],
    expected: tuple,  # type: ignore[type-arg]
) -> None:
    decision = exams.evaluate(COUPLES, WOMAN, history, D(2026, 11, 16), plan_since)
    assert (decision.eligible, decision.reason) == expected


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

    def record(programme: str, **extra: str):  # type: ignore[no-untyped-def]
        return w.post(
            "/api/v1/exams/records", {**tap(), "programme": programme, **extra}, kiosk=desk
        )

    first = w.post("/api/v1/exams/eligibility", tap(), kiosk=desk)
    check_answer("POST", "/api/v1/exams/eligibility", first)
    assert [
        (p["programme"], p["eligible"], p["reason"]) for p in first.get_json()["programmes"]
    ] == [
        ("pre_pregnancy", False, "no_plan"),  # for couples planning a pregnancy
        ("reproductive_health_check", True, None),
    ]
    assert set(first.get_json()["programmes"][0]) == {
        "programme",
        "name",
        "eligible",
        "reason",
        "next_eligible_on",
    }

    recorded = record("reproductive_health_check", staff="Dr Wang")
    check_answer("POST", "/api/v1/exams/records", recorded)
    assert recorded.status_code == 201 and recorded.get_json()["given_on"] == "2026-11-16"
    eligibility = w.post("/api/v1/exams/eligibility", tap(), kiosk=desk).get_json()["programmes"]
    later = {p["programme"]: p for p in eligibility}
    assert later["reproductive_health_check"] == {
        "programme": "reproductive_health_check",
        "name": "Yearly reproductive-health check",
        "eligible": False,
        "reason": "too_soon",
        "next_eligible_on": "2027-11-16",
    }
    again = record("reproductive_health_check")
    check_answer("POST", "/api/v1/exams/records", again)
    assert again.status_code == 409 and again.get_json()["reason"] == "too_soon"

    with w.sessionmaker() as session:
        staff = services.create_user(session, w.ctx, "desk-staff", "station_staff")
    partner = w.new_resident()

    def plan(since: str) -> None:
        couple = w.client.post(
            "/api/v1/couples",
            json={"partners": [w.seed.resident_id, partner], "planning_since": since},
            headers={"Authorization": f"Bearer {staff}"},
        )
        check_answer("POST", "/api/v1/couples", couple)
        assert couple.status_code == 201

    plan("2026-10-01")
    assert record("pre_pregnancy").status_code == 201
    assert record("pre_pregnancy").get_json()["reason"] == "already_given"
    w.clock.advance(2 * 24 * 3600)
    plan("2026-11-17")  # a new plan: once per plan
    assert record("pre_pregnancy").status_code == 201
    unknown = record("dental")
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


def test_appointments_book_list_cancel(server_world: ServerWorld) -> None:
    w = server_world
    desk = station(w)
    with w.sessionmaker() as session:
        staff = services.create_user(
            session, w.ctx, "desk-staff", "station_staff", region_code="C01"
        )
        elsewhere = services.create_user(
            session, w.ctx, "hill-staff", "station_staff", region_code="C01-T02"
        )
    auth = {"Authorization": f"Bearer {staff}"}
    slots_path = f"/api/v1/stations/{desk.id}/slots"
    day = w.client.get(slots_path + "?date=2026-11-17", headers=auth)
    check_answer("GET", slots_path, day)
    slots = day.get_json()["slots"]
    assert len(slots) == 18 and slots[0]["starts_at"] == "2026-11-17T08:00:00+08:00"
    assert all(s["available"] for s in slots)
    # Today 10:00 in the city: the morning's earlier slots have passed.
    today = w.client.get(slots_path + "?date=2026-11-16", headers=auth).get_json()["slots"]
    assert [s["available"] for s in today[:6]] == [False] * 5 + [True]

    body = {
        "station_id": desk.id,
        "programme": "reproductive_health_check",
        "resident_id": w.seed.resident_id,
        "starts_at": "2026-11-17T09:30:00+08:00",
    }
    booked = w.client.post("/api/v1/appointments", json=body, headers=auth)
    check_answer("POST", "/api/v1/appointments", booked)
    assert booked.status_code == 201
    appointment_id = booked.get_json()["appointment_id"]
    other = w.new_resident()
    taken = w.client.post("/api/v1/appointments", json={**body, "resident_id": other}, headers=auth)
    check_answer("POST", "/api/v1/appointments", taken)
    assert taken.status_code == 409 and taken.get_json()["code"] == "slot_taken"
    listed = w.client.get(slots_path + "?date=2026-11-17", headers=auth).get_json()["slots"]
    assert [(s["starts_at"][11:16], s["appointment_id"]) for s in listed if not s["available"]] == [
        ("09:30", appointment_id)
    ]

    for change, code in [
        ({"starts_at": "2026-11-17T09:10:00+08:00"}, "slot_invalid"),
        ({"starts_at": "2026-11-17T18:00:00+08:00"}, "slot_invalid"),
        ({"starts_at": "2026-11-16T08:00:00+08:00"}, "slot_invalid"),
        ({"starts_at": "2026-11-17T09:30:00"}, "field_invalid"),
    ]:
        response = w.client.post("/api/v1/appointments", json={**body, **change}, headers=auth)
        assert (response.status_code, response.get_json()["code"]) == (400, code), change
    assert (
        w.client.post(
            "/api/v1/appointments", json={**body, "programme": "dental"}, headers=auth
        ).status_code
        == 404
    )
    assert (
        w.client.get(
            slots_path + "?date=2026-11-17", headers={"Authorization": f"Bearer {elsewhere}"}
        ).status_code
        == 403
    )

    cancel_path = f"/api/v1/appointments/{appointment_id}/cancel"
    cancelled = w.client.post(cancel_path, headers=auth)
    check_answer("POST", cancel_path, cancelled)
    assert cancelled.get_json()["status"] == "cancelled"
    rebooked = w.client.post(
        "/api/v1/appointments", json={**body, "resident_id": other}, headers=auth
    )
    assert rebooked.status_code == 201
    assert (
        w.client.get("/api/v1/stations/K-0001/slots?date=2026-11-17", headers=auth).status_code
        == 404
    )  # a kiosk
