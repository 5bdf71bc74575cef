"""The fleet: every kiosk's and station's state now, read for the fleet page, the alert rules,
the restock list and /metrics; and what a heartbeat leaves behind for them.

A heartbeat (server.services.kiosks.record_telemetry) updates `kiosk_status` (door and since
when, temperature, faults) beside the journal `kiosk_events`, so reading the fleet is a handful
of queries over one row per kiosk: kiosks in scope, their slots, their status, the last
dispense of each within `DISPENSE_LOOKBACK` (through the (status, created_at) index), and the
open reservations. The journal is kept for a while and then pruned (`prune_kiosk_events`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, select, true
from sqlalchemy.orm import Session

from server.domain.alerts import (
    AlertRule,
    Connection,
    KioskState,
    SlotState,
    connection,
    offline_after,
)
from server.errors import InvalidRequest, NotFound
from server.services.context import Context
from server.services.people import subtree_ids
from server.services.reports import RegionTree
from server.store.models import (
    Authorization,
    AuthorizationStatus,
    Kiosk,
    KioskEvent,
    KioskSlot,
    KioskStatus,
    Product,
    StaffUser,
)

DISPENSE_LOOKBACK = dt.timedelta(days=8)
HEARTBEAT_KEEP = dt.timedelta(days=2)  # the fleet reads kiosk_status, not old heartbeats
EVENT_KEEP = dt.timedelta(days=90)  # faults, doors, power-ups: a season of history


@dataclass(frozen=True)
class SlotView:
    slot: int
    sku: str
    product: str
    stock: int | None
    minimum: int | None
    capacity: int | None

    @property
    def to_bring(self) -> int:
        if self.capacity is None or self.stock is None:
            return 0
        return max(0, self.capacity - self.stock)

    @property
    def needs_restock(self) -> bool:
        return self.stock is not None and (
            self.stock <= 0 or (self.minimum is not None and self.stock <= self.minimum)
        )


@dataclass(frozen=True)
class FleetRow:
    """One kiosk or station as the fleet page shows it."""

    state: KioskState
    connection: Connection
    region_code: str
    region_name: str
    town_code: str
    town_name: str
    latitude: float | None
    longitude: float | None
    slots: tuple[SlotView, ...]

    @property
    def kiosk_id(self) -> str:
        return self.state.kiosk_id


def note_heartbeat(
    session: Session, kiosk_id: str, now: dt.datetime, events: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """Keep the latest door, temperature and faults of a heartbeat in `kiosk_status`."""
    door: bool | None = None
    temperature: float | None = None
    faults: list[str] = []
    for kind, detail in events:
        if kind == "board":
            if isinstance(detail.get("door_open"), bool):
                door = detail["door_open"]
            if isinstance(detail.get("temperature_c"), int | float):
                temperature = float(detail["temperature_c"])
        elif kind == "door" and isinstance(detail.get("open"), bool):
            door = detail["open"]
        elif kind == "fault":
            board = detail.get("board")
            if isinstance(board, list):
                faults += [str(code) for code in board]
            if "board_unreachable" in detail:
                faults.append("board_unreachable")
    status = session.get(KioskStatus, kiosk_id)
    if status is None:
        status = KioskStatus(kiosk_id=kiosk_id, faults="[]", updated_at=now)
        session.add(status)
    if door is not None:
        if door and not status.door_open:
            status.door_open_since = now
        elif not door:
            status.door_open_since = None
        status.door_open = door
    if temperature is not None:
        status.temperature_c = temperature
    status.faults = json.dumps(sorted(set(faults)))
    status.updated_at = now


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def scope_of(session: Session, user: StaffUser | None) -> list[int] | None:
    if user is None or user.region_id is None:
        return None
    return subtree_ids(session, user.region_id)


def fleet(
    session: Session,
    ctx: Context,
    rules: Sequence[AlertRule],
    *,
    user: StaffUser | None = None,
    kiosk_ids: Iterable[str] | None = None,
) -> list[FleetRow]:
    """Every kiosk and station in the user's area (or all), ordered by town and id."""
    now = ctx.now()
    scope = scope_of(session, user)
    kiosk_filter: ColumnElement[bool] = true() if scope is None else Kiosk.region_id.in_(scope)
    if kiosk_ids is not None:
        kiosk_filter = and_(kiosk_filter, Kiosk.id.in_(list(kiosk_ids)))
    # Core rows straight from the connection: for 2,400 kiosks the ORM's row handling costs
    # more than the queries.
    conn = session.connection()
    kiosks = conn.execute(
        select(
            Kiosk.id,
            Kiosk.kind,
            Kiosk.region_id,
            Kiosk.created_at,
            Kiosk.last_seen_at,
            Kiosk.latitude,
            Kiosk.longitude,
        ).where(kiosk_filter, Kiosk.enabled.is_(True))
    ).all()
    wanted = {k.id for k in kiosks}
    everything = scope is None and kiosk_ids is None
    slots: dict[str, list[SlotView]] = defaultdict(list)
    for kiosk_id, slot, stock, minimum, capacity, sku, name in conn.execute(
        select(
            KioskSlot.kiosk_id,
            KioskSlot.slot,
            KioskSlot.stock,
            KioskSlot.minimum,
            KioskSlot.capacity,
            Product.sku,
            Product.name,
        )
        .join(Product, Product.id == KioskSlot.product_id)
        .order_by(KioskSlot.kiosk_id, KioskSlot.slot)
    ):
        if everything or kiosk_id in wanted:
            slots[kiosk_id].append(SlotView(slot, sku, name, stock, minimum, capacity))
    status = {
        row.kiosk_id: row
        for row in conn.execute(
            select(
                KioskStatus.kiosk_id,
                KioskStatus.door_open,
                KioskStatus.door_open_since,
                KioskStatus.temperature_c,
                KioskStatus.faults,
            )
        )
        if everything or row.kiosk_id in wanted
    }
    last_dispense = dict(
        conn.execute(
            select(Authorization.kiosk_id, func.max(Authorization.created_at))
            .where(
                Authorization.status == AuthorizationStatus.CAPTURED,
                Authorization.created_at >= now - DISPENSE_LOOKBACK,
                Authorization.created_at <= now,
            )
            .group_by(Authorization.kiosk_id)
        ).all()
    )
    reservations = {
        kiosk_id: (int(count), oldest)
        for kiosk_id, count, oldest in conn.execute(
            select(Authorization.kiosk_id, func.count(), func.min(Authorization.created_at))
            .where(Authorization.status == AuthorizationStatus.RESERVED)
            .group_by(Authorization.kiosk_id)
        )
    }
    tree = RegionTree(session)
    limit = offline_after(rules)
    rows = []
    for k in kiosks:
        st = status.get(k.id)
        count, oldest = reservations.get(k.id, (0, None))
        state = KioskState(
            kiosk_id=k.id,
            created_at=_utc(k.created_at) or now,
            last_seen_at=_utc(k.last_seen_at),
            kind=k.kind,
            slots=tuple(SlotState(s.slot, s.stock, s.minimum, s.capacity) for s in slots[k.id]),
            faults=tuple(json.loads(st.faults)) if st is not None else (),
            door_open=st.door_open if st is not None else None,
            door_open_since=_utc(st.door_open_since) if st is not None else None,
            temperature_c=st.temperature_c if st is not None else None,
            last_dispense_at=_utc(last_dispense.get(k.id)),
            oldest_reservation_at=_utc(oldest),
            open_reservations=count,
        )
        region_code, region_name = tree.label(k.region_id)
        town_code, town_name = tree.label(tree.at_level(k.region_id, "town"))
        rows.append(
            FleetRow(
                state=state,
                connection=connection(state.last_seen_at, now, limit),
                region_code=region_code,
                region_name=region_name,
                town_code=town_code,
                town_name=town_name,
                latitude=k.latitude,
                longitude=k.longitude,
                slots=tuple(slots[k.id]),
            )
        )
    rows.sort(key=lambda r: (r.town_code, r.kiosk_id))
    return rows


