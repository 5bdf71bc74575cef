"""Entitlement rules: who may take how many units of a category, and when more is allowed.

Pure: values in, a Decision out; no clock, no database. The caller gives "today" in the city's
time zone and the person's usage as units per day per category (reserved and captured both
count: a reservation is a unit the person is about to hold).

A rule limits one category to `units` per period, where a period is
- a calendar month (resets on the 1st),
- a rolling window of N days (today and the N-1 days before it), or
- a calendar year (resets on 1 January);
with optionally a cap per visit and eligibility by age (inclusive range) and sex. Several rules
may apply to one category (3 a month and 24 a year); a request must satisfy all of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

Usage = Mapping[dt.date, int]
"""Units used per day in one category."""


class PeriodKind(StrEnum):
    CALENDAR_MONTH = "calendar_month"
    ROLLING_DAYS = "rolling_days"
    CALENDAR_YEAR = "calendar_year"


class Reason(StrEnum):
    """Every reason a tap is refused, with the stable codes of docs/interfaces.md: the rules
    decide the last two; the card and tap checks (server.services.dispensing) the others. The
    same enum is the `reason` of the answer's schema."""

    CARD_UNKNOWN = "card_unknown"
    CARD_REVOKED = "card_revoked"
    PROOF_INVALID = "proof_invalid"
    PROOF_STALE = "proof_stale"
    COUNTER_REPLAYED = "counter_replayed"
    SLOT_UNKNOWN = "slot_unknown"
    LIMIT_REACHED = "limit_reached"
    NOT_ELIGIBLE = "not_eligible"


@dataclass(frozen=True)
class Period:
    kind: PeriodKind
    days: int | None = None  # rolling_days only

    def __post_init__(self) -> None:
        if (self.kind is PeriodKind.ROLLING_DAYS) != (self.days is not None):
            raise ValueError("a rolling window needs days, and only a rolling window has them")
        if self.days is not None and self.days < 1:
            raise ValueError("a rolling window is at least one day")

    def window(self, today: dt.date) -> tuple[dt.date, dt.date]:
        """The period containing `today`: first day inclusive, last day exclusive."""
        if self.kind is PeriodKind.CALENDAR_MONTH:
            return today.replace(day=1), _first_of_next_month(today)
        if self.kind is PeriodKind.CALENDAR_YEAR:
            return dt.date(today.year, 1, 1), dt.date(today.year + 1, 1, 1)
        assert self.days is not None
        return today - dt.timedelta(days=self.days - 1), today + dt.timedelta(days=1)

    def describe(self) -> str:
        if self.kind is PeriodKind.CALENDAR_MONTH:
            return "month"
        if self.kind is PeriodKind.CALENDAR_YEAR:
            return "year"
        return f"{self.days} days"


MONTHLY = Period(PeriodKind.CALENDAR_MONTH)
YEARLY = Period(PeriodKind.CALENDAR_YEAR)


def rolling(days: int) -> Period:
    return Period(PeriodKind.ROLLING_DAYS, days)


@dataclass(frozen=True)
class Rule:
    category: str
    period: Period
    units: int
    per_visit_cap: int | None = None
    min_age: int | None = None
    max_age: int | None = None
    sexes: frozenset[str] = frozenset()  # empty: any

    def __post_init__(self) -> None:
        if self.units < 0:
            raise ValueError("units must not be negative")


@dataclass(frozen=True)
class Holder:
    """What the rules may know about a person."""

    birth_date: dt.date | None
    sex: str | None
    active: bool = True


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason | None
    remaining: dict[str, int] = field(default_factory=dict)
    next_allowed_on: dt.date | None = None
    message: str = ""


