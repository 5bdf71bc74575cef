"""Stock events: a technician's refill or test dispense at a kiosk, recorded as the staff card
proved it (kiosk maintenance mode, POST /api/v1/stock-events).

The kiosk sends, with its own signature, the staff card's tap proof (made when the technician
tapped the card, for this kiosk) and the card's certificate. The server checks that the
certificate chains to the city card CA, carries the staff policy (cardsvc.verify
STAFF_CARD_POLICY) and that the proof verifies with it, as of the tap. One tap covers every
event of that visit, so the kiosk's counter is not advanced here.

The tap's age is judged against the event's own time (`at_ms`, the kiosk's clock; the
server's time when absent), not against the moment the event arrives: a kiosk keeps its events
in an outbox (kiosk.stock_outbox) and sends them when the server can be reached, hours or days
later. So:
- the event happened during the visit: from the tap (less the allowed clock skew) to
  MAINTENANCE_MAX_AGE after it;
- the event is not in the future (more than the clock skew ahead of the server);
- it arrives within QUEUED_MAX_AGE of the tap. That bound is the idempotency records'
  retention (server.services.devices.IDEMPOTENCY_RETENTION, 30 days) less one day: every
  delivery of an event comes after the tap, so its first delivery's idempotency record is still
  kept when any later resend within the bound arrives, and a resend is answered from it, never
  recorded twice. An event older than that is refused (proof_stale) and stays in the kiosk's
  outbox as refused; the board's stock reached the server by the heartbeats meanwhile.
`at` keeps the tap's time, `recorded_at` the arrival.

A late event (arriving more than STOCK_FRESH after its own time) is recorded but does not set
the slot's stock at the server: the kiosk's heartbeats since (which carry the board's count)
are newer than its count.

Each event is kept (append-only) with who (the staff card's GUID), when (the tap's time),
which slot and product, and the counts before and after; a count after becomes the slot's stock
at the server, so the server's stock and the board's agree; the audit log records it too.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from cardsvc.errors import CardVerificationError
from cardsvc.verify import CardRole, verify_tap
from server.errors import Forbidden, InvalidRequest, Unprocessable
from server.services.context import Context
from server.services.devices import IDEMPOTENCY_RETENTION
from server.services.dispensing import parse_tap
from server.store import audit
from server.store.models import KioskSlot, StockEvent

MAINTENANCE_MAX_AGE = dt.timedelta(hours=2)
QUEUED_MAX_AGE = IDEMPOTENCY_RETENTION - dt.timedelta(days=1)
STOCK_FRESH = dt.timedelta(minutes=2)
KINDS = frozenset({"refill", "test_dispense"})


def record_stock_event(
    session: Session, ctx: Context, kiosk_id: str, event: dict[str, Any]
) -> dict[str, Any]:
    """Record one event; returns `{"status": "recorded", "event_id", "stock"}` (the slot's
    stock at the server after it)."""
    kind = event["kind"]
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {sorted(KINDS)}", code="field_invalid")
    challenge, signature = parse_tap(event["staff_proof"], kiosk_id, ctx)
    try:
        certificate = base64.b64decode(event["staff_certificate"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("staff_certificate is not base64", code="field_invalid") from exc
    tapped_at = dt.datetime.fromtimestamp(challenge.time_ms / 1000, dt.UTC)
    now = ctx.now()
    at_ms = event.get("at_ms")
    happened = now if at_ms is None else dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC)
    skew = dt.timedelta(seconds=ctx.clock_skew)
    if happened > now + skew:
        raise Unprocessable("the event's time is in the future", code="at_in_future")
    if not (
        -skew <= happened - tapped_at <= MAINTENANCE_MAX_AGE and now - tapped_at <= QUEUED_MAX_AGE
    ):
        raise Unprocessable("the staff card's tap is too old", code="proof_stale")
    try:
        card = verify_tap(certificate, ctx.card_ca_der or b"", challenge, signature, now=tapped_at)
    except CardVerificationError as exc:
        raise Unprocessable(f"the staff card's proof: {exc}", code="proof_invalid") from exc
    if card.role is not CardRole.STAFF:
        raise Forbidden("not a staff card", code="not_staff_card")
    slot = session.get(KioskSlot, (kiosk_id, int(event["slot"])))
    if slot is None:
        raise Unprocessable(f"no slot {event['slot']} at this kiosk", code="slot_unknown")
    after = event.get("count_after")
    row = StockEvent(
        kiosk_id=kiosk_id,
        slot=slot.slot,
        product_id=slot.product_id,
        kind=kind,
        count_before=event.get("count_before"),
        count_after=after,
        staff_card_guid=card.guid.hex(),
        at=tapped_at,
        recorded_at=now,
    )
    session.add(row)
    applied = after is not None and now - happened <= STOCK_FRESH
    if applied:
        session.execute(
            update(KioskSlot)
            .where(KioskSlot.kiosk_id == kiosk_id, KioskSlot.slot == slot.slot)
            .values(stock=after)
            .execution_options(synchronize_session=False)
        )
    session.flush()
    audit.append(
        session,
        at=now,
        actor=f"staff-card:{card.guid.hex()}",
        action=f"stock.{kind}",
        subject=f"kiosk:{kiosk_id}:slot:{slot.slot}",
        detail={"count_before": row.count_before, "count_after": after},
    )
    # The slot's stock at the server now: this event's count, or the heartbeats' if it is late.
    return {"status": "recorded", "event_id": row.id, "stock": after if applied else slot.stock}
