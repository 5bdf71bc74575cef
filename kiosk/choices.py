"""What a card may take at this kiosk now, and the menu the resident chooses from.

`Entitlements` is the answer to "what may this card take here now": per category how many units
are left this period, whether a unit may be taken now, why not, and the date more is allowed.
It comes from the server (POST /api/v1/entitlements, docs/interfaces.md; parsed here by
`entitlements_from_json`) or, when the server cannot be reached, from the signed offline policy
(kiosk.offline.OfflineMode.entitlements).

`menu()` joins it with the kiosk's products (the signed configuration's slots) and the board's
stock into the choice the screen shows: every product, grouped by category, in stock or not,
and whether this card may take it. Pure: values in, values out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiosk.config_sync import SlotConfig


class Source(StrEnum):
    SERVER = "server"
    OFFLINE = "offline"  # the signed offline policy answered
    UNREACHABLE = "unreachable"  # no server, and no offline mode that may answer


@dataclass(frozen=True)
class CategoryAllowance:
    category: str
    left: int  # units left this period (offline: left in the offline window)
    allowed: bool  # may one unit be taken now
    reason: str | None = None  # why not (limit_reached, not_eligible, offline_...)
    next_allowed_on: dt.date | None = None


@dataclass(frozen=True)
class Entitlements:
    source: Source
    accepted: bool  # the card itself was accepted
    reason: str | None = None  # why the card was not (card_revoked, card_unknown, ...)
    categories: Mapping[str, CategoryAllowance] = field(default_factory=dict)

    def allowance(self, category: str) -> CategoryAllowance:
        return self.categories.get(category) or CategoryAllowance(
            category, 0, False, "not_eligible"
        )


def entitlements_from_json(doc: Mapping[str, Any]) -> Entitlements:
    """The server's answer to POST /api/v1/entitlements."""
    if not doc.get("accepted"):
        return Entitlements(Source.SERVER, False, str(doc.get("reason") or "card_refused"))
    categories = {}
    for item in doc.get("categories") or []:
        next_on = item.get("next_allowed_on")
        categories[str(item["category"])] = CategoryAllowance(
            category=str(item["category"]),
            left=int(item.get("left") or 0),
            allowed=bool(item.get("allowed")),
            reason=item.get("reason"),
            next_allowed_on=dt.date.fromisoformat(next_on) if next_on else None,
        )
    return Entitlements(Source.SERVER, True, None, categories)


@dataclass(frozen=True)
class Offer:
    """One product in one slot, as the resident sees it."""

    slot: int
    sku: str
    name: str
    category: str
    units: int
    stock: int | None  # the board's count; None: unknown
    may_take: bool  # in stock and allowed for this card now

    @property
    def in_stock(self) -> bool:
        return self.stock is None or self.stock > 0


@dataclass(frozen=True)
class CategoryMenu:
    category: str
    allowance: CategoryAllowance
    offers: tuple[Offer, ...]


def menu(
    slots: Mapping[int, SlotConfig],
    stock: Mapping[int, int],
    entitlements: Entitlements,
    *,
    exclude: frozenset[int] = frozenset(),
) -> list[CategoryMenu]:
    """Every product of this kiosk by category (in the order of their first slot); `exclude`
    names slots to leave out (the one that just ran out)."""
    by_category: dict[str, list[Offer]] = {}
    for number in sorted(slots):
        if number in exclude:
            continue
        slot = slots[number]
        allowance = entitlements.allowance(slot.category)
        count = stock.get(number)
        in_stock = count is None or count > 0
        may = in_stock and allowance.allowed and allowance.left >= slot.units
        by_category.setdefault(slot.category, []).append(
            Offer(number, slot.sku, slot.name, slot.category, slot.units, count, may)
        )
    return [
        CategoryMenu(category, entitlements.allowance(category), tuple(offers))
        for category, offers in by_category.items()
    ]


def same_category(
    slots: Mapping[int, SlotConfig], stock: Mapping[int, int], slot: int
) -> list[int]:
    """Other slots with a product of `slot`'s category that are in stock: what to offer when
    `slot` ran out."""
    if slot not in slots:
        return []
    category = slots[slot].category
    return [
        n
        for n in sorted(slots)
        if n != slot and slots[n].category == category and stock.get(n, 1) > 0
    ]
