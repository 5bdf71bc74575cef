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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, text
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


@dataclass(frozen=True)
class Entry:
    """One entry to append (its place in the chain is decided by `append_many`)."""

    actor: str
    action: str
    subject: str
    detail: dict[str, Any] | None = None


def append(
    session: Session,
    *,
    at: dt.datetime,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
) -> None:
    append_many(session, at, [Entry(actor, action, subject, detail)])


def append_many(session: Session, at: dt.datetime, entries: Sequence[Entry]) -> None:
    """Append entries in their order, each chained to the one before, under one lock, one read
    of the chain's last hash and one INSERT (a page of people read is one append, not one per
    person: the chain is the same as appending them one by one).

    The lock is its own statement, before the read: under READ COMMITTED each statement sees
    what was committed when it began, so a read in the same statement as the lock could miss an
    append committed while it waited, and fork the chain. The INSERT is a bulk one (no ORM
    objects to track: nobody reads the rows back in this transaction)."""
    if not entries:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    prev = session.scalar(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1))
    prev_hash = prev or GENESIS
    at = as_utc(at).replace(microsecond=0)
    rows = []
    for entry in entries:
        detail_json = json.dumps(
            entry.detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        hashed = entry_hash(prev_hash, at, entry.actor, entry.action, entry.subject, detail_json)
        rows.append(
            {
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "subject": entry.subject,
                "detail": detail_json,
                "prev_hash": prev_hash,
                "hash": hashed,
            }
        )
        prev_hash = hashed
    session.execute(insert(AuditEntry), rows)


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
