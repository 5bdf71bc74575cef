"""Exam eligibility: is a person eligible now for a free exam programme, and if not, why and when?

Pure: values in, a decision out. A programme serves some sexes and an age range (inclusive, on
the day), and is given once, or at most once every `interval_days`. The station learns only
eligible-or-not, a reason code and the next eligible date: never the person's details.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from server.domain.rules import Holder, age_on


class ExamReason(StrEnum):
    INACTIVE = "inactive"
    SEX_NOT_SERVED = "sex_not_served"
    TOO_YOUNG = "too_young"
    TOO_OLD = "too_old"
    ALREADY_GIVEN = "already_given"
    TOO_SOON = "too_soon"
    NO_PLAN = "no_plan"


@dataclass(frozen=True)
class Programme:
    code: str
    name: str
    sexes: frozenset[str] = frozenset()
    min_age: int | None = None
    max_age: int | None = None
    interval_days: int | None = None
    once: bool = False
    requires_plan: bool = False  # a couple planning a pregnancy; "once" then means once per plan


@dataclass(frozen=True)
class ExamDecision:
    programme: str
    eligible: bool
    reason: ExamReason | None = None
    next_eligible_on: dt.date | None = None


def birthday_at_age(birth_date: dt.date, age: int) -> dt.date:
    try:
        return birth_date.replace(year=birth_date.year + age)
    except ValueError:  # 29 February in a common year: the day after 28 February
        return dt.date(birth_date.year + age, 3, 1)


def evaluate(
    programme: Programme,
    holder: Holder,
    given_on: Sequence[dt.date],
    today: dt.date,
    plan_since: dt.date | None = None,
) -> ExamDecision:
    """`given_on`: the days this person had this programme's exam before; `plan_since`: the start
    of the pregnancy plan of the couple the person belongs to, if any."""

    def no(reason: ExamReason, next_on: dt.date | None = None) -> ExamDecision:
        return ExamDecision(programme.code, False, reason, next_on)

    if not holder.active:
        return no(ExamReason.INACTIVE)
    if programme.sexes and holder.sex not in programme.sexes:
        return no(ExamReason.SEX_NOT_SERVED)
    if programme.min_age is not None or programme.max_age is not None:
        if holder.birth_date is None:
            return no(ExamReason.TOO_YOUNG)
        age = age_on(holder.birth_date, today)
        if programme.min_age is not None and age < programme.min_age:
            return no(ExamReason.TOO_YOUNG, birthday_at_age(holder.birth_date, programme.min_age))
        if programme.max_age is not None and age > programme.max_age:
            return no(ExamReason.TOO_OLD)
    if programme.requires_plan:
        if plan_since is None:
            return no(ExamReason.NO_PLAN)
        given_on = [day for day in given_on if day >= plan_since]
    if given_on:
        last = max(given_on)
        if programme.once:
            return no(ExamReason.ALREADY_GIVEN)
        if programme.interval_days is not None and (today - last).days < programme.interval_days:
            next_on = last + dt.timedelta(days=programme.interval_days)
            too_old_by_then = (
                programme.max_age is not None
                and holder.birth_date is not None
                and age_on(holder.birth_date, next_on) > programme.max_age
            )
            return no(ExamReason.TOO_SOON, None if too_old_by_then else next_on)
    return ExamDecision(programme.code, True)
