"""The audit log as auditors read it: filtered pages of entries, and the chain verified on demand
(the chain itself is server.store.audit)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.services.context import Context
from server.store import audit
from server.store.models import AuditEntry, StaffUser


@dataclass(frozen=True)
class EntryView:
    id: int
    at: dt.datetime  # in the city's time zone
    actor: str
    action: str
    subject: str
    detail: str


@dataclass(frozen=True)
class ChainCheck:
    entries: int
    broken_at: int | None  # the first entry whose hash does not hold; None: intact


def _day_start(ctx: Context, day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), ctx.timezone).astimezone(dt.UTC)


def entries(
    session: Session,
    ctx: Context,
    *,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[EntryView]:
    """Entries newest first; `action` matches a prefix ("staff." finds every sign-in event)."""
    query = select(AuditEntry)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action.startswith(action, autoescape=True))
    if subject:
        query = query.where(AuditEntry.subject == subject)
    if since:
        query = query.where(AuditEntry.at >= _day_start(ctx, since))
    if until:
        query = query.where(AuditEntry.at < _day_start(ctx, until + dt.timedelta(days=1)))
    if before:
        query = query.where(AuditEntry.id < before)
    rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)).all()
    return [
        EntryView(
            id=row.id,
            at=audit.as_utc(row.at).astimezone(ctx.timezone),
            actor=row.actor,
            action=row.action,
            subject=row.subject,
            detail=row.detail,
        )
        for row in rows
    ]


def verify(session: Session, ctx: Context, user: StaffUser) -> ChainCheck:
    """Recompute every entry's hash; the check itself is recorded (after it ran). No commit."""
    count = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
    broken = audit.verify_chain(session)
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="audit.verify",
        subject="audit_log",
        detail={"entries": count, "broken_at": broken},
    )
    return ChainCheck(entries=count, broken_at=broken)
