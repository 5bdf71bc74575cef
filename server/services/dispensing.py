"""The tap and what it spends: authorize, capture, void, offline sync, and the rules as data.

Concurrency (see also server.store.db and server.store.ledger):
- authorize advances the kiosk's counter with a conditional UPDATE (`last_counter < :counter`), so
  a proof is used at most once even under concurrent requests;
- it then locks the person's row (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite already holds the
  database write lock from `BEGIN IMMEDIATE`), reads the person's usage, evaluates the rules and
  increments the day's usage row, so two kiosks cannot both take the last unit;
- capture and void move an authorization out of `reserved` with a conditional UPDATE, so each
  happens once, and shift its units between the usage row's counters with SQL increments.
Lock order is always kiosk row, then resident row: no deadlock between authorizations.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from cardsvc.errors import CardVerificationError, VerificationFailure
from cardsvc.verify import TapChallenge, load_certificate, verify_tap
from server.domain import rules
from server.errors import Conflict, Forbidden, InvalidRequest, NotFound, ServiceUnavailable
from server.services.context import Context, _connection, _is_hex
from server.services.people import ancestor_ids, in_scope, subtree_ids
from server.store import audit, ledger
from server.store.models import (
    Authorization,
    AuthorizationStatus,
    CardStatus,
    Category,
    EntitlementRule,
    Kiosk,
    KioskSlot,
    PeriodKindColumn,
    Product,
    Region,
    Resident,
    ResidentStatus,
    StaffUser,
)

# --- authorize, capture, void --------------------------------------------------------------------


_VERIFICATION_REASON = {VerificationFailure.REVOKED: rules.Reason.CARD_REVOKED}


def refusal(
    reason: rules.Reason,
    message: str,
    remaining: Mapping[str, int] | None = None,
    next_allowed_on: dt.date | None = None,
) -> dict[str, Any]:
    return {
        "approved": False,
        "reason": str(reason),
        "message": message,
        "remaining": dict(remaining or {}),
        "next_allowed_on": next_allowed_on.isoformat() if next_allowed_on else None,
    }


@dataclass(frozen=True)
class TappedCard:
    id: int
    resident_id: int


def tap_time(challenge: TapChallenge) -> dt.datetime | None:
    """When the card was tapped, by the kiosk's clock; None for a time off the calendar."""
    try:
        return dt.datetime.fromtimestamp(challenge.time_ms / 1000, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None


def check_card(
    ctx: Context,
    card: ledger.CardRow | None,
    challenge: TapChallenge,
    signature: bytes,
    now: dt.datetime,
    *,
    as_of_tap: bool = False,
) -> tuple[rules.Reason, str] | None:
    """The one check of a tapped card, for every path that takes a tap (authorize, a station's
    check, the offline sync): why it is refused, or None. The card is registered and active, the
    tap is fresh, and the proof verifies with the certificate recorded at issuance.

    `as_of_tap` (the offline sync: the item already dropped) checks the proof as of the moment of
    the tap and leaves the card's status and the tap's age to the caller, who flags them."""
    if card is None:
        return rules.Reason.CARD_UNKNOWN, "this card is not registered"
    tapped_at = tap_time(challenge)
    if tapped_at is None:
        return rules.Reason.PROOF_STALE, "the tap's time is not a date"
    if not as_of_tap:
        if card.status is not CardStatus.ACTIVE:
            return rules.Reason.CARD_REVOKED, f"this card is {card.status.value}"
        if abs((tapped_at - now).total_seconds()) > ctx.clock_skew:
            return rules.Reason.PROOF_STALE, "the tap is too old or from the future"
    try:
        verify_tap(
            _parsed_certificate(card.certificate),
            _parsed_certificate(ctx.card_ca_der),  # type: ignore[arg-type]
            challenge,
            signature,
            now=tapped_at if as_of_tap else now,
        )
    except CardVerificationError as exc:
        return _VERIFICATION_REASON.get(exc.reason, rules.Reason.PROOF_INVALID), str(exc)
    return None


def check_tap(
    session: Session, ctx: Context, device_id: str, challenge: TapChallenge, signature: bytes
) -> tuple[TappedCard, dt.datetime] | dict[str, Any]:
    """The card behind a tap at a station, or a refusal (see check_card); the device's counter
    grows (advanced here, so a proof is used once)."""
    store = ledger.ledger_for(session)
    card = store.cards([challenge.card_guid.hex()]).get(challenge.card_guid.hex())
    now = ctx.now()
    refused = check_card(ctx, card, challenge, signature, now)
    if refused is not None:
        return refusal(*refused)
    assert card is not None
    if not store.advance_counter(device_id, challenge.counter):
        return refusal(rules.Reason.COUNTER_REPLAYED, "this tap was already used")
    return TappedCard(card.id, card.resident_id), now


def parse_tap(proof: Any, device_id: str, ctx: Context) -> tuple[TapChallenge, bytes]:
    """A proof's challenge and signature, made at this device; 400/403/503 otherwise."""
    try:
        challenge, signature = TapChallenge.from_json(proof)
    except CardVerificationError as exc:
        raise InvalidRequest(f"proof: {exc.detail or exc}", code="proof_malformed") from exc
    if challenge.kiosk_id != device_id:
        raise Forbidden("the proof was made at another device", code="kiosk_mismatch")
    if ctx.card_ca_der is None:
        raise ServiceUnavailable("the card CA is not configured", code="card_ca_not_configured")
    return challenge, signature


def authorize(
    session: Session, ctx: Context, kiosk_id: str, proof: Any, slot: int, quantity: int
) -> dict[str, Any]:
    """Decide a tap: verify the card's proof, apply the rules, reserve the units.

    Returns the JSON answer (approved or refused, both 200). Raises ApiError for requests that are
    malformed or not this kiosk's to make. Three ledger steps: read the slot and the card; advance
    the kiosk's counter and hold the person (row lock) with their usage; reserve.
    """
    challenge, signature = parse_tap(proof, kiosk_id, ctx)
    store = ledger.ledger_for(session)
    tap = store.tap_context(kiosk_id, slot, challenge.card_guid.hex())
    product = tap.product
    if product is None:
        return refusal(rules.Reason.SLOT_UNKNOWN, f"slot {slot} holds no product")
    now = ctx.now()
    refused = check_card(ctx, tap.card, challenge, signature, now)
    if refused is not None:
        return refusal(*refused)
    card = tap.card
    assert card is not None
    today = ctx.today(now)
    rule_set = cached_rules(session, ctx, kiosk_id)
    held = store.hold(
        kiosk_id, challenge.counter, card.resident_id, rules.lookback_start(rule_set, today)
    )
    if held is None:
        return refusal(rules.Reason.COUNTER_REPLAYED, "this tap was already used")
    holder = _holder(ctx, held.birth_date_enc, held.sex_enc, held.status)
    units = quantity * product.units
    decision = rules.evaluate(rule_set, held.usage, holder, product.category, units, today)
    if not decision.allowed:
        assert decision.reason is not None
        return refusal(
            decision.reason, decision.message, decision.remaining, decision.next_allowed_on
        )
    authorization_id = uuid.uuid4().hex
    store.reserve(
        ledger.Reservation(
            id=authorization_id,
            kiosk_id=kiosk_id,
            card_id=card.id,
            resident_id=card.resident_id,
            product_id=product.id,
            category_id=product.category_id,
            slot=slot,
            quantity=quantity,
            units=units,
            usage_day=today,
            proof_counter=challenge.counter,
            created_at=now,
        )
    )
    return {
        "approved": True,
        "authorization_id": authorization_id,
        "product": {"sku": product.sku, "name": product.name, "category": product.category},
        "remaining": decision.remaining,
    }


def capture(
    session: Session, ctx: Context, kiosk_id: str, authorization_id: str, board_txn: int | None
) -> dict[str, Any]:
    """The item dropped: charge the reserved units. Capturing twice answers the same."""
    status, remaining = _settle(
        session, ctx, kiosk_id, authorization_id, AuthorizationStatus.CAPTURED, board_txn=board_txn
    )
    if status is AuthorizationStatus.VOIDED:
        raise Conflict("this authorization was voided", code="authorization_voided")
    return {"status": "captured", "remaining": remaining}


def void(
    session: Session, ctx: Context, kiosk_id: str, authorization_id: str, reason: str
) -> dict[str, Any]:
    """Nothing was dispensed: release the reserved units. Voiding twice answers the same."""
    status, remaining = _settle(
        session, ctx, kiosk_id, authorization_id, AuthorizationStatus.VOIDED, reason=reason
    )
    if status is AuthorizationStatus.CAPTURED:
        raise Conflict(
            "this authorization was captured; a correction is a reversal",
            code="authorization_captured",
        )
    return {"status": "voided", "remaining": remaining}


def _settle(
    session: Session,
    ctx: Context,
    kiosk_id: str,
    authorization_id: str,
    to: AuthorizationStatus,
    *,
    board_txn: int | None = None,
    reason: str | None = None,
) -> tuple[AuthorizationStatus, dict[str, int]]:
    """Move this kiosk's reservation to `to` exactly once (the ledger's conditional UPDATE: of
    concurrent captures and voids exactly one moves it). Returns the status it ends in and what
    the person has left."""
    if not _is_hex(authorization_id):
        raise NotFound("no such authorization for this kiosk", code="authorization_unknown")
    now = ctx.now()
    today = ctx.today(now)
    rule_set = cached_rules(session, ctx, kiosk_id)
    settled = ledger.ledger_for(session).settle(
        authorization_id,
        kiosk_id,
        to,
        now,
        board_txn,
        reason,
        rules.lookback_start(rule_set, today),
    )
    # Another kiosk's authorization is reported as unknown: a kiosk cannot probe others' ids.
    if settled is None or settled.kiosk_id != kiosk_id:
        raise NotFound("no such authorization for this kiosk", code="authorization_unknown")
    return settled.status, rules.remaining_by_category(rule_set, settled.usage, today)


@functools.lru_cache(maxsize=65_536)
def _parsed_certificate(der: bytes) -> x509.Certificate:
    """Parsing a certificate costs more than verifying it; DER is immutable, so keep the parse."""
    return load_certificate(der)


@dataclass(frozen=True)
class RuleBook:
    """The active rules with their areas, and where each kiosk stands, read together.

    A rule's area is part of the rule: a rule made for a town applies to taps at the kiosks in
    that town (its subtree), on top of the city's rules; every rule that applies must be
    satisfied, so an area's administrator can make their area stricter, never looser than the
    city's rules.
    """

    city: list[rules.Rule]
    by_area: dict[int, list[rules.Rule]]
    parents: dict[int, int | None]
    kiosk_regions: dict[str, int]

    def for_region(self, region_id: int | None) -> list[rules.Rule]:
        found = list(self.city)
        current = region_id
        for _ in range(16):  # the tree is shallow: city -> town -> village
            if current is None:
                break
            found.extend(self.by_area.get(current, ()))
            current = self.parents.get(current)
        return found


def cached_rules(session: Session, ctx: Context, kiosk_id: str | None = None) -> list[rules.Rule]:
    """The active rules that apply at `kiosk_id` (None: the city-wide ones), re-read at most
    every RULES_TTL seconds (rules change rarely; an edit takes effect within that time)."""
    book: RuleBook = ctx.rules_cache.get(ctx.clock(), lambda: load_rules(session))
    if kiosk_id is None or not book.by_area:
        return book.city
    region_id = book.kiosk_regions.get(kiosk_id)
    if region_id is None:  # registered since the book was read
        region_id = session.scalar(select(Kiosk.region_id).where(Kiosk.id == kiosk_id))
    return book.for_region(region_id)


def rules_where_resident_lives(
    session: Session, ctx: Context, resident: Resident
) -> list[rules.Rule]:
    """The rules a lookup made away from any kiosk applies to a person: those of the place they
    live now (their current residence, else where they are registered), as that place's kiosks
    would (services follow the current residence)."""
    book: RuleBook = ctx.rules_cache.get(ctx.clock(), lambda: load_rules(session))
    if not book.by_area:
        return book.city
    return book.for_region(resident.current_region_id or resident.region_id)


def load_rules(session: Session) -> RuleBook:
    rows = session.execute(
        select(EntitlementRule, Category.code)
        .join(Category, EntitlementRule.category_id == Category.id)
        .where(EntitlementRule.active.is_(True))
        .order_by(EntitlementRule.id)
    ).all()
    city: list[rules.Rule] = []
    by_area: dict[int, list[rules.Rule]] = defaultdict(list)
    for row, code in rows:
        rule = rule_from_row(row, code)
        (city if row.region_id is None else by_area[row.region_id]).append(rule)
    if not by_area:
        return RuleBook(city, {}, {}, {})
    parents = {i: p for i, p in session.execute(select(Region.id, Region.parent_id))}
    kiosks = {k: r for k, r in session.execute(select(Kiosk.id, Kiosk.region_id))}
    return RuleBook(city, dict(by_area), parents, kiosks)


def rule_from_row(row: EntitlementRule, category_code: str) -> rules.Rule:
    return rules.Rule(
        category=category_code,
        period=rules.Period(rules.PeriodKind(row.period_kind.value), row.period_days),
        units=row.units,
        per_visit_cap=row.per_visit_cap,
        min_age=row.min_age,
        max_age=row.max_age,
        sexes=frozenset(row.sexes or ""),
    )


def load_usage(session: Session, resident_id: int, since: dt.date) -> dict[str, dict[dt.date, int]]:
    return ledger.read_usage(_connection(session), resident_id, since)


def remaining_for_resident(session: Session, ctx: Context, resident_id: int) -> dict[str, int]:
    """What the person has left under the rules of the place they live (no kiosk in question)."""
    resident = session.get(Resident, resident_id)
    if resident is None:
        raise NotFound(f"no resident {resident_id}", code="resident_unknown")
    today = ctx.today()
    rule_set = rules_where_resident_lives(session, ctx, resident)
    usage = load_usage(session, resident_id, rules.lookback_start(rule_set, today))
    return rules.remaining_by_category(rule_set, usage, today)


def holder_of(ctx: Context, resident: Resident) -> rules.Holder:
    return _holder(ctx, resident.birth_date_enc, resident.sex_enc, resident.status)


def _holder(
    ctx: Context, birth_date_enc: bytes, sex_enc: bytes, status: ResidentStatus
) -> rules.Holder:
    try:
        birth_date = ctx.cipher.decrypt_date("birth_date", birth_date_enc)
        sex = ctx.cipher.decrypt("sex", sex_enc)
    except (InvalidTag, ValueError) as exc:
        raise ServiceUnavailable(
            "personal fields cannot be decrypted: ONECARD_FIELD_KEY differs from the key they "
            "were written with",
            code="field_key_mismatch",
        ) from exc
    return rules.Holder(birth_date, sex, status is ResidentStatus.ACTIVE)


def open_reservations(
    session: Session, ctx: Context, *, limit: int = 100, after: str | None = None
) -> list[dict[str, Any]]:
    """Reservations that were never captured or voided, oldest first, with their age.

    They are never released silently: a kiosk settles them after recovery, or an administrator.
    """
    query = select(Authorization).where(Authorization.status == AuthorizationStatus.RESERVED)
    if after:
        cursor = session.get(Authorization, after) if _is_hex(after) else None
        if cursor is None:
            raise InvalidRequest(
                "after must be an authorization id from a previous page", code="field_invalid"
            )
        query = query.where(
            (Authorization.created_at > cursor.created_at)
            | ((Authorization.created_at == cursor.created_at) & (Authorization.id > cursor.id))
        )
    rows = session.scalars(
        query.order_by(Authorization.created_at, Authorization.id).limit(limit)
    ).all()
    now = ctx.now()
    return [
        {
            "authorization_id": row.id,
            "kiosk_id": row.kiosk_id,
            "slot": row.slot,
            "quantity": row.quantity,
            "created_at": audit.as_utc(row.created_at).isoformat(),
            "age_seconds": int((now - audit.as_utc(row.created_at)).total_seconds()),
        }
        for row in rows
    ]


# --- entitlement rules as data -------------------------------------------------------------------


def rule_view(row: EntitlementRule, category_code: str, area: str | None) -> dict[str, Any]:
    return {
        "rule_id": row.id,
        "area": area,
        "category": category_code,
        "period_kind": row.period_kind.value,
        "period_days": row.period_days,
        "units": row.units,
        "per_visit_cap": row.per_visit_cap,
        "min_age": row.min_age,
        "max_age": row.max_age,
        "sexes": row.sexes or "",
        "active": row.active,
    }


def list_rules(
    session: Session, *, include_inactive: bool = False, user: StaffUser | None = None
) -> list[dict[str, Any]]:
    """The rules, each with its area's code (None: the whole city). For a user scoped to an
    area: the city's rules and those of the areas above and within theirs (what applies there)."""
    query = (
        select(EntitlementRule, Category.code, Region.code)
        .join(Category, EntitlementRule.category_id == Category.id)
        .outerjoin(Region, Region.id == EntitlementRule.region_id)
    )
    if not include_inactive:
        query = query.where(EntitlementRule.active.is_(True))
    if user is not None and user.region_id is not None:
        related = [*subtree_ids(session, user.region_id), *ancestor_ids(session, user.region_id)]
        query = query.where(
            EntitlementRule.region_id.is_(None) | EntitlementRule.region_id.in_(related)
        )
    return [
        rule_view(row, code, area)
        for row, code, area in session.execute(query.order_by(EntitlementRule.id))
    ]


def _rule_area(session: Session, user: StaffUser, area: str | None) -> int | None:
    """The region a user may give a rule: their own area or one inside it; the whole city (None)
    only for a city-wide administrator."""
    if area is None:
        if user.region_id is not None:
            raise Forbidden(
                "a rule for the whole city needs a city-wide administrator; give your area",
                code="out_of_scope",
                field="area",
            )
        return None
    region_id = session.scalar(select(Region.id).where(Region.code == area))
    if region_id is None:
        raise NotFound(f"no region {area}", code="region_unknown", field="area")
    if not in_scope(session, user, region_id):
        raise Forbidden("this area is outside yours", code="out_of_scope", field="area")
    return region_id


def create_rule(
    session: Session, ctx: Context, user: StaffUser, spec: Mapping[str, Any]
) -> dict[str, Any]:
    """Add a rule (rules are never edited in place: a change is a new rule and the old one
    deactivated, so what applied when stays on record). Validated through server.domain.rules."""
    area_id = _rule_area(session, user, spec.get("area"))
    category = session.scalar(select(Category).where(Category.code == spec["category"]))
    if category is None:
        raise NotFound(f"no category {spec['category']}", code="category_unknown", field="category")
    try:
        period = rules.Period(rules.PeriodKind(spec["period_kind"]), spec.get("period_days"))
        rules.Rule(category.code, period, spec["units"])
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="rule_invalid") from exc
    low, high = spec.get("min_age"), spec.get("max_age")
    if low is not None and high is not None and low > high:
        raise InvalidRequest("min_age is above max_age", code="rule_invalid")
    row = EntitlementRule(
        category_id=category.id,
        period_kind=PeriodKindColumn(period.kind.value),
        period_days=period.days,
        units=spec["units"],
        per_visit_cap=spec.get("per_visit_cap"),
        min_age=spec.get("min_age"),
        max_age=spec.get("max_age"),
        sexes=spec.get("sexes") or None,
        active=True,
        region_id=area_id,
    )
    session.add(row)
    session.flush()
    view = rule_view(row, category.code, spec.get("area"))
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="rule.create",
        subject=f"rule:{row.id}",
        detail=view,
    )
    ctx.rules_cache.clear()
    return view


