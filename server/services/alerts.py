"""Fleet alerts: evaluate the rules over the fleet, open and clear alerts, tell the responsible
staff once per alert, and let staff acknowledge and resolve them.

`run_once` is the whole cycle, made for a timer (`onecard server alerts run-once` every minute
from a systemd timer or cron): read the fleet, evaluate every rule (server.domain.alerts),
open what is new (one row per kiosk, kind and subject until it clears; a partial unique index
makes a second impossible), clear what is gone, then send every pending message. A message
that fails stays pending and is tried again at the next run, up to MAX_ATTEMPTS.

Messages carry the kiosk, its place, the kind and the figures (stock, minutes, degrees): never a
card, a resident or anything about one. The webhook also names the recipient (staff login and
work phone) so the SMS gateway knows whom to text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from server.domain.alerts import (
    DEFAULT_RULES,
    AlertKind,
    AlertRule,
    evaluate,
    reconcile,
)
from server.errors import Conflict, InvalidRequest, NotFound
from server.services.context import Context
from server.services.fleet import FleetRow, fleet, scope_of
from server.services.notify import DeliveryError, Notifier
from server.store import audit
from server.store.models import (
    Alert,
    AlertContact,
    AlertDelivery,
    AlertRuleRow,
    Kiosk,
    KioskResponsible,
    StaffUser,
)

MAX_ATTEMPTS = 5
BATCH = 1_000
QUIET_LOOKBACK = dt.timedelta(days=2)  # cleared alerts older than any quiet period are ignored


def rules(session: Session) -> list[AlertRule]:
    """The rules in force: each kind's row, or its default."""
    rows = {row.kind: row for row in session.scalars(select(AlertRuleRow))}
    found = []
    for default in DEFAULT_RULES:
        row = rows.get(default.kind.value)
        if row is None:
            found.append(default)
        else:
            found.append(
                AlertRule(
                    AlertKind(row.kind),
                    threshold=row.threshold,
                    low=row.low,
                    high=row.high,
                    quiet_minutes=row.quiet_minutes,
                    enabled=row.enabled,
                )
            )
    return found


def save_rule(session: Session, ctx: Context, actor: str, rule: AlertRule) -> None:
    if rule.threshold < 0 or rule.quiet_minutes < 0:
        raise InvalidRequest("threshold and quiet period cannot be negative", code="field_invalid")
    if rule.low is not None and rule.high is not None and rule.low >= rule.high:
        raise InvalidRequest("low must be under high", code="field_invalid")
    row = session.get(AlertRuleRow, rule.kind.value)
    if row is None:
        row = AlertRuleRow(kind=rule.kind.value)
        session.add(row)
    row.threshold, row.low, row.high = rule.threshold, rule.low, rule.high
    row.quiet_minutes, row.enabled = rule.quiet_minutes, rule.enabled
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="alert.rule",
        subject=f"alert_rule:{rule.kind.value}",
        detail={
            "threshold": rule.threshold,
            "low": rule.low,
            "high": rule.high,
            "quiet_minutes": rule.quiet_minutes,
            "enabled": rule.enabled,
        },
    )


def set_contact(session: Session, staff_name: str, *, email: str | None, phone: str | None) -> None:
    user = _user(session, staff_name)
    contact = session.get(AlertContact, user.id)
    if contact is None:
        contact = AlertContact(staff_user_id=user.id)
        session.add(contact)
    contact.email, contact.phone = email, phone


def assign(session: Session, kiosk_id: str, staff_name: str) -> None:
    """Make a staff member responsible for a kiosk (idempotent)."""
    user = _user(session, staff_name)
    if session.get(Kiosk, kiosk_id) is None:
        raise NotFound(f"no kiosk {kiosk_id}", code="kiosk_unknown")
    if session.get(KioskResponsible, (kiosk_id, user.id)) is None:
        session.add(KioskResponsible(kiosk_id=kiosk_id, staff_user_id=user.id))


def _user(session: Session, name: str) -> StaffUser:
    user = session.scalar(select(StaffUser).where(StaffUser.name == name))
    if user is None:
        raise NotFound(f"no staff user {name}", code="user_unknown")
    return user


