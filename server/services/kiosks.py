"""Kiosks and stations as devices: registration, the signed configuration a kiosk runs on
(slots, offline rules, the revocation list's version), and the telemetry it reports.

The revocation list itself is the `card_revocations` journal, which `GET /api/v1/revocations`
(server.services.provisioning) hands out as signed deltas; its version, the highest `seq`, is kept here
so that the delta list, the configuration and the heartbeat's answer name the same number.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from cardsvc import requestsig
from cardsvc.requestsig import canonical_json
from server.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)
from server.services.appointments import add_default_hours
from server.services.context import Context
from server.services.fleet import note_heartbeat
from server.services.people import in_scope
from server.store import audit
from server.store.models import (
    Card,
    CardRevocation,
    CardStatus,
    Kiosk,
    KioskEvent,
    KioskSlot,
    Product,
    Region,
    StaffUser,
    StockEvent,
)

# --- kiosk configuration and telemetry -------------------------------------------------------------

OFFLINE_UNITS_PER_CARD_PER_DAY = 1
OFFLINE_MAX_HOURS = 24


def revocation_version(session: Session, ctx: Context) -> int:
    """The revocation list's current version: the highest `seq` in `card_revocations` (0 when
    empty), after journalling every card that left `active` since the list was last read, so a
    revocation made a moment ago counts. `GET /api/v1/revocations` answers this version, and
    the kiosk configuration and the heartbeat's answer carry it."""
    try:
        _journal_new_revocations(session, ctx)
    except IntegrityError:  # a concurrent reader journalled the same card first: ask again
        raise ServiceUnavailable(
            "the revocation list changed under this request; ask again", code="retry"
        ) from None
    return session.scalar(select(CardRevocation.seq).order_by(CardRevocation.seq.desc())) or 0


def _unjournalled(session: Session) -> list[Any]:
    return list(
        session.execute(
            select(Card.guid, Card.status)
            .outerjoin(CardRevocation, CardRevocation.card_guid == Card.guid)
            .where(Card.status != CardStatus.ACTIVE, CardRevocation.seq.is_(None))
            .order_by(Card.status_changed_at, Card.id)
        ).all()
    )


def _journal_new_revocations(session: Session, ctx: Context) -> None:
    missing = _unjournalled(session)
    if not missing:
        return
    if session.get_bind().dialect.name == "postgresql":
        # One journal writer at a time, holding the lock until commit: numbers become visible
        # in order, so a kiosk that read version N never misses a row numbered below N.
        # (SQLite has one writer anyway: BEGIN IMMEDIATE.)
        session.execute(text("LOCK TABLE card_revocations IN SHARE ROW EXCLUSIVE MODE"))
        missing = _unjournalled(session)
    for guid, status in missing:
        session.add(CardRevocation(card_guid=guid, reason=status.value, revoked_at=ctx.now()))
    session.flush()


def kiosk_config(session: Session, ctx: Context, kiosk_id: str) -> dict[str, Any]:
    """What a kiosk needs to run: its slots' products, the offline rules, and the version of
    the revocation list (the list itself comes as deltas from `GET /api/v1/revocations`; a
    kiosk whose copy is at a lower version is behind).

    Signed by the server's Ed25519 key (`signature` over the canonical JSON of the rest, sorted
    keys, no spaces), so a kiosk can keep it on disk and trust it offline.
    """
    rows = session.scalars(
        select(KioskSlot)
        .where(KioskSlot.kiosk_id == kiosk_id)
        .options(joinedload(KioskSlot.product).joinedload(Product.category))
        .order_by(KioskSlot.slot)
    ).all()
    body = {
        "kiosk_id": kiosk_id,
        "issued_at": ctx.now().isoformat(),
        "slots": [
            {
                "slot": row.slot,
                "sku": row.product.sku,
                "name": row.product.name,
                "category": row.product.category.code,
                "units": row.product.units,
                "stock": row.stock,
            }
            for row in rows
        ],
        "offline": {
            "units_per_card_per_day": OFFLINE_UNITS_PER_CARD_PER_DAY,
            "max_offline_hours": OFFLINE_MAX_HOURS,
        },
        "revocation": {"version": revocation_version(session, ctx)},
    }
    signature = ctx.server_key.sign(canonical_json(body))
    return {**body, "signature": base64.b64encode(signature).decode()}


TELEMETRY_KINDS = frozenset(
    {"heartbeat", "fault", "door", "temperature", "power_up", "stock", "board"}
)


def record_telemetry(
    session: Session,
    ctx: Context,
    kiosk_id: str,
    *,
    stock: Mapping[int, int],
    events: list[tuple[str, dict[str, Any]]],
) -> dict[str, Any]:
    """A kiosk's heartbeat: stock per slot, faults, board counters. Unknown slots are refused."""
    now = ctx.now()
    known = set(session.scalars(select(KioskSlot.slot).where(KioskSlot.kiosk_id == kiosk_id)))
    unknown = sorted(set(stock) - known)
    if unknown:
        raise Unprocessable(f"no slot {unknown[0]} at this kiosk", code="slot_unknown")
    for slot, count in stock.items():
        session.execute(
            update(KioskSlot)
            .where(KioskSlot.kiosk_id == kiosk_id, KioskSlot.slot == slot)
            .values(stock=count)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        update(Kiosk)
        .where(Kiosk.id == kiosk_id)
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False)
    )
    rows = [{"kind": "heartbeat", "detail": {"stock": {str(k): v for k, v in stock.items()}}}]
    rows += [{"kind": kind, "detail": detail} for kind, detail in events]
    session.execute(
        insert(KioskEvent),
        [
            {"kiosk_id": kiosk_id, "at": now, "kind": r["kind"], "detail": json.dumps(r["detail"])}
            for r in rows
        ],
    )
    note_heartbeat(session, kiosk_id, now, events)  # the latest state, for the fleet
    # A string, as kiosk.telemetry compares it with the configuration's version it keeps.
    return {"status": "ok", "revocation_version": str(revocation_version(session, ctx))}


