"""server.domain.rules: pure entitlement evaluation (no database)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain import rules
from server.domain.rules import MONTHLY, YEARLY, Holder, Period, PeriodKind, Reason, Rule, rolling

D = dt.date
ADULT = Holder(birth_date=D(1990, 6, 1), sex="F")
CONDOMS_3_A_MONTH = Rule("condoms", MONTHLY, 3)


@pytest.mark.parametrize(
    ("period", "today", "window"),
    [
        (MONTHLY, D(2026, 11, 16), (D(2026, 11, 1), D(2026, 12, 1))),
        (MONTHLY, D(2026, 12, 31), (D(2026, 12, 1), D(2027, 1, 1))),
        (MONTHLY, D(2024, 2, 29), (D(2024, 2, 1), D(2024, 3, 1))),
        (YEARLY, D(2026, 11, 16), (D(2026, 1, 1), D(2027, 1, 1))),
        (rolling(22), D(2026, 11, 22), (D(2026, 11, 1), D(2026, 11, 23))),
        (rolling(1), D(2026, 11, 22), (D(2026, 11, 22), D(2026, 11, 23))),
    ],
)
def test_windows(period: Period, today: dt.date, window: tuple[dt.date, dt.date]) -> None:
    assert period.window(today) == window


def test_period_shape_is_checked() -> None:
    with pytest.raises(ValueError):
        Period(PeriodKind.ROLLING_DAYS)
    with pytest.raises(ValueError):
        Period(PeriodKind.CALENDAR_MONTH, 30)
    with pytest.raises(ValueError):
        rolling(0)


def test_monthly_allows_up_to_the_limit_then_refuses_until_next_month() -> None:
    today = D(2026, 11, 16)
    usage = {"condoms": {D(2026, 11, 2): 1, D(2026, 11, 10): 1}}
    allowed = rules.evaluate([CONDOMS_3_A_MONTH], usage, ADULT, "condoms", 1, today)
    assert allowed == rules.Decision(True, None, {"condoms": 0})
    usage["condoms"][today] = 1
    refused = rules.evaluate([CONDOMS_3_A_MONTH], usage, ADULT, "condoms", 1, today)
    assert (refused.allowed, refused.reason, refused.remaining) == (
        False,
        Reason.LIMIT_REACHED,
        {"condoms": 0},
    )
    assert refused.next_allowed_on == D(2026, 12, 1)


def test_last_month_does_not_count() -> None:
    usage = {"condoms": {D(2026, 10, 31): 3}}
    assert rules.evaluate([CONDOMS_3_A_MONTH], usage, ADULT, "condoms", 3, D(2026, 11, 1)).allowed


def test_december_rolls_into_january() -> None:
    usage = {"condoms": {D(2026, 12, 5): 3}}
    decision = rules.evaluate([CONDOMS_3_A_MONTH], usage, ADULT, "condoms", 1, D(2026, 12, 20))
    assert decision.next_allowed_on == D(2027, 1, 1)


def test_rolling_window_frees_units_as_days_fall_out() -> None:
    rule = Rule("condoms", rolling(22), 2)
    usage = {"condoms": {D(2026, 11, 1): 1, D(2026, 11, 10): 1}}
    today = D(2026, 11, 16)
    decision = rules.evaluate([rule], usage, ADULT, "condoms", 1, today)
    assert not decision.allowed
    # 1 Nov leaves the 22-day window on 23 Nov; 10 Nov leaves it on 2 Dec.
    assert decision.next_allowed_on == D(2026, 11, 23)
    assert rules.evaluate([rule], usage, ADULT, "condoms", 2, today).next_allowed_on == D(
        2026, 12, 2
    )
    assert rules.evaluate([rule], usage, ADULT, "condoms", 1, D(2026, 11, 23)).allowed


def test_yearly_rule() -> None:
    rule = Rule("folic_acid", YEARLY, 4)
    usage = {"folic_acid": {D(2026, 1, 3): 2, D(2026, 6, 1): 2, D(2025, 12, 31): 4}}
    decision = rules.evaluate([rule], usage, ADULT, "folic_acid", 1, D(2026, 11, 16))
    assert decision.next_allowed_on == D(2027, 1, 1)
    assert rules.evaluate([rule], usage, ADULT, "folic_acid", 1, D(2027, 1, 1)).allowed


def test_all_rules_of_a_category_must_allow() -> None:
    both = [Rule("condoms", MONTHLY, 10), Rule("condoms", YEARLY, 12)]
    usage = {"condoms": {D(2026, 3, 1): 10, D(2026, 11, 2): 2}}
    decision = rules.evaluate(both, usage, ADULT, "condoms", 1, D(2026, 11, 16))
    assert not decision.allowed
    assert decision.remaining == {"condoms": 0}
    assert decision.next_allowed_on == D(2027, 1, 1)


def test_per_visit_cap() -> None:
    rule = Rule("condoms", MONTHLY, 10, per_visit_cap=3)
    decision = rules.evaluate([rule], {}, ADULT, "condoms", 4, D(2026, 11, 16))
    assert (decision.allowed, decision.reason, decision.next_allowed_on) == (
        False,
        Reason.LIMIT_REACHED,
        None,
    )
    assert rules.evaluate([rule], {}, ADULT, "condoms", 3, D(2026, 11, 16)).allowed


def test_quantity_above_the_rule_is_never_allowed() -> None:
    decision = rules.evaluate([CONDOMS_3_A_MONTH], {}, ADULT, "condoms", 4, D(2026, 11, 16))
    assert not decision.allowed and decision.next_allowed_on is None


@pytest.mark.parametrize(
    ("holder", "allowed"),
    [
        (Holder(D(2008, 11, 16), "F"), True),  # 18 today
        (Holder(D(2008, 11, 17), "F"), False),  # 18 tomorrow
        (Holder(D(1966, 11, 17), "F"), True),  # 59
        (Holder(D(1966, 11, 16), "F"), False),  # 60: above max_age 59
        (Holder(D(1990, 1, 1), "M"), False),
        (Holder(None, "F"), False),
        (Holder(D(1990, 1, 1), "F", active=False), False),
    ],
)
def test_eligibility(holder: Holder, allowed: bool) -> None:
    rule = Rule("pregnancy_test", MONTHLY, 1, min_age=18, max_age=59, sexes=frozenset("F"))
    decision = rules.evaluate([rule], {}, holder, "pregnancy_test", 1, D(2026, 11, 16))
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason is Reason.NOT_ELIGIBLE


def test_no_rule_means_no_entitlement() -> None:
    decision = rules.evaluate([CONDOMS_3_A_MONTH], {}, ADULT, "lubricant", 1, D(2026, 11, 16))
    assert decision.reason is Reason.NOT_ELIGIBLE
    assert decision.remaining == {"condoms": 3}


def test_age_on_birthdays() -> None:
    assert rules.age_on(D(2000, 2, 29), D(2026, 2, 28)) == 25
    assert rules.age_on(D(2000, 2, 29), D(2026, 3, 1)) == 26


def test_lookback_covers_every_rule() -> None:
    today = D(2026, 11, 16)
    assert rules.lookback_start([CONDOMS_3_A_MONTH, Rule("x", rolling(60), 1)], today) == D(
        2026, 9, 18
    )
    assert rules.lookback_start([Rule("x", YEARLY, 1)], today) == D(2026, 1, 1)


days = st.dates(min_value=D(2025, 1, 1), max_value=D(2027, 12, 31))
periods = st.one_of(st.just(MONTHLY), st.just(YEARLY), st.integers(1, 90).map(rolling))


@given(
    period=periods,
    units=st.integers(0, 12),
    usage=st.dictionaries(days, st.integers(0, 4), max_size=20),
    today=days,
    quantity=st.integers(1, 5),
)
def test_a_decision_never_exceeds_the_allowance(
    period: Period, units: int, usage: dict[dt.date, int], today: dt.date, quantity: int
) -> None:
    past = {day: n for day, n in usage.items() if day <= today}
    rule = Rule("c", period, units)
    decision = rules.evaluate([rule], {"c": past}, ADULT, "c", quantity, today)
    used = rules.used_in_period(past, period, today)
    assert decision.allowed == (used + quantity <= units)
    if decision.allowed:
        assert decision.remaining["c"] == units - used - quantity >= 0
    elif decision.next_allowed_on is not None:
        # On the promised day the same quantity fits, if nothing else is taken.
        assert decision.next_allowed_on > today
        later = rules.evaluate([rule], {"c": past}, ADULT, "c", quantity, decision.next_allowed_on)
        assert later.allowed