def age_on(birth_date: dt.date, today: dt.date) -> int:
    years = today.year - birth_date.year
    if (today.month, today.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def used_in_period(usage: Usage, period: Period, today: dt.date) -> int:
    start, end = period.window(today)
    return sum(units for day, units in usage.items() if start <= day < end)


def lookback_start(rules: Iterable[Rule], today: dt.date) -> dt.date:
    """The earliest day whose usage any of `rules` can see: the caller loads usage from there."""
    return min((rule.period.window(today)[0] for rule in rules), default=today)


def remaining_for(rule: Rule, usage: Usage, today: dt.date) -> int:
    return max(0, rule.units - used_in_period(usage, rule.period, today))


def next_allowed_on(rule: Rule, usage: Usage, today: dt.date, quantity: int) -> dt.date | None:
    """The first day after today on which `quantity` more units fit under `rule`, assuming no
    further use; None when they never can (the quantity alone exceeds the rule)."""
    if quantity > rule.units:
        return None
    period = rule.period
    if period.kind is PeriodKind.CALENDAR_MONTH:
        return _first_of_next_month(today)
    if period.kind is PeriodKind.CALENDAR_YEAR:
        return dt.date(today.year + 1, 1, 1)
    # Rolling: the window slides one day at a time; it frees units when used days fall out.
    assert period.days is not None
    for day in sorted(d + dt.timedelta(days=period.days) for d in usage if usage[d] > 0):
        if day > today and used_in_period(usage, period, day) + quantity <= rule.units:
            return day
    return today + dt.timedelta(days=1)


def eligible(rule: Rule, holder: Holder, today: dt.date) -> bool:
    if not holder.active:
        return False
    if rule.sexes and holder.sex not in rule.sexes:
        return False
    if rule.min_age is not None or rule.max_age is not None:
        if holder.birth_date is None:
            return False
        age = age_on(holder.birth_date, today)
        if rule.min_age is not None and age < rule.min_age:
            return False
        if rule.max_age is not None and age > rule.max_age:
            return False
    return True


def remaining_by_category(
    rules: Sequence[Rule], usage: Mapping[str, Usage], today: dt.date
) -> dict[str, int]:
    """What is left now in each category that has rules: the tightest of its rules."""
    remaining: dict[str, int] = {}
    for rule in rules:
        left = remaining_for(rule, usage.get(rule.category, {}), today)
        remaining[rule.category] = min(left, remaining.get(rule.category, left))
    return remaining


def evaluate(
    rules: Sequence[Rule],
    usage: Mapping[str, Usage],
    holder: Holder,
    category: str,
    quantity: int,
    today: dt.date,
) -> Decision:
    """May `holder` take `quantity` units of `category` today?"""
    if quantity < 1:
        raise ValueError("quantity must be at least 1")
    remaining = remaining_by_category(rules, usage, today)
    applicable = [rule for rule in rules if rule.category == category]
    if not applicable:
        return Decision(
            False, Reason.NOT_ELIGIBLE, remaining, None, f"no entitlement to {category}"
        )
    if not all(eligible(rule, holder, today) for rule in applicable):
        return Decision(False, Reason.NOT_ELIGIBLE, remaining, None, f"not eligible for {category}")

    category_usage = usage.get(category, {})
    refusals: list[tuple[Rule, dt.date | None]] = []
    for rule in applicable:
        if rule.per_visit_cap is not None and quantity > rule.per_visit_cap:
            return Decision(
                False,
                Reason.LIMIT_REACHED,
                remaining,
                None,
                f"at most {rule.per_visit_cap} {category} per visit",
            )
        if used_in_period(category_usage, rule.period, today) + quantity > rule.units:
            refusals.append((rule, next_allowed_on(rule, category_usage, today, quantity)))
    if refusals:
        dates = [day for _rule, day in refusals]
        next_day = None if any(day is None for day in dates) else max(d for d in dates if d)
        rule = refusals[0][0]
        return Decision(
            False,
            Reason.LIMIT_REACHED,
            remaining,
            next_day,
            f"limit of {rule.units} {category} per {rule.period.describe()} reached",
        )
    after = dict(remaining)
    after[category] = remaining[category] - quantity
    return Decision(True, None, after)


def _first_of_next_month(day: dt.date) -> dt.date:
    return dt.date(day.year + 1, 1, 1) if day.month == 12 else dt.date(day.year, day.month + 1, 1)
