"""Signed kiosk and station requests: signature headers, nonces, and idempotent answers.

Every kiosk/station request is signed with the device's Ed25519 key (docs/interfaces.md) and
carries a nonce spent once; state-changing requests carry an Idempotency-Key, so a retry gets
the first answer (`run_idempotent`). `prune` forgets nonces and answers older than any retry.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cardsvc import requestsig
from server.errors import ApiError, Unauthenticated, Unprocessable
from server.services.context import Context, _connection, _is_hex, _table
from server.store import ledger
from server.store.models import IdempotencyRecord, SeenNonce

NONCE_RETENTION = dt.timedelta(seconds=900)


# --- kiosk request authentication ------------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    kiosk_id: str | None
    timestamp: str | None
    nonce: str | None
    signature: str | None
    method: str
    path: str
    body: bytes


@dataclass(frozen=True)
class AuthenticatedDevice:
    """The kiosk or station a request was signed by."""

    id: str
    kind: str


@functools.lru_cache(maxsize=4096)
def _kiosk_public_key(raw_b64: str) -> Ed25519PublicKey | None:
    """A registered key, parsed once (keyed by its bytes, so a re-keyed kiosk gets a new entry)."""
    try:
        return requestsig.public_key_from_raw(raw_b64)
    except ValueError:
        return None


def authenticate_kiosk(
    session: Session, ctx: Context, request: SignedRequest
) -> AuthenticatedDevice:
    """Check a kiosk request's signature headers (docs/interfaces.md) and spend its nonce.

    Every failure is a 401 with its own code. The nonce is spent in the session's open
    transaction in the same round trip as the kiosk row is read, before the signature is checked;
    every failure rolls that back, so strangers cannot fill the table. A genuine request's own
    transaction commits it with its effects (one commit per request). A caller whose transaction
    then rolls back must spend it again with `spend_nonce` (the API layer does, for every error
    answer).

    The kiosk row is read on every request (never cached), so disabling a kiosk or changing its
    key takes effect at once; only the parse of a key is kept, keyed by the key's bytes.
    """
    if not (request.kiosk_id and request.timestamp and request.nonce and request.signature):
        raise Unauthenticated(
            "the request must carry X-Kiosk-Id, X-Timestamp, X-Nonce and X-Signature",
            code="signature_missing",
        )
    try:
        timestamp = int(request.timestamp)
    except ValueError:
        raise Unauthenticated(
            "X-Timestamp is not whole Unix seconds", code="timestamp_invalid"
        ) from None
    if abs(timestamp - ctx.clock()) > ctx.clock_skew:
        raise Unauthenticated(
            f"X-Timestamp is more than {ctx.clock_skew} s from the server's clock",
            code="timestamp_stale",
        )
    if len(request.nonce) != 32 or not _is_hex(request.nonce):
        raise Unauthenticated("X-Nonce must be 32 hex characters", code="nonce_invalid")
    device = ledger.ledger_for(session).device(request.kiosk_id, request.nonce.lower(), ctx.now())
    try:
        _check_device(device, request, timestamp)
    except Unauthenticated:
        session.rollback()  # the nonce spent above, if any
        raise
    assert device is not None
    return AuthenticatedDevice(device.id, device.kind)


def _check_device(device: ledger.DeviceRow | None, request: SignedRequest, timestamp: int) -> None:
    if device is None:
        raise Unauthenticated("this kiosk is not registered", code="kiosk_unknown")
    if not device.enabled:
        raise Unauthenticated("this kiosk is disabled", code="kiosk_disabled")
    public_key = _kiosk_public_key(device.public_key)
    if public_key is None:
        raise Unauthenticated("the kiosk's registered key is unusable", code="kiosk_key_invalid")
    assert request.signature is not None and request.nonce is not None
    if not requestsig.verify(
        public_key,
        request.signature,
        request.method,
        request.path,
        timestamp,
        request.nonce,
        request.body,
    ):
        raise Unauthenticated("the request signature does not verify", code="signature_invalid")
    if not device.nonce_fresh:
        raise Unauthenticated("this nonce was used before", code="nonce_replayed")


def spend_nonce(session: Session, ctx: Context, kiosk_id: str, nonce: str) -> None:
    """Record a nonce in a transaction of its own (after the request's transaction rolled back)."""
    try:
        session.execute(
            insert(SeenNonce).values(kiosk_id=kiosk_id, nonce=nonce.lower(), seen_at=ctx.now())
        )
        session.commit()
    except IntegrityError:
        session.rollback()


IDEMPOTENCY_RETENTION = dt.timedelta(days=30)


def prune(session: Session, ctx: Context) -> tuple[int, int]:
    """Forget spent nonces and idempotency records older than any retry (30 days: a kiosk may
    be offline for days and retry its journal after). Returns how many of each. No commit."""
    nonces = prune_nonces(session, ctx)
    result = session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.created_at < ctx.now() - IDEMPOTENCY_RETENTION
        )
    )
    return nonces, int(result.rowcount or 0)  # type: ignore[attr-defined]


