"""What a card may take at a kiosk now (server/services/choices.py), on SQLite and PostgreSQL:
per category what is left, whether one may be taken, why not and the next date, from the same
rules authorize applies; the card checked as at authorize, each proof answered once."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from server.domain import rules
from server.services import choices
from server.store.models import (
    Card,
    CardStatus,
)
from tests.fixtures.catalogue import LUBE_RULE_UNITS
from tests.fixtures.catalogue import add_choice_catalogue as add_catalogue
from tests.fixtures.database import ServerWorld


def add_choice_catalogue(world: ServerWorld, *, lube_max_age: int | None = None) -> None:
    add_catalogue(world.sessionmaker, world.kiosk.id, lube_max_age=lube_max_age)
    world.ctx.rules_cache.clear()


def ask(world: ServerWorld, proof: dict[str, Any] | None = None) -> dict[str, Any]:
    with world.sessionmaker() as session:
        answer = choices.entitlements(
            session, world.ctx, world.kiosk.id, proof or world.kiosk.tap(world.card, world.clock)
        )
        session.commit()
    return answer


def take(world: ServerWorld, slot: int) -> None:
    answer = world.authorize(slot=slot)
    assert answer.status_code == 200 and answer.get_json()["approved"], answer.get_json()
    assert world.capture(answer.get_json()["authorization_id"]).status_code == 200


def by_category(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert answer["accepted"] is True, answer
    return {c["category"]: c for c in answer["categories"]}


def test_every_category_of_the_kiosk_with_what_is_left(server_world: ServerWorld) -> None:
    add_choice_catalogue(server_world)
    limit = server_world.seed.monthly_limit
    first = ask(server_world)
    assert list(by_category(first)) == ["condoms", "lubricant"]  # slots 1+2, then 3
    assert by_category(first)["condoms"] == {
        "category": "condoms",
        "left": limit,
        "allowed": True,
        "reason": None,
        "next_allowed_on": None,
    }
    assert by_category(first)["lubricant"]["left"] == LUBE_RULE_UNITS
    assert set(first) == {"accepted", "categories"}  # nothing about the person

    take(server_world, 1)
    take(server_world, 2)  # the other condom counts in the same category
    assert by_category(ask(server_world))["condoms"]["left"] == limit - 2
    for _ in range(limit - 2):
        take(server_world, 1)
    take(server_world, 3)
    spent = by_category(ask(server_world))
    assert spent["condoms"] == {
        "category": "condoms",
        "left": 0,
        "allowed": False,
        "reason": "limit_reached",
        "next_allowed_on": "2026-12-01",  # calendar month; the fixed clock is 2026-11-16
    }
    assert spent["lubricant"]["left"] == LUBE_RULE_UNITS - 1 and spent["lubricant"]["allowed"]
    # What the screen says is what authorize decides.
    refused = server_world.authorize(slot=2).get_json()
    assert refused["approved"] is False and refused["reason"] == "limit_reached"
    assert refused["next_allowed_on"] == spent["condoms"]["next_allowed_on"]


def test_a_category_the_person_is_not_eligible_for(server_world: ServerWorld) -> None:
    add_choice_catalogue(server_world, lube_max_age=20)  # the demo resident was born in 1994
    lube = by_category(ask(server_world))["lubricant"]
    assert lube == {
        "category": "lubricant",
        "left": 0,
        "allowed": False,
        "reason": "not_eligible",
        "next_allowed_on": None,
    }


def test_a_proof_answers_once_and_refused_cards_learn_nothing(server_world: ServerWorld) -> None:
    proof = server_world.kiosk.tap(server_world.card, server_world.clock)
    assert ask(server_world, proof)["accepted"] is True
    replayed = ask(server_world, proof)
    assert replayed["accepted"] is False and replayed["reason"] == "counter_replayed"
    assert "categories" not in replayed

    with server_world.sessionmaker() as session:
        card = session.scalar(select(Card).where(Card.guid == server_world.card.guid.hex()))
        assert card is not None
        card.status = CardStatus.REVOKED
        session.commit()
    revoked = ask(server_world)
    assert (revoked["accepted"], revoked["reason"]) == (False, "card_revoked")


@pytest.mark.parametrize("used", [0, 1, 3])
def test_the_allowance_is_the_rules_own(used: int) -> None:
    """category_allowance is rules.evaluate and rules.remaining_by_category, nothing else."""
    import datetime as dt

    today = dt.date(2026, 11, 16)
    rule = rules.Rule("condoms", rules.MONTHLY, 3)
    usage = {"condoms": {today: used}}
    holder = rules.Holder(dt.date(1990, 1, 1), "F")
    line = choices.category_allowance([rule], usage, holder, "condoms", 1, today)
    decision = rules.evaluate([rule], usage, holder, "condoms", 1, today)
    assert line["allowed"] is decision.allowed
    assert line["left"] == 3 - used
    assert line["next_allowed_on"] == (None if decision.allowed else "2026-12-01")