@dataclass(frozen=True)
class RunSummary:
    kiosks: int
    findings: int
    opened: int
    cleared: int
    sent: int
    failed: int

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def evaluate_fleet(
    session: Session, ctx: Context, notifier: Notifier | None = None
) -> tuple[RunSummary, list[FleetRow]]:
    """Open and clear alerts for the whole fleet, and queue their messages. No commit."""
    now = ctx.now()
    in_force = rules(session)
    rows = fleet(session, ctx, in_force)
    findings = [f for row in rows for f in evaluate(row.state, in_force, now)]
    conn = session.connection()  # Core rows: thousands of alerts at a time
    open_alerts = {
        (kiosk_id, kind, subject): alert_id
        for alert_id, kiosk_id, kind, subject in conn.execute(
            select(Alert.id, Alert.kiosk_id, Alert.kind, Alert.subject).where(
                Alert.cleared_at.is_(None)
            )
        )
    }
    cleared_at: dict[tuple[str, str, str], dt.datetime] = {}
    for kiosk_id, kind, subject, when in conn.execute(
        select(Alert.kiosk_id, Alert.kind, Alert.subject, Alert.cleared_at).where(
            Alert.cleared_at >= now - QUIET_LOOKBACK
        )
    ):
        key = (kiosk_id, kind, subject)
        assert when is not None  # the query asks for cleared alerts only
        moment = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
        if key not in cleared_at or moment > cleared_at[key]:
            cleared_at[key] = moment
    changes = reconcile(findings, open_alerts, cleared_at, in_force, now)
    gone = [open_alerts[key] for key in changes.cleared]
    for begin in range(0, len(gone), BATCH):
        conn.execute(
            update(Alert).where(Alert.id.in_(gone[begin : begin + BATCH])).values(cleared_at=now)
        )
    opened: list[tuple[int, str]] = []
    if changes.opened:
        opened = [
            (alert_id, kiosk_id)
            for alert_id, kiosk_id in conn.execute(
                insert(Alert).returning(Alert.id, Alert.kiosk_id, sort_by_parameter_order=True),
                [
                    {
                        "kiosk_id": f.kiosk_id,
                        "kind": f.kind.value,
                        "subject": f.subject,
                        "detail": json.dumps(dict(f.detail), sort_keys=True),
                        "opened_at": now,
                    }
                    for f in changes.opened
                ],
            )
        ]
    channels = notifier.channels if notifier is not None else ("email", "webhook")
    responsible = _responsible(session)
    deliveries = []
    for alert_id, kiosk_id in opened:
        for contact_name, email, phone in responsible.get(kiosk_id, []):
            if "email" in channels and email:
                deliveries.append((alert_id, "email", email))
            if "webhook" in channels and phone:
                deliveries.append((alert_id, "webhook", f"{contact_name}:{phone}"))
    if deliveries:
        conn.execute(
            insert(AlertDelivery),
            [
                {"alert_id": a, "channel": c, "recipient": r, "status": "pending", "attempts": 0}
                for a, c, r in deliveries
            ],
        )
    summary = RunSummary(len(rows), len(findings), len(changes.opened), len(changes.cleared), 0, 0)
    return summary, rows


def _responsible(session: Session) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Per kiosk: (staff name, e-mail, phone) of each active responsible with a contact."""
    found: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for kiosk_id, name, email, phone in session.execute(
        select(KioskResponsible.kiosk_id, StaffUser.name, AlertContact.email, AlertContact.phone)
        .join(StaffUser, StaffUser.id == KioskResponsible.staff_user_id)
        .join(AlertContact, AlertContact.staff_user_id == StaffUser.id)
        .where(StaffUser.active.is_(True))
    ):
        found.setdefault(kiosk_id, []).append((name, email, phone))
    return found


def message(alert: Alert, kiosk_place: str) -> tuple[str, str, dict[str, Any]]:
    """The e-mail subject and text and the webhook payload of an alert: figures only."""
    detail = json.loads(alert.detail)
    figures = ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))
    subject = f"[OneCard] {alert.kind} at kiosk {alert.kiosk_id} ({kiosk_place})"
    text = (
        f"Kiosk {alert.kiosk_id} in {kiosk_place}: {alert.kind} ({alert.subject}).\n"
        f"Figures: {figures or '-'}\n"
        f"Opened: {alert.opened_at.isoformat()}\n"
        f"Alert {alert.id}: acknowledge or resolve it on the fleet page.\n"
    )
    payload = {
        "alert_id": alert.id,
        "kiosk_id": alert.kiosk_id,
        "place": kiosk_place,
        "kind": alert.kind,
        "subject": alert.subject,
        "detail": detail,
        "opened_at": alert.opened_at.isoformat(),
        "text": f"OneCard: {alert.kind} at kiosk {alert.kiosk_id} ({kiosk_place}) {figures}".strip(),
    }
    return subject, text, payload


def deliver_pending(
    session: Session, ctx: Context, notifier: Notifier, places: dict[str, str]
) -> tuple[int, int]:
    """Send every pending message once; (sent, failed). Commits after each message, so a
    crash never sends one twice from the same run's memory."""
    sent = failed = 0
    pending = session.scalars(
        select(AlertDelivery)
        .where(AlertDelivery.status == "pending", AlertDelivery.attempts < MAX_ATTEMPTS)
        .order_by(AlertDelivery.id)
    ).all()
    for delivery in pending:
        alert = session.get(Alert, delivery.alert_id)
        assert alert is not None
        subject, text, payload = message(alert, places.get(alert.kiosk_id, "?"))
        delivery.attempts += 1
        try:
            if delivery.channel == "email":
                notifier.email(delivery.recipient, subject, text)
            else:
                name, _, phone = delivery.recipient.partition(":")
                notifier.webhook({**payload, "recipient": {"staff": name, "phone": phone}})
        except DeliveryError as exc:
            delivery.error = str(exc)[:300]
            if delivery.attempts >= MAX_ATTEMPTS:
                delivery.status = "failed"
            failed += 1
        else:
            delivery.status = "sent"
            delivery.sent_at = ctx.now()
            delivery.error = None
            sent += 1
        session.commit()
    return sent, failed


