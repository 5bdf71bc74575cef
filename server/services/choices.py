"""What a card may take at a kiosk now: per category offered there, what is left this period,
whether one item may be taken, why not, and the date more is allowed.

The kiosk asks this (POST /api/v1/entitlements, signed, with a fresh card proof) before the
resident chooses; the rules are server.domain.rules, evaluated exactly as authorize evaluates
them (`rules.evaluate` for each category with the units of its smallest product here, and
`rules.remaining_by_category` for what is left), so the screen never offers what authorize
would refuse for a limit, nor hides what it would allow.

The card is checked as at a station (dispensing.check_tap): registered, active, a fresh proof
that verifies with the certificate recorded at issuance, and the kiosk's counter advanced, so a
proof answers once. The answer names nothing about the person but what is left to take.
Nothing is reserved: the units are reserved by authorize, with its own fresh proof.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from server.domain import rules
from server.services.context import Context
from server.services.dispensing import cached_rules, check_tap, holder_of, load_usage, parse_tap
from server.store.models import KioskSlot, Product, Resident


def entitlements(session: Session, ctx: Context, kiosk_id: str, proof: Any) -> dict[str, Any]:
    """The answer for one card at `kiosk_id`: `{"accepted": true, "categories": [...]}`, or
    `{"accepted": false, "reason", "message"}` when the card is refused (the refusal codes of
    authorize: card_unknown, card_revoked, proof_invalid, proof_stale, counter_replayed)."""
    challenge, signature = parse_tap(proof, kiosk_id, ctx)
    tapped = check_tap(session, ctx, kiosk_id, challenge, signature)
    if isinstance(tapped, dict):
        return {"accepted": False, "reason": tapped["reason"], "message": tapped["message"]}
    card, now = tapped
    today = ctx.today(now)
    resident = session.get(Resident, card.resident_id)
    assert resident is not None  # a card row always names its resident
    rule_set = cached_rules(session, ctx, kiosk_id)  # this kiosk's area's rules, as authorize
    usage = load_usage(session, resident.id, rules.lookback_start(rule_set, today))
    return {
        "accepted": True,
        "categories": [
            category_allowance(rule_set, usage, holder_of(ctx, resident), code, units, today)
            for code, units in offered_categories(session, kiosk_id).items()
        ],
    }


def offered_categories(session: Session, kiosk_id: str) -> dict[str, int]:
    """The categories this kiosk's slots hold, each with its smallest product's units, in the
    order of their first slot."""
    rows = session.scalars(
        select(KioskSlot)
        .where(KioskSlot.kiosk_id == kiosk_id)
        .options(joinedload(KioskSlot.product).joinedload(Product.category))
        .order_by(KioskSlot.slot)
    ).all()
    offered: dict[str, int] = {}
    for row in rows:
        code = row.product.category.code
        offered[code] = min(row.product.units, offered.get(code, row.product.units))
    return offered


def category_allowance(
    rule_set: list[rules.Rule],
    usage: Mapping[str, rules.Usage],
    holder: rules.Holder,
    category: str,
    units: int,
    today: dt.date,
) -> dict[str, Any]:
    """One category's line of the answer, from the rules alone (pure)."""
    decision = rules.evaluate(rule_set, usage, holder, category, units, today)
    left = rules.remaining_by_category(rule_set, usage, today).get(category, 0)
    return {
        "category": category,
        "left": left if decision.reason is not rules.Reason.NOT_ELIGIBLE else 0,
        "allowed": decision.allowed,
        "reason": None if decision.reason is None else str(decision.reason),
        "next_allowed_on": (
            decision.next_allowed_on.isoformat() if decision.next_allowed_on else None
        ),
    }
