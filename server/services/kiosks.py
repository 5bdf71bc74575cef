"""Kiosks and stations as devices: registration, the signed configuration a kiosk runs on
(slots, offline rules, revocation list), and the telemetry it reports.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, joinedload

from cardsvc import requestsig
from cardsvc.requestsig import canonical_json
from server import audit
from server.errors import InvalidRequest, NotFound, Unprocessable
from server.models import Card, CardStatus, Kiosk, KioskEvent, KioskSlot, Product, Region
from server.services.context import Context

# --- kiosk configuration and telemetry -------------------------------------------------------------

OFFLINE_UNITS_PER_CARD_PER_DAY = 1
OFFLINE_MAX_HOURS = 24


def revocation_list(session: Session) -> tuple[str, list[str]]:
    """(version, GUIDs of cards that must not be served): the version changes with the list."""
    guids = sorted(session.scalars(select(Card.guid).where(Card.status != CardStatus.ACTIVE)).all())
    version = hashlib.sha256("\n".join(guids).encode()).hexdigest()[:16]
    return version, guids


def kiosk_config(session: Session, ctx: Context, kiosk_id: str) -> dict[str, Any]:
    """What a kiosk needs to run: its slots' products, the offline rules, the revocation list.

    Signed by the server's Ed25519 key (`signature` over the canonical JSON of the rest, sorted
    keys, no spaces), so a kiosk can keep it on disk and trust it offline.
    """
    rows = session.scalars(
        select(KioskSlot)
        .where(KioskSlot.kiosk_id == kiosk_id)
        .options(joinedload(KioskSlot.product).joinedload(Product.category))
        .order_by(KioskSlot.slot)
    ).all()
    version, revoked = revocation_list(session)
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
        "revocation": {"version": version, "revoked_card_guids": revoked},
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
    version, _ = revocation_list(session)
    return {"status": "ok", "revocation_version": version}


def add_kiosk(
    session: Session,
    ctx: Context,
    kiosk_id: str,
    public_key_b64: str,
    slots: Mapping[int, str],
    *,
    region_code: str | None = None,
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
        actor="cli",
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
) -> Kiosk:
    """Register a service station's desk device (signs like a kiosk, serves exams). Commits."""
    station = add_kiosk(session, ctx, station_id, public_key_b64, {}, region_code=region_code)
    station.kind = "station"
    session.commit()
    return station