def may_change_rule(session: Session, user: StaffUser, rule_region_id: int | None) -> bool:
    """A city-wide administrator changes any rule; a scoped one only the rules of their area and
    the areas inside it (never the city's, nor those of the areas above theirs)."""
    if user.region_id is None:
        return True
    return rule_region_id is not None and in_scope(session, user, rule_region_id)


def retirable_rule_ids(session: Session, user: StaffUser) -> set[int]:
    """The active rules `user` may retire (`may_change_rule`): the buttons a page shows."""
    query = select(EntitlementRule.id).where(EntitlementRule.active.is_(True))
    if user.region_id is not None:
        query = query.where(EntitlementRule.region_id.in_(subtree_ids(session, user.region_id)))
    return set(session.scalars(query))


def deactivate_rule(
    session: Session, ctx: Context, user: StaffUser, rule_id: int
) -> dict[str, Any]:
    row = session.get(EntitlementRule, rule_id)
    if row is None:
        raise NotFound(f"no rule {rule_id}", code="rule_unknown")
    if not may_change_rule(session, user, row.region_id):
        raise Forbidden("this rule is not your area's", code="out_of_scope")
    if row.active:
        row.active = False
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="rule.deactivate",
            subject=f"rule:{row.id}",
        )
        ctx.rules_cache.clear()
    code = session.scalar(select(Category.code).where(Category.id == row.category_id))
    area = session.scalar(select(Region.code).where(Region.id == row.region_id))
    return rule_view(row, code or "", area)


