"""The append-only, hash-chained audit log.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's canonical JSON, so
changing or removing an entry breaks every later hash (`verify_chain` finds the first break). The
database also refuses UPDATE and DELETE on the table (triggers in the initial migration).
Appends are serialised: a transaction-scoped advisory lock on PostgreSQL, the write lock that
`BEGIN IMMEDIATE` takes on SQLite.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from server.store.models import AuditEntry

GENESIS = "0" * 64
_ADVISORY_LOCK_ID = 0x0AC0_A0D1


def entry_hash(
    prev_hash: str, at: dt.datetime, actor: str, action: str, subject: str, detail: str
) -> str:
    body = json.dumps(
        [prev_hash, as_utc(at).isoformat(), actor, action, subject, detail],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def append(
    session: Session,
    *,
    at: dt.datetime,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    prev = session.scalar(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1))
    prev_hash = prev or GENESIS
    detail_json = json.dumps(
        detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    at = as_utc(at).replace(microsecond=0)
    entry = AuditEntry(
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        detail=detail_json,
        prev_hash=prev_hash,
        hash=entry_hash(prev_hash, at, actor, action, subject, detail_json),
    )
    session.add(entry)
    session.flush()
    return entry


def verify_chain(session: Session) -> int | None:
    """The id of the first entry whose hash does not hold, or None when the chain is intact."""
    prev_hash = GENESIS
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        expected = entry_hash(
            prev_hash, entry.at, entry.actor, entry.action, entry.subject, entry.detail
        )
        if entry.prev_hash != prev_hash or entry.hash != expected:
            return entry.id
        prev_hash = entry.hash
    return None


def as_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