def run_once(session: Session, ctx: Context, notifier: Notifier) -> RunSummary:
    """Evaluate, commit, deliver. Commits."""
    summary, rows = evaluate_fleet(session, ctx, notifier)
    session.commit()
    places = {row.kiosk_id: f"{row.region_name}, {row.town_name}" for row in rows}
    sent, failed = deliver_pending(session, ctx, notifier, places)
    return RunSummary(
        summary.kiosks, summary.findings, summary.opened, summary.cleared, sent, failed
    )


def _scoped_alert(session: Session, user: StaffUser, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    scope = scope_of(session, user)
    if alert is None:
        raise NotFound(f"no alert {alert_id}", code="alert_unknown")
    if scope is not None:
        region = session.scalar(select(Kiosk.region_id).where(Kiosk.id == alert.kiosk_id))
        if region not in scope:
            raise NotFound(f"no alert {alert_id}", code="alert_unknown")
    return alert


def acknowledge(session: Session, ctx: Context, user: StaffUser, alert_id: int) -> Alert:
    """Someone is on it: messages stop being news, the alert stays open until it clears."""
    alert = _scoped_alert(session, user, alert_id)
    if alert.cleared_at is not None:
        raise Conflict("the alert has cleared already", code="alert_cleared")
    if alert.acknowledged_at is None:
        alert.acknowledged_at, alert.acknowledged_by = ctx.now(), user.id
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="alert.acknowledge",
            subject=f"alert:{alert.id}",
            detail={},
        )
    return alert


def resolve(session: Session, ctx: Context, user: StaffUser, alert_id: int) -> Alert:
    """Close the alert by hand (the fault was fixed); if the rule still finds it, the next run
    opens a new one after the rule's quiet period."""
    alert = _scoped_alert(session, user, alert_id)
    if alert.cleared_at is not None:
        raise Conflict("the alert has cleared already", code="alert_cleared")
    alert.cleared_at, alert.resolved_by = ctx.now(), user.id
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="alert.resolve",
        subject=f"alert:{alert.id}",
        detail={},
    )
    return alert


def history(
    session: Session, user: StaffUser | None, *, open_only: bool = False, limit: int = 200
) -> list[dict[str, Any]]:
    """Alerts in the user's area, newest first, with their deliveries' outcome."""
    query = select(Alert).order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)
    scope = scope_of(session, user)
    if scope is not None:
        query = query.join(Kiosk, Kiosk.id == Alert.kiosk_id).where(Kiosk.region_id.in_(scope))
    if open_only:
        query = query.where(Alert.cleared_at.is_(None))
    alerts = session.scalars(query).all()
    deliveries: dict[int, list[dict[str, Any]]] = {}
    if alerts:
        for d in session.scalars(
            select(AlertDelivery).where(AlertDelivery.alert_id.in_([a.id for a in alerts]))
        ):
            deliveries.setdefault(d.alert_id, []).append(
                {"channel": d.channel, "status": d.status, "attempts": d.attempts}
            )
    return [
        {
            "id": a.id,
            "kiosk_id": a.kiosk_id,
            "kind": a.kind,
            "subject": a.subject,
            "detail": json.loads(a.detail),
            "opened_at": a.opened_at,
            "cleared_at": a.cleared_at,
            "acknowledged_at": a.acknowledged_at,
            "resolved": a.resolved_by is not None,
            "deliveries": deliveries.get(a.id, []),
        }
        for a in alerts
    ]


def open_counts(session: Session) -> dict[str, int]:
    """Open alerts by kind (for /metrics)."""
    counts: dict[str, int] = {}
    for kind in session.scalars(select(Alert.kind).where(Alert.cleared_at.is_(None))):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


__all__: Sequence[str] = (
    "RunSummary",
    "acknowledge",
    "assign",
    "deliver_pending",
    "evaluate_fleet",
    "history",
    "message",
    "open_counts",
    "resolve",
    "rules",
    "run_once",
    "save_rule",
    "set_contact",
)