def add_kiosk(
    session: Session,
    ctx: Context,
    kiosk_id: str,
    public_key_b64: str,
    slots: Mapping[int, str],
    *,
    region_code: str | None = None,
    actor: str = "cli",
) -> Kiosk:
    """Register a kiosk (or re-key an existing one) with its slots' SKUs. Commits."""
    try:
        requestsig.public_key_from_raw(public_key_b64)
    except ValueError as exc:
        raise InvalidRequest(
            "the public key must be base64 of 32 raw Ed25519 bytes", code="public_key_invalid"
        ) from exc
    if region_code is not None:
        region = session.scalar(select(Region).where(Region.code == region_code))
        if region is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
    else:
        region = session.scalar(
            select(Region).where(Region.parent_id.is_(None)).order_by(Region.id)
        )
        if region is None:
            raise NotFound("no region yet: run seed-demo or pass a region", code="region_unknown")
    products = {}
    for slot, sku in slots.items():
        product = session.scalar(select(Product).where(Product.sku == sku))
        if product is None:
            raise NotFound(f"no product with SKU {sku}", code="sku_unknown")
        products[slot] = product
    kiosk = session.get(Kiosk, kiosk_id)
    now = ctx.now()
    if kiosk is None:
        kiosk = Kiosk(
            id=kiosk_id,
            public_key=public_key_b64,
            region_id=region.id,
            enabled=True,
            last_counter=0,
            created_at=now,
        )
        session.add(kiosk)
    else:
        kiosk.public_key = public_key_b64
        kiosk.region_id = region.id
        kiosk.enabled = True
    session.flush()
    for slot, product in products.items():
        row = session.get(KioskSlot, (kiosk_id, slot))
        if row is None:
            session.add(KioskSlot(kiosk_id=kiosk_id, slot=slot, product_id=product.id))
        else:
            row.product_id = product.id
    audit.append(
        session,
        at=now,
        actor=actor,
        action="kiosk.register",
        subject=f"kiosk:{kiosk_id}",
        detail={"slots": {str(s): p.sku for s, p in products.items()}, "region": region.code},
    )
    session.commit()
    return kiosk


def add_station(
    session: Session,
    ctx: Context,
    station_id: str,
    public_key_b64: str,
    *,
    region_code: str | None = None,
    actor: str = "cli",
) -> Kiosk:
    """Register a service station's desk device (signs like a kiosk, serves exams). Commits."""
    station = add_kiosk(
        session, ctx, station_id, public_key_b64, {}, region_code=region_code, actor=actor
    )
    station.kind = "station"
    add_default_hours(session, station_id)
    session.commit()
    return station


def set_device_enabled(
    session: Session, ctx: Context, user: StaffUser, device_id: str, enabled: bool
) -> Kiosk:
    """Enable or disable a kiosk or station in the user's area (a disabled device's signed
    requests are refused). Audited; no commit."""
    device = session.get(Kiosk, device_id)
    if device is None:
        raise NotFound(f"no kiosk or station {device_id}", code="kiosk_unknown")
    if not in_scope(session, user, device.region_id):
        raise Forbidden("this device is outside your area", code="out_of_scope")
    if device.enabled != enabled:
        device.enabled = enabled
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="device.enable" if enabled else "device.disable",
            subject=f"{device.kind}:{device.id}",
        )
    return device


def register_device(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    kind: str,
    device_id: str,
    public_key_b64: str,
    region_code: str,
    slots: Mapping[int, str],
) -> Kiosk:
    """A technician registers (or re-keys) a kiosk or station in their area. Commits."""
    region_id = session.scalar(select(Region.id).where(Region.code == region_code))
    if region_id is None:
        raise NotFound(f"no region {region_code}", code="region_unknown", field="region")
    if not in_scope(session, user, region_id):
        raise Forbidden("this place is outside your area", code="out_of_scope", field="region")
    existing = session.get(Kiosk, device_id)
    if existing is not None and (
        existing.kind != kind or not in_scope(session, user, existing.region_id)
    ):
        raise Conflict(
            f"{device_id} is registered elsewhere", code="kiosk_exists", field="device_id"
        )
    actor = f"user:{user.id}"
    if kind == "station":
        return add_station(
            session, ctx, device_id, public_key_b64, region_code=region_code, actor=actor
        )
    return add_kiosk(
        session, ctx, device_id, public_key_b64, slots, region_code=region_code, actor=actor
    )


def stock_events(session: Session, user: StaffUser, kiosk_id: str, *, limit: int = 50) -> list[Any]:
    """A kiosk's refills and test dispenses, newest first (the kiosk in the user's area)."""
    kiosk = session.get(Kiosk, kiosk_id)
    if kiosk is None:
        raise NotFound(f"no kiosk {kiosk_id}", code="kiosk_unknown")
    if not in_scope(session, user, kiosk.region_id):
        raise Forbidden("this kiosk is outside your area", code="out_of_scope")
    return list(
        session.execute(
            select(StockEvent, Product.sku)
            .outerjoin(Product, Product.id == StockEvent.product_id)
            .where(StockEvent.kiosk_id == kiosk_id)
            .order_by(StockEvent.at.desc(), StockEvent.id.desc())
            .limit(limit)
        ).all()
    )