def prune_nonces(session: Session, ctx: Context) -> int:
    """Forget nonces older than any acceptable timestamp (a replay of them is refused as stale)."""
    cutoff = ctx.now() - max(NONCE_RETENTION, dt.timedelta(seconds=3 * ctx.clock_skew))
    result = session.execute(delete(SeenNonce).where(SeenNonce.seen_at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- idempotency ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: dict[str, Any]
    # The answer's JSON text as stored: what the caller sends, the first time and on every
    # retry alike (byte for byte), without serialising the body a second time.
    text: str
    # Whether the transaction open when run_idempotent was called was committed (with whatever
    # it held before, such as the request's nonce) rather than rolled back.
    committed: bool = True
    # Whether this is the stored answer of an earlier request rather than this call's own.
    replayed: bool = False


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\n".join([method.encode(), path.encode(), body])).hexdigest()


def run_idempotent(
    session: Session,
    ctx: Context,
    scope: str,
    key: str,
    fingerprint: str,
    operation: Callable[[], tuple[int, dict[str, Any]]],
    *,
    look_first: bool = True,
) -> StoredAnswer:
    """Run `operation` once per (scope, key); a retry gets the first answer, byte for byte.

    The answer is stored in the same transaction as the operation's effects, so either both
    happen or neither. A concurrent duplicate loses on the primary key, rolls back its work and
    returns the winner's answer. Errors (4xx problems) are not stored: nothing happened.

    `look_first=False` saves the look-up on the first try (the common case; one round trip):
    the operation runs straight away and a retry is recognised when storing its answer fails on
    the primary key, or when the operation refuses it (an ApiError, e.g. a spent tap counter),
    and gets the stored answer either way -- as before, with everything it did rolled back. Only
    for operations whose every effect is in the session's transaction (the kiosk's authorize,
    capture and void), so that running a retry once more and rolling it back leaves no trace.
    """
    if look_first:
        try:
            stored = _stored_answer(session, scope, key, fingerprint)
        except BaseException:
            session.rollback()
            raise
        if stored is not None:
            session.commit()
            return stored
    try:
        status, body = operation()
        text = json.dumps(body, separators=(",", ":"))
        ledger.ledger_for(session).commit_answer(
            ledger.Answer(scope, key, fingerprint, status, text, ctx.now())
        )
        return StoredAnswer(status, body, text)
    except ledger.INTEGRITY_ERRORS:
        session.rollback()
        stored = _stored_answer(session, scope, key, fingerprint)
        if stored is None:
            raise
        session.rollback()
        return StoredAnswer(stored.status, stored.body, stored.text, committed=False, replayed=True)
    except ApiError:
        session.rollback()
        if look_first:
            raise
        stored = _stored_answer(session, scope, key, fingerprint)
        session.rollback()
        if stored is None:
            raise
        return StoredAnswer(stored.status, stored.body, stored.text, committed=False, replayed=True)
    except BaseException:
        session.rollback()
        raise


_ANSWERS = _table(IdempotencyRecord)
_ANSWER_BY_KEY = select(
    _ANSWERS.c.request_hash, _ANSWERS.c.status_code, _ANSWERS.c.response_body
).where(_ANSWERS.c.scope == bindparam("b_scope"), _ANSWERS.c.key == bindparam("b_key"))


def _stored_answer(session: Session, scope: str, key: str, fingerprint: str) -> StoredAnswer | None:
    record = _connection(session).execute(_ANSWER_BY_KEY, {"b_scope": scope, "b_key": key}).first()
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise Unprocessable(
            "this Idempotency-Key was used for a different request", code="idempotency_key_reused"
        )
    text = record.response_body
    return StoredAnswer(record.status_code, json.loads(text), text, replayed=True)