# --- offline transactions ----------------------------------------------------------------------

OFFLINE_MAX_AGE = dt.timedelta(hours=72)
DISPENSE_OUTCOMES = frozenset({"ok", "empty", "jammed", "motor_fault", "no_drop"})


@dataclass(frozen=True)
class OfflineDispense:
    """One tap a kiosk served while it could not reach the server, and what the board did."""

    proof: dict[str, Any]
    slot: int
    quantity: int
    outcome: str
    board_txn: int | None = None
    txn_id: str | None = None  # the kiosk's own reference, echoed in the result


def sync_offline(
    session: Session, ctx: Context, kiosk_id: str, items: list[OfflineDispense]
) -> dict[str, Any]:
    """Apply a kiosk's offline transactions, each exactly once.

    A tap (kiosk, counter) is applied at most once: a second sync of the same tap reports
    `duplicate`. A dispense that physically happened is never refused: it is charged to the
    person even beyond the allowance, and flagged (`overdraft`, `stale`, `card_revoked`) for
    review. Taps that cannot be attributed to a person (unknown card, bad proof, unknown slot) are
    recorded in the audit log and reported as `unattributed`. Dispenses that did not happen
    (outcome other than ok) are recorded voided, so their taps cannot be replayed either.
    """
    if ctx.card_ca_der is None:
        raise ServiceUnavailable("the card CA is not configured", code="card_ca_not_configured")
    now = ctx.now()
    parsed = []
    for index, item in enumerate(items):
        try:
            challenge, signature = TapChallenge.from_json(item.proof)
        except CardVerificationError as exc:
            raise InvalidRequest(
                f"transactions[{index}].proof: {exc.detail or exc}", code="proof_malformed"
            ) from exc
        if challenge.kiosk_id != kiosk_id:
            raise Forbidden(
                f"transactions[{index}] was made at another kiosk", code="kiosk_mismatch"
            )
        parsed.append((item, challenge, signature))

    store = ledger.ledger_for(session)
    cards = store.cards(challenge.card_guid.hex() for _item, challenge, _sig in parsed)
    # Lock the people concerned in one order (no deadlock with another batch).
    resident_ids = sorted({card.resident_id for card in cards.values()})
    residents = {
        r.id: r
        for r in session.scalars(
            select(Resident)
            .where(Resident.id.in_(resident_ids))
            .order_by(Resident.id)
            .with_for_update()
        )
    }
    slots = {
        row.slot: row
        for row in session.scalars(
            select(KioskSlot)
            .where(KioskSlot.kiosk_id == kiosk_id)
            .options(joinedload(KioskSlot.product).joinedload(Product.category))
        )
    }
    rule_set = cached_rules(session, ctx, kiosk_id)
    results = []
    max_counter = 0
    for item, challenge, signature in parsed:
        result: dict[str, Any] = {"txn_id": item.txn_id, "counter": challenge.counter}
        results.append(result)
        max_counter = max(max_counter, challenge.counter)
        existing = store.offline_authorization(kiosk_id, challenge.counter)
        if existing is not None:
            result.update(status="duplicate", authorization_id=existing)
            continue
        card = cards.get(challenge.card_guid.hex())
        slot_row = slots.get(item.slot)
        # Checked as of the tap: a card valid then was valid for that dispense.
        problem = (
            (rules.Reason.SLOT_UNKNOWN, "")
            if slot_row is None
            else check_card(ctx, card, challenge, signature, now, as_of_tap=True)
        )
        if problem is not None:
            audit.append(
                session,
                at=now,
                actor=f"kiosk:{kiosk_id}",
                action="offline.unattributed",
                subject=f"kiosk:{kiosk_id}:{challenge.counter}",
                detail={
                    "reason": str(problem[0]),
                    "card_guid": challenge.card_guid.hex(),
                    "slot": item.slot,
                    "quantity": item.quantity,
                    "outcome": item.outcome,
                },
            )
            result.update(status="unattributed", reason=str(problem[0]))
            continue
        assert card is not None and slot_row is not None
        tapped_at = tap_time(challenge)
        assert tapped_at is not None  # check_card refuses a time off the calendar
        product = slot_row.product
        flags = []
        if card.status is not CardStatus.ACTIVE:
            flags.append("card_revoked")
        if (
            not -ctx.clock_skew
            <= (now - tapped_at).total_seconds()
            <= OFFLINE_MAX_AGE.total_seconds()
        ):
            flags.append("stale")
        day = ctx.today(tapped_at)
        units = item.quantity * product.units
        dispensed = item.outcome == "ok"
        if dispensed:
            resident = residents[card.resident_id]
            usage = load_usage(session, resident.id, rules.lookback_start(rule_set, day))
            decision = rules.evaluate(
                rule_set, usage, holder_of(ctx, resident), product.category.code, units, day
            )
            if not decision.allowed:
                flags.append("overdraft")
        authorization_id = uuid.uuid4().hex
        store.record_offline(
            ledger.OfflineRecord(
                reservation=ledger.Reservation(
                    id=authorization_id,
                    kiosk_id=kiosk_id,
                    card_id=card.id,
                    resident_id=card.resident_id,
                    product_id=product.id,
                    category_id=product.category_id,
                    slot=item.slot,
                    quantity=item.quantity,
                    units=units,
                    usage_day=day,
                    proof_counter=challenge.counter,
                    created_at=tapped_at,
                ),
                dispensed=dispensed,
                settled_at=now,
                board_txn=item.board_txn,
                void_reason=None if dispensed else item.outcome,
                flags=",".join(flags) or None,
            )
        )
        result.update(
            status="applied",
            authorization_id=authorization_id,
            charged=units if dispensed else 0,
            flags=flags,
        )
    if max_counter:
        store.advance_counter(kiosk_id, max_counter)
    return {"results": results}
