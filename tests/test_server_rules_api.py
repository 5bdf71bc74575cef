"""Entitlement rules as data: administrators add and retire rules; taps follow at once."""

from __future__ import annotations

from server import services
from tests.fixtures.database import ServerWorld
from tests.test_server_openapi import check_answer


def admin(w: ServerWorld) -> dict[str, str]:
    with w.sessionmaker() as session:
        token = services.create_user(session, w.ctx, "admin", "administrator")
    return {"Authorization": f"Bearer {token}"}


def test_an_administrator_replaces_the_monthly_rule_with_a_rolling_window(
    server_world: ServerWorld,
) -> None:
    w = server_world
    auth = admin(w)
    listed = w.client.get("/api/v1/rules", headers=auth)
    check_answer("GET", "/api/v1/rules", listed)
    [monthly] = listed.get_json()["items"]
    assert (monthly["category"], monthly["period_kind"], monthly["units"]) == (
        "condoms",
        "calendar_month",
        3,
    )

    created = w.client.post(
        "/api/v1/rules",
        json={"category": "condoms", "period_kind": "rolling_days", "period_days": 22, "units": 1},
        headers=auth,
    )
    check_answer("POST", "/api/v1/rules", created)
    assert created.status_code == 201
    retired = w.client.post(f"/api/v1/rules/{monthly['rule_id']}/deactivate", headers=auth)
    check_answer("POST", f"/api/v1/rules/{monthly['rule_id']}/deactivate", retired)
    assert retired.get_json()["active"] is False

    assert w.authorize().get_json()["remaining"] == {"condoms": 0}
    refused = w.authorize().get_json()
    assert refused["reason"] == "limit_reached"
    assert refused["next_allowed_on"] == "2026-12-08"  # 16 Nov + 22 days
    history = w.client.get("/api/v1/rules?all=1", headers=auth).get_json()["items"]
    assert [r["active"] for r in history] == [False, True]


def test_eligibility_rules_apply(server_world: ServerWorld) -> None:
    w = server_world
    auth = admin(w)
    w.client.post(
        "/api/v1/rules",
        json={"category": "condoms", "period_kind": "calendar_year", "units": 50, "sexes": "M"},
        headers=auth,
    )
    # The demo resident is a woman: the new rule (men only) makes her ineligible.
    assert w.authorize().get_json()["reason"] == "not_eligible"


def test_rule_validation_and_roles(server_world: ServerWorld) -> None:
    w = server_world
    auth = admin(w)
    for body in (
        {"category": "condoms", "period_kind": "rolling_days", "units": 1},  # no days
        {"category": "condoms", "period_kind": "calendar_month", "period_days": 5, "units": 1},
        {"category": "condoms", "period_kind": "weekly", "units": 1},
        {"category": "condoms", "period_kind": "calendar_month", "units": -1},
        {
            "category": "condoms",
            "period_kind": "calendar_month",
            "units": 1,
            "min_age": 60,
            "max_age": 18,
        },
        {"category": "condoms", "period_kind": "calendar_month", "units": 1, "sexes": "X"},
    ):
        response = w.client.post("/api/v1/rules", json=body, headers=auth)
        assert response.status_code == 400, body
    unknown = w.client.post(
        "/api/v1/rules",
        json={"category": "nope", "period_kind": "calendar_month", "units": 1},
        headers=auth,
    )
    assert unknown.status_code == 404
    technician = {"Authorization": f"Bearer {w.token}"}
    assert (
        w.client.post(
            "/api/v1/rules",
            json={"category": "condoms", "period_kind": "calendar_month", "units": 9},
            headers=technician,
        ).status_code
        == 403
    )
    assert w.client.post("/api/v1/rules/999/deactivate", headers=auth).status_code == 404