@dataclass(frozen=True)
class RestockLine:
    town_code: str
    town_name: str
    kiosk_id: str
    region_name: str
    slot: int
    sku: str
    product: str
    stock: int | None
    to_bring: int


def restock_list(rows: Iterable[FleetRow]) -> list[RestockLine]:
    """What to bring where: every slot at or under its minimum (or empty), by town (a route)
    and kiosk, with the count that fills it to capacity."""
    return [
        RestockLine(
            row.town_code,
            row.town_name,
            row.kiosk_id,
            row.region_name,
            slot.slot,
            slot.sku,
            slot.product,
            slot.stock,
            slot.to_bring,
        )
        for row in rows
        if row.state.kind == "kiosk"
        for slot in row.slots
        if slot.needs_restock
    ]


def set_location(session: Session, kiosk_id: str, latitude: float, longitude: float) -> None:
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise InvalidRequest("latitude and longitude out of range", code="field_invalid")
    kiosk = session.get(Kiosk, kiosk_id)
    if kiosk is None:
        raise NotFound(f"no kiosk {kiosk_id}", code="kiosk_unknown")
    kiosk.latitude, kiosk.longitude = latitude, longitude


def set_slot_levels(
    session: Session, kiosk_id: str, slot: int, *, minimum: int | None, capacity: int | None
) -> None:
    row = session.get(KioskSlot, (kiosk_id, slot))
    if row is None:
        raise NotFound(f"no slot {slot} at {kiosk_id}", code="slot_unknown")
    if (minimum is not None and minimum < 0) or (
        capacity is not None and (capacity <= 0 or (minimum is not None and minimum >= capacity))
    ):
        raise InvalidRequest("0 <= minimum < capacity", code="field_invalid")
    row.minimum, row.capacity = minimum, capacity


def prune_kiosk_events(session: Session, now: dt.datetime) -> int:
    """Delete heartbeats older than HEARTBEAT_KEEP and other telemetry older than EVENT_KEEP;
    the latest state lives in kiosk_status. Returns the rows deleted. No commit."""
    heartbeats = session.execute(
        delete(KioskEvent).where(
            KioskEvent.kind.in_(("heartbeat", "board")), KioskEvent.at < now - HEARTBEAT_KEEP
        )
    )
    others = session.execute(delete(KioskEvent).where(KioskEvent.at < now - EVENT_KEEP))
    return int(heartbeats.rowcount or 0) + int(others.rowcount or 0)  # type: ignore[attr-defined]
