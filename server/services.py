"""Business operations of the server. Each takes a SQLAlchemy session (and a Context where it
needs keys, the clock or the time zone) and leaves committing to the caller, except the
administrative helpers at the bottom (`seed_demo`, `add_kiosk`, `create_user`), which the CLI and
the demo call directly and which commit.

Concurrency (see also server.db):
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

import base64
import datetime as dt
import functools
import hashlib
import json
import secrets
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from cardsvc import requestsig
from cardsvc.errors import CardVerificationError, VerificationFailure
from cardsvc.requestsig import canonical_json
from cardsvc.verify import (
    TapChallenge,
    guid_from_certificate,
    load_certificate,
    verify_certificate,
    verify_tap,
)
from server import audit, exams, ledger, rules
from server.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
    Unprocessable,
)
from server.fieldcrypto import FieldCipher, mask_id_number, normalise_id_number
from server.models import (
    Appointment,
    Authorization,
    AuthorizationStatus,
    Card,
    CardStatus,
    Category,
    Couple,
    EntitlementRule,
    ExamProgramme,
    ExamRecord,
    IdempotencyRecord,
    Kiosk,
    KioskEvent,
    KioskSlot,
    PeriodKindColumn,
    Product,
    Region,
    RegionKind,
    Resident,
    ResidentStatus,
    Role,
    SeenNonce,
    StaffUser,
)

NONCE_RETENTION = dt.timedelta(seconds=900)


RULES_TTL = 5.0


class TtlCache:
    """One value, refreshed when older than `ttl` seconds. Thread-safe enough: a race reloads twice."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._value: Any = None
        self._loaded_at = float("-inf")

    def get(self, now: float, load: Callable[[], Any]) -> Any:
        if not 0 <= now - self._loaded_at < self.ttl:
            self._value = load()
            self._loaded_at = now
        return self._value

    def clear(self) -> None:
        self._loaded_at = float("-inf")


@dataclass(frozen=True)
class Context:
    """What services need besides the session: keys, the CA, the clock, the city's time zone."""

    cipher: FieldCipher
    timezone: ZoneInfo
    card_ca_der: bytes | None
    clock_skew: int
    clock: Callable[[], float]
    server_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, compare=False)
    rules_cache: TtlCache = field(default_factory=lambda: TtlCache(RULES_TTL), compare=False)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def today(self, moment: dt.datetime | None = None) -> dt.date:
        return (moment or self.now()).astimezone(self.timezone).date()


def _table(model: type[Any]) -> Table:
    """A mapped class's table, for Core statements (typed: `__table__` is a FromClause)."""
    return cast(Table, model.__table__)


_connection = ledger.core_connection


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
        ledger.ledger_for(session).commit_answer(
            ledger.Answer(
                scope, key, fingerprint, status, json.dumps(body, separators=(",", ":")), ctx.now()
            )
        )
        return StoredAnswer(status, body)
    except ledger.INTEGRITY_ERRORS:
        session.rollback()
        stored = _stored_answer(session, scope, key, fingerprint)
        if stored is None:
            raise
        session.rollback()
        return StoredAnswer(stored.status, stored.body, committed=False, replayed=True)
    except ApiError:
        session.rollback()
        if look_first:
            raise
        stored = _stored_answer(session, scope, key, fingerprint)
        session.rollback()
        if stored is None:
            raise
        return StoredAnswer(stored.status, stored.body, committed=False, replayed=True)
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
    return StoredAnswer(record.status_code, json.loads(record.response_body), replayed=True)


# --- authorize, capture, void --------------------------------------------------------------------


class RefusalReason:
    """Refusal codes of docs/interfaces.md that are decided here rather than in server.rules."""

    CARD_UNKNOWN = "card_unknown"
    CARD_REVOKED = "card_revoked"
    PROOF_INVALID = "proof_invalid"
    PROOF_STALE = "proof_stale"
    COUNTER_REPLAYED = "counter_replayed"
    SLOT_UNKNOWN = "slot_unknown"


_VERIFICATION_REASON = {VerificationFailure.REVOKED: RefusalReason.CARD_REVOKED}


def refusal(
    reason: str,
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


def _card_refusal(
    ctx: Context,
    card: ledger.CardRow | None,
    challenge: TapChallenge,
    signature: bytes,
    now: dt.datetime,
) -> dict[str, Any] | None:
    """Why a tap's card is refused (a refusal answer), or None: the card is registered and
    active, the tap is fresh, and the proof verifies with the certificate recorded at issuance."""
    if card is None:
        return refusal(RefusalReason.CARD_UNKNOWN, "this card is not registered")
    if card.status is not CardStatus.ACTIVE:
        return refusal(RefusalReason.CARD_REVOKED, f"this card is {card.status.value}")
    if abs(challenge.time_ms / 1000 - now.timestamp()) > ctx.clock_skew:
        return refusal(RefusalReason.PROOF_STALE, "the tap is too old or from the future")
    try:
        verify_tap(
            _parsed_certificate(card.certificate),
            _parsed_certificate(ctx.card_ca_der),  # type: ignore[arg-type]
            challenge,
            signature,
            now=now,
        )
    except CardVerificationError as exc:
        return refusal(_VERIFICATION_REASON.get(exc.reason, RefusalReason.PROOF_INVALID), str(exc))
    return None


def check_tap(
    session: Session, ctx: Context, device_id: str, challenge: TapChallenge, signature: bytes
) -> tuple[TappedCard, dt.datetime] | dict[str, Any]:
    """The card behind a tap at a station, or a refusal (see _card_refusal); the device's counter
    grows (advanced here, so a proof is used once)."""
    connection = _connection(session)
    row = connection.execute(ledger.CARD_BY_GUID, {"b_guid": challenge.card_guid.hex()}).first()
    card = ledger.CardRow(row.id, row.resident_id, row.status, row.certificate) if row else None
    now = ctx.now()
    refused = _card_refusal(ctx, card, challenge, signature, now)
    if refused is not None:
        return refused
    assert card is not None
    advanced = connection.execute(
        ledger.ADVANCE_COUNTER, {"b_device": device_id, "b_counter": challenge.counter}
    )
    if advanced.rowcount != 1:
        return refusal(RefusalReason.COUNTER_REPLAYED, "this tap was already used")
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
        return refusal(RefusalReason.SLOT_UNKNOWN, f"slot {slot} holds no product")
    now = ctx.now()
    refused = _card_refusal(ctx, tap.card, challenge, signature, now)
    if refused is not None:
        return refused
    card = tap.card
    assert card is not None
    today = ctx.today(now)
    rule_set = cached_rules(session, ctx)
    held = store.hold(
        kiosk_id, challenge.counter, card.resident_id, rules.lookback_start(rule_set, today)
    )
    if held is None:
        return refusal(RefusalReason.COUNTER_REPLAYED, "this tap was already used")
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
    rule_set = cached_rules(session, ctx)
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


def _add_usage(
    session: Session,
    resident_id: int,
    category_id: int,
    day: dt.date,
    *,
    reserved: int,
    captured: int = 0,
) -> None:
    ledger.add_usage(
        _connection(session), resident_id, category_id, day, reserved=reserved, captured=captured
    )


def cached_rules(session: Session, ctx: Context) -> list[rules.Rule]:
    """The active rules, re-read at most every RULES_TTL seconds (rules change rarely; an edit
    takes effect within that time)."""
    return ctx.rules_cache.get(ctx.clock(), lambda: load_rules(session))


def load_rules(session: Session) -> list[rules.Rule]:
    rows = session.execute(
        select(EntitlementRule, Category.code)
        .join(Category, EntitlementRule.category_id == Category.id)
        .where(EntitlementRule.active.is_(True))
        .order_by(EntitlementRule.id)
    ).all()
    return [rule_from_row(row, code) for row, code in rows]


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
    today = ctx.today()
    rule_set = cached_rules(session, ctx)
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


def rule_view(row: EntitlementRule, category_code: str) -> dict[str, Any]:
    return {
        "rule_id": row.id,
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


def list_rules(session: Session, *, include_inactive: bool = False) -> list[dict[str, Any]]:
    query = select(EntitlementRule, Category.code).join(
        Category, EntitlementRule.category_id == Category.id
    )
    if not include_inactive:
        query = query.where(EntitlementRule.active.is_(True))
    return [
        rule_view(row, code) for row, code in session.execute(query.order_by(EntitlementRule.id))
    ]


def create_rule(
    session: Session, ctx: Context, user: StaffUser, spec: Mapping[str, Any]
) -> dict[str, Any]:
    """Add a rule (rules are never edited in place: a change is a new rule and the old one
    deactivated, so what applied when stays on record). Validated through server.rules."""
    category = session.scalar(select(Category).where(Category.code == spec["category"]))
    if category is None:
        raise NotFound(f"no category {spec['category']}", code="category_unknown")
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
    )
    session.add(row)
    session.flush()
    view = rule_view(row, category.code)
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


def deactivate_rule(
    session: Session, ctx: Context, user: StaffUser, rule_id: int
) -> dict[str, Any]:
    row = session.get(EntitlementRule, rule_id)
    if row is None:
        raise NotFound(f"no rule {rule_id}", code="rule_unknown")
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
    return rule_view(row, code or "")


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

    cards = {
        card.guid: card
        for card in session.scalars(
            select(Card).where(Card.guid.in_({c.card_guid.hex() for _i, c, _s in parsed}))
        )
    }
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
    rule_set = cached_rules(session, ctx)
    results = []
    max_counter = 0
    for item, challenge, signature in parsed:
        result: dict[str, Any] = {"txn_id": item.txn_id, "counter": challenge.counter}
        results.append(result)
        max_counter = max(max_counter, challenge.counter)
        existing = session.scalar(
            select(Authorization.id).where(
                Authorization.kiosk_id == kiosk_id, Authorization.proof_counter == challenge.counter
            )
        )
        if existing is not None:
            result.update(status="duplicate", authorization_id=existing)
            continue
        card = cards.get(challenge.card_guid.hex())
        slot_row = slots.get(item.slot)
        tapped_at = dt.datetime.fromtimestamp(challenge.time_ms / 1000, dt.UTC)
        problem = None
        if slot_row is None:
            problem = RefusalReason.SLOT_UNKNOWN
        elif card is None:
            problem = RefusalReason.CARD_UNKNOWN
        else:
            try:
                # Checked as of the tap: a card valid then was valid for that dispense.
                verify_tap(
                    _parsed_certificate(card.certificate),
                    _parsed_certificate(ctx.card_ca_der),
                    challenge,
                    signature,
                    now=tapped_at,
                )
            except CardVerificationError as exc:
                problem = _VERIFICATION_REASON.get(exc.reason, RefusalReason.PROOF_INVALID)
        if problem is not None:
            audit.append(
                session,
                at=now,
                actor=f"kiosk:{kiosk_id}",
                action="offline.unattributed",
                subject=f"kiosk:{kiosk_id}:{challenge.counter}",
                detail={
                    "reason": str(problem),
                    "card_guid": challenge.card_guid.hex(),
                    "slot": item.slot,
                    "quantity": item.quantity,
                    "outcome": item.outcome,
                },
            )
            result.update(status="unattributed", reason=str(problem))
            continue
        assert card is not None and slot_row is not None
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
        session.execute(
            insert(Authorization).values(
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
                status=AuthorizationStatus.CAPTURED if dispensed else AuthorizationStatus.VOIDED,
                created_at=tapped_at,
                settled_at=now,
                board_txn=item.board_txn,
                void_reason=None if dispensed else item.outcome,
                offline=True,
                flags=",".join(flags) or None,
            )
        )
        if dispensed:
            _add_usage(
                session, card.resident_id, product.category_id, day, reserved=0, captured=units
            )
        result.update(
            status="applied",
            authorization_id=authorization_id,
            charged=units if dispensed else 0,
            flags=flags,
        )
    if max_counter:
        session.execute(
            update(Kiosk)
            .where(Kiosk.id == kiosk_id, Kiosk.last_counter < max_counter)
            .values(last_counter=max_counter)
            .execution_options(synchronize_session=False)
        )
    return {"results": results}


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


# --- exams at service stations --------------------------------------------------------------------

DEMO_PROGRAMMES = [
    exams.Programme(
        "pre_pregnancy",
        "Free pre-pregnancy exam",
        frozenset("FM"),
        min_age=20,
        max_age=49,
        once=True,
        requires_plan=True,
    ),
    exams.Programme(
        "reproductive_health_check",
        "Yearly reproductive-health check",
        frozenset("F"),
        min_age=21,
        max_age=64,
        interval_days=365,
    ),
]


def seed_exam_programmes(session: Session) -> None:
    """The two example programmes of issue 5, as data; idempotent. No commit."""
    for programme in DEMO_PROGRAMMES:
        if (
            session.scalar(select(ExamProgramme.id).where(ExamProgramme.code == programme.code))
            is None
        ):
            session.add(
                ExamProgramme(
                    code=programme.code,
                    name=programme.name,
                    sexes="".join(sorted(programme.sexes)) or None,
                    min_age=programme.min_age,
                    max_age=programme.max_age,
                    interval_days=programme.interval_days,
                    once=programme.once,
                    requires_plan=programme.requires_plan,
                    active=True,
                )
            )
    session.flush()


def _programmes(session: Session) -> list[tuple[int, exams.Programme]]:
    rows = session.scalars(
        select(ExamProgramme).where(ExamProgramme.active.is_(True)).order_by(ExamProgramme.id)
    ).all()
    return [
        (
            row.id,
            exams.Programme(
                row.code,
                row.name,
                frozenset(row.sexes or ""),
                row.min_age,
                row.max_age,
                row.interval_days,
                row.once,
                row.requires_plan,
            ),
        )
        for row in rows
    ]


def _identify(
    session: Session, ctx: Context, station_id: str, proof: Any
) -> tuple[Resident, dt.date]:
    challenge, signature = parse_tap(proof, station_id, ctx)
    checked = check_tap(session, ctx, station_id, challenge, signature)
    if isinstance(checked, dict):
        raise Unprocessable(checked["message"], code=checked["reason"])
    card, now = checked
    resident = session.get(Resident, card.resident_id)
    assert resident is not None
    return resident, ctx.today(now)


def _decisions(
    session: Session, ctx: Context, resident: Resident, today: dt.date
) -> list[tuple[int, exams.Programme, exams.ExamDecision]]:
    holder = holder_of(ctx, resident)
    history: dict[int, list[dt.date]] = defaultdict(list)
    for programme_id, given_on in session.execute(
        select(ExamRecord.programme_id, ExamRecord.given_on).where(
            ExamRecord.resident_id == resident.id
        )
    ):
        history[programme_id].append(given_on)
    plan_since = session.scalar(
        select(func.max(Couple.planning_since)).where(
            Couple.active.is_(True),
            (Couple.partner_a_id == resident.id) | (Couple.partner_b_id == resident.id),
        )
    )
    return [
        (pid, programme, exams.evaluate(programme, holder, history[pid], today, plan_since))
        for pid, programme in _programmes(session)
    ]


def _decision_view(programme: exams.Programme, decision: exams.ExamDecision) -> dict[str, Any]:
    return {
        "programme": programme.code,
        "name": programme.name,
        "eligible": decision.eligible,
        "reason": decision.reason.value if decision.reason else None,
        "next_eligible_on": decision.next_eligible_on.isoformat()
        if decision.next_eligible_on
        else None,
    }


def exam_eligibility(session: Session, ctx: Context, station_id: str, proof: Any) -> dict[str, Any]:
    """A card tapped at a station: every programme, eligible or not, why, and from when. Nothing
    about the person beyond that."""
    resident, today = _identify(session, ctx, station_id, proof)
    return {
        "programmes": [
            _decision_view(programme, decision)
            for _pid, programme, decision in _decisions(session, ctx, resident, today)
        ]
    }


def record_exam(
    session: Session,
    ctx: Context,
    station_id: str,
    proof: Any,
    programme_code: str,
    staff: str | None,
) -> dict[str, Any]:
    """Record that an exam was given today at this station (the card is tapped again: the person
    is present). Refused with 409 when the person is not eligible. Never stores results."""
    resident, today = _identify(session, ctx, station_id, proof)
    session.scalar(select(Resident.id).where(Resident.id == resident.id).with_for_update())
    for pid, programme, decision in _decisions(session, ctx, resident, today):
        if programme.code != programme_code:
            continue
        if not decision.eligible:
            raise Conflict(
                f"not eligible for {programme.name}: {decision.reason}",
                code="not_eligible",
                reason=decision.reason.value if decision.reason else None,
                next_eligible_on=decision.next_eligible_on.isoformat()
                if decision.next_eligible_on
                else None,
            )
        record = ExamRecord(
            programme_id=pid,
            resident_id=resident.id,
            station_id=station_id,
            given_on=today,
            staff=staff,
            created_at=ctx.now(),
        )
        session.add(record)
        session.flush()
        return {"record_id": record.id, "programme": programme.code, "given_on": today.isoformat()}
    raise NotFound(f"no programme {programme_code}", code="programme_unknown")


def register_couple(
    session: Session,
    ctx: Context,
    user: StaffUser,
    partner_a: int,
    partner_b: int,
    planning_since: dt.date | None,
) -> dict[str, Any]:
    """Record two residents as a couple (optionally planning a pregnancy since a date). A person
    is in at most one active couple: registering a new one ends the earlier. No commit."""
    if partner_a == partner_b:
        raise InvalidRequest("a couple is two different people", code="field_invalid")
    people = [session.get(Resident, partner_a), session.get(Resident, partner_b)]
    if any(p is None for p in people):
        raise NotFound("no such resident", code="resident_unknown")
    if not all(in_scope(session, user, p.region_id) for p in people if p is not None):
        raise Forbidden("a partner lives outside your area", code="out_of_scope")
    for earlier in session.scalars(
        select(Couple).where(
            Couple.active.is_(True),
            Couple.partner_a_id.in_([partner_a, partner_b])
            | Couple.partner_b_id.in_([partner_a, partner_b]),
        )
    ):
        earlier.active = False
    couple = Couple(
        partner_a_id=partner_a,
        partner_b_id=partner_b,
        planning_since=planning_since,
        active=True,
        created_at=ctx.now(),
    )
    session.add(couple)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="couple.register",
        subject=f"couple:{couple.id}",
        detail={"partners": [partner_a, partner_b]},
    )
    return {
        "couple_id": couple.id,
        "partners": [partner_a, partner_b],
        "planning_since": planning_since.isoformat() if planning_since else None,
    }


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


# --- appointments -----------------------------------------------------------------------------------

SLOT_MINUTES = 30
OPENING = dt.time(8, 0)
CLOSING = dt.time(17, 0)


def _station(session: Session, station_id: str) -> Kiosk:
    station = session.get(Kiosk, station_id)
    if station is None or station.kind != "station":
        raise NotFound(f"no station {station_id}", code="station_unknown")
    return station


def slot_starts(ctx: Context, day: dt.date) -> list[dt.datetime]:
    """The day's appointment slots at a station, in the city's time zone."""
    start = dt.datetime.combine(day, OPENING, ctx.timezone)
    end = dt.datetime.combine(day, CLOSING, ctx.timezone)
    slots = []
    while start < end:
        slots.append(start)
        start += dt.timedelta(minutes=SLOT_MINUTES)
    return slots


def station_slots(
    session: Session, ctx: Context, user: StaffUser, station_id: str, day: dt.date
) -> list[dict[str, Any]]:
    station = _station(session, station_id)
    if not in_scope(session, user, station.region_id):
        raise Forbidden("this station is outside your area", code="out_of_scope")
    starts = slot_starts(ctx, day)
    booked = dict(
        session.execute(
            select(Appointment.starts_at, Appointment.id).where(
                Appointment.station_id == station_id,
                Appointment.status == "booked",
                # UTC: SQLite keeps the wall time and drops the offset.
                Appointment.starts_at >= starts[0].astimezone(dt.UTC),
                Appointment.starts_at <= starts[-1].astimezone(dt.UTC),
            )
        ).all()
    )
    booked = {audit.as_utc(at): appointment_id for at, appointment_id in booked.items()}
    now = ctx.now()
    return [
        {
            "starts_at": start.isoformat(),
            "available": start > now and start.astimezone(dt.UTC) not in booked,
            "appointment_id": booked.get(start.astimezone(dt.UTC)),
        }
        for start in starts
    ]


def book_appointment(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    station_id: str,
    programme_code: str,
    resident_id: int,
    starts_at: dt.datetime,
) -> dict[str, Any]:
    """Book a slot for a person's exam; the person must be eligible on that day. No commit."""
    station = _station(session, station_id)
    local = starts_at.astimezone(ctx.timezone)
    if local not in slot_starts(ctx, local.date()):
        raise InvalidRequest(
            f"appointments start on the {SLOT_MINUTES}-minute marks from {OPENING:%H:%M} to {CLOSING:%H:%M}",
            code="slot_invalid",
        )
    if starts_at <= ctx.now():
        raise InvalidRequest("that slot has passed", code="slot_invalid")
    resident = session.get(Resident, resident_id)
    if resident is None:
        raise NotFound(f"no resident {resident_id}", code="resident_unknown")
    if not (
        in_scope(session, user, station.region_id) and in_scope(session, user, resident.region_id)
    ):
        raise Forbidden("the station or the resident is outside your area", code="out_of_scope")
    for pid, programme, decision in _decisions(session, ctx, resident, local.date()):
        if programme.code != programme_code:
            continue
        if not decision.eligible:
            raise Conflict(
                f"not eligible for {programme.name} on {local.date()}: {decision.reason}",
                code="not_eligible",
                reason=decision.reason.value if decision.reason else None,
            )
        appointment = Appointment(
            station_id=station_id,
            programme_id=pid,
            resident_id=resident_id,
            starts_at=starts_at.astimezone(dt.UTC),
            status="booked",
            booked_by=user.id,
            created_at=ctx.now(),
        )
        session.add(appointment)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict("that slot is taken", code="slot_taken") from None
        return {
            "appointment_id": appointment.id,
            "station_id": station_id,
            "programme": programme.code,
            "starts_at": local.isoformat(),
            "status": "booked",
        }
    raise NotFound(f"no programme {programme_code}", code="programme_unknown")


def cancel_appointment(
    session: Session, ctx: Context, user: StaffUser, appointment_id: int
) -> dict[str, Any]:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        raise NotFound(f"no appointment {appointment_id}", code="appointment_unknown")
    station = _station(session, appointment.station_id)
    if not in_scope(session, user, station.region_id):
        raise Forbidden("this station is outside your area", code="out_of_scope")
    appointment.status = "cancelled"
    programme = session.scalar(
        select(ExamProgramme.code).where(ExamProgramme.id == appointment.programme_id)
    )
    return {
        "appointment_id": appointment.id,
        "station_id": appointment.station_id,
        "programme": programme,
        "starts_at": audit.as_utc(appointment.starts_at).astimezone(ctx.timezone).isoformat(),
        "status": "cancelled",
    }


# --- reports ---------------------------------------------------------------------------------------

SMALL_COUNT = 5


def monthly_report(
    session: Session, year: int, *, min_count: int = SMALL_COUNT
) -> list[dict[str, Any]]:
    """Items dispensed per town (where the kiosk stands) per month of `year`.

    Aggregates only; a cell counting fewer than `min_count` dispenses is suppressed (None), so a
    report cannot single out a person. Kiosks stand in villages or communities; their town is
    the parent region.
    """
    leaf = _table(Region).alias("leaf")
    town = _table(Region).alias("town")
    if session.get_bind().dialect.name == "postgresql":
        month = func.to_char(Authorization.usage_day, "YYYY-MM")
    else:
        month = func.strftime("%Y-%m", Authorization.usage_day)
    rows = session.execute(
        select(
            town.c.code,
            town.c.name,
            month.label("month"),
            func.count(),
            func.sum(Authorization.units),
        )
        .select_from(Authorization)
        .join(Kiosk, Kiosk.id == Authorization.kiosk_id)
        .join(leaf, leaf.c.id == Kiosk.region_id)
        .join(town, town.c.id == leaf.c.parent_id)
        .where(
            Authorization.status == AuthorizationStatus.CAPTURED,
            Authorization.usage_day >= dt.date(year, 1, 1),
            Authorization.usage_day < dt.date(year + 1, 1, 1),
        )
        .group_by(town.c.code, town.c.name, month)
        .order_by(town.c.code, month)
    ).all()
    return [
        {
            "town": code,
            "town_name": name,
            "month": month_text,
            "dispenses": count if count >= min_count else None,
            "units": int(units) if count >= min_count else None,
        }
        for code, name, month_text, count, units in rows
    ]


# --- staff ---------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate_staff(
    session: Session, authorization_header: str | None, *roles: Role
) -> StaffUser:
    if not authorization_header or not authorization_header.startswith("Bearer "):
        raise Unauthenticated("a staff bearer token is required", code="token_missing")
    token = authorization_header.removeprefix("Bearer ").strip()
    user = session.scalar(select(StaffUser).where(StaffUser.token_hash == token_hash(token)))
    if user is None or not user.active:
        raise Unauthenticated("the bearer token is not valid", code="token_invalid")
    if roles and user.role not in roles:
        raise Forbidden(
            f"this needs the role {' or '.join(r.value for r in roles)}", code="role_required"
        )
    return user


def issue_card(
    session: Session,
    ctx: Context,
    resident_id: int,
    certificate_der: bytes,
    issued_by: StaffUser | None,
) -> Card:
    """Record a card issued to a resident. The certificate must come from the city card CA and be
    valid now; earlier active cards of the same person are marked replaced (allowances are per
    person, so a replacement does not reset them)."""
    if ctx.card_ca_der is None:
        raise ServiceUnavailable("the card CA is not configured", code="card_ca_not_configured")
    try:
        certificate = load_certificate(certificate_der)
        verified = verify_certificate(certificate, ctx.card_ca_der, now=ctx.now())
        guid = guid_from_certificate(certificate).hex()
    except CardVerificationError as exc:
        raise Unprocessable(str(exc), code="certificate_invalid", reason=exc.reason.value) from exc
    resident = session.scalar(select(Resident).where(Resident.id == resident_id).with_for_update())
    if resident is None:
        raise NotFound(f"no resident {resident_id}", code="resident_unknown")
    if issued_by is not None and not in_scope(session, issued_by, resident.region_id):
        raise Forbidden("this resident lives outside your area", code="out_of_scope")
    if session.scalar(select(Card.id).where(Card.guid == guid)) is not None:
        raise Conflict(f"card {guid} is already registered", code="card_exists")
    now = ctx.now()
    replaced = session.scalars(
        select(Card).where(Card.resident_id == resident.id, Card.status == CardStatus.ACTIVE)
    ).all()
    for old in replaced:
        old.status = CardStatus.REPLACED
        old.status_changed_at = now
    card = Card(
        guid=guid,
        resident_id=resident.id,
        certificate=certificate_der,
        not_after=verified.not_after,
        status=CardStatus.ACTIVE,
        issued_at=now,
        issued_by=issued_by.id if issued_by else None,
    )
    session.add(card)
    session.flush()
    audit.append(
        session,
        at=now,
        actor=f"user:{issued_by.id}" if issued_by else "cli",
        action="card.issue",
        subject=f"card:{guid}",
        detail={"resident_id": resident.id, "replaced": [c.guid for c in replaced]},
    )
    return card


def revoke_card(session: Session, ctx: Context, guid: str, reason: str, user: StaffUser) -> Card:
    """Revoke a card (lost, stolen, holder left). Idempotent; audited."""
    card = session.scalar(select(Card).where(Card.guid == guid.lower()).with_for_update())
    if card is None:
        raise NotFound(f"no card {guid}", code="card_unknown")
    resident = session.get(Resident, card.resident_id)
    assert resident is not None
    if not in_scope(session, user, resident.region_id):
        raise Forbidden("this card's holder lives outside your area", code="out_of_scope")
    if card.status is CardStatus.ACTIVE:
        card.status = CardStatus.REVOKED
        card.status_changed_at = ctx.now()
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="card.revoke",
            subject=f"card:{card.guid}",
            detail={"reason": reason},
        )
    return card


SEXES = frozenset({"F", "M"})


def resident_view(session: Session, ctx: Context, resident: Resident) -> dict[str, Any]:
    """What staff see of a person: decrypted fields, the ID number masked, the cards."""
    region_code = session.scalar(select(Region.code).where(Region.id == resident.region_id))
    cards = session.execute(
        select(Card.guid, Card.status).where(Card.resident_id == resident.id).order_by(Card.id)
    ).all()
    phone = ctx.cipher.decrypt("phone", resident.phone_enc) if resident.phone_enc else None
    return {
        "resident_id": resident.id,
        "name": ctx.cipher.decrypt("name", resident.name_enc),
        "sex": ctx.cipher.decrypt("sex", resident.sex_enc),
        "birth_date": ctx.cipher.decrypt("birth_date", resident.birth_date_enc),
        "phone": phone,
        "id_number": mask_id_number(resident.id_number_last4),
        "region": region_code,
        "status": resident.status.value,
        "cards": [{"card_guid": guid, "status": status.value} for guid, status in cards],
    }


def find_residents(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    id_number: str | None = None,
    region_code: str | None = None,
    limit: int = 50,
    after: int = 0,
) -> list[dict[str, Any]]:
    """Residents by exact ID number (through its keyed hash) or by region subtree, within the
    user's area. Every person shown is an audited read."""
    query = select(Resident)
    if id_number is not None:
        query = query.where(Resident.id_number_hash == ctx.cipher.id_number_hash(id_number))
    if region_code is not None:
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
        if not in_scope(session, user, region_id):
            raise Forbidden("this region is outside your area", code="out_of_scope")
        query = query.where(Resident.region_id.in_(subtree_ids(session, region_id)))
    elif user.region_id is not None:
        query = query.where(Resident.region_id.in_(subtree_ids(session, user.region_id)))
    rows = session.scalars(
        query.where(Resident.id > after).order_by(Resident.id).limit(limit)
    ).all()
    views = []
    for resident in rows:
        views.append(resident_view(session, ctx, resident))
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="resident.read",
            subject=f"resident:{resident.id}",
        )
    return views


def subtree_ids(session: Session, root_id: int) -> list[int]:
    """The region and every region below it (the tree is small: a city has ~1,000 regions)."""
    children: dict[int | None, list[int]] = defaultdict(list)
    for region_id, parent_id in session.execute(select(Region.id, Region.parent_id)):
        children[parent_id].append(region_id)
    found, todo = [], [root_id]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def in_scope(session: Session, user: StaffUser, region_id: int) -> bool:
    """Is `region_id` inside the subtree of regions the user is scoped to?"""
    if user.region_id is None:
        return True
    current: int | None = region_id
    for _ in range(16):  # the tree is shallow: city -> town -> village
        if current is None:
            return False
        if current == user.region_id:
            return True
        current = session.scalar(select(Region.parent_id).where(Region.id == current))
    return False


# --- administration (CLI and demo) -----------------------------------------------------------------


@dataclass(frozen=True)
class DemoSeed:
    city_region_id: int
    town_region_id: int
    village_region_id: int
    category: str
    product_sku: str
    monthly_limit: int
    resident_id: int
    region_codes: list[str] = field(default_factory=list)


DEMO_CATEGORY = "condoms"
DEMO_SKU = "CONDOM-STD-1"
DEMO_MONTHLY_LIMIT = 3


def seed_demo(session: Session, ctx: Context) -> DemoSeed:
    """A small city, the condom category with a monthly limit of 3, one product, one resident.

    Idempotent for the reference data (regions, category, product, rule); each call enrols a new
    demo resident, so a demo run always starts with a full allowance. Commits.
    """
    city = _get_or_add_region(session, "C01", "Demo City", RegionKind.CITY, None)
    town = _get_or_add_region(
        session, "C01-T01", "Riverside Subdistrict", RegionKind.SUBDISTRICT, city
    )
    village = _get_or_add_region(
        session, "C01-T01-V001", "Willow Community", RegionKind.COMMUNITY, town
    )
    _get_or_add_region(session, "C01-T02", "Hill Town", RegionKind.TOWN, city)
    seed_catalog(session)
    seed_exam_programmes(session)
    resident = enrol_resident(
        session,
        ctx,
        name="Demo Resident",
        sex="F",
        birth_date=dt.date(1994, 5, 17),
        phone=None,
        id_number="DEMO" + secrets.token_hex(7).upper(),
        region_id=village.id,
    )
    session.commit()
    return DemoSeed(
        city_region_id=city.id,
        town_region_id=town.id,
        village_region_id=village.id,
        category=DEMO_CATEGORY,
        product_sku=DEMO_SKU,
        monthly_limit=DEMO_MONTHLY_LIMIT,
        resident_id=resident.id,
        region_codes=[city.code, town.code, village.code],
    )


def seed_catalog(session: Session) -> Product:
    """The condom category with its monthly rule (3) and one product; idempotent. No commit."""
    category = session.scalar(select(Category).where(Category.code == DEMO_CATEGORY))
    if category is None:
        category = Category(code=DEMO_CATEGORY, name="Condoms", unit="piece")
        session.add(category)
        session.flush()
        session.add(
            EntitlementRule(
                category_id=category.id,
                period_kind=PeriodKindColumn.CALENDAR_MONTH,
                units=DEMO_MONTHLY_LIMIT,
                per_visit_cap=DEMO_MONTHLY_LIMIT,
                active=True,
            )
        )
    product = session.scalar(select(Product).where(Product.sku == DEMO_SKU))
    if product is None:
        product = Product(sku=DEMO_SKU, name="Condom, standard", category_id=category.id, units=1)
        session.add(product)
    session.flush()
    return product


def _get_or_add_region(
    session: Session, code: str, name: str, kind: RegionKind, parent: Region | None
) -> Region:
    region = session.scalar(select(Region).where(Region.code == code))
    if region is None:
        region = Region(code=code, name=name, kind=kind, parent_id=parent.id if parent else None)
        session.add(region)
        session.flush()
    return region


def enrol_resident(
    session: Session,
    ctx: Context,
    *,
    name: str,
    sex: str,
    birth_date: dt.date,
    phone: str | None,
    id_number: str,
    region_id: int,
    actor: str = "system",
) -> Resident:
    """Enrol a person; refuses a second enrolment of the same ID number. Does not commit."""
    id_hash = ctx.cipher.id_number_hash(id_number)
    if session.scalar(select(Resident.id).where(Resident.id_number_hash == id_hash)) is not None:
        raise Conflict("this ID number is already enrolled", code="resident_exists")
    resident = Resident(
        region_id=region_id,
        name_enc=ctx.cipher.encrypt("name", name),
        sex_enc=ctx.cipher.encrypt("sex", sex),
        birth_date_enc=ctx.cipher.encrypt_date("birth_date", birth_date),
        phone_enc=ctx.cipher.encrypt("phone", phone) if phone else None,
        id_number_hash=id_hash,
        id_number_last4=normalise_id_number(id_number)[-4:],
        status=ResidentStatus.ACTIVE,
        created_at=ctx.now(),
    )
    session.add(resident)
    try:
        session.flush()
    except IntegrityError:  # enrolled concurrently
        raise Conflict("this ID number is already enrolled", code="resident_exists") from None
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="resident.enrol",
        subject=f"resident:{resident.id}",
    )
    return resident


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


def create_user(
    session: Session, ctx: Context, name: str, role: Role | str, *, region_code: str | None = None
) -> str:
    """Create a staff user and return its bearer token (shown once; only its hash is kept). Commits."""
    role = Role(role)
    region_id = None
    if region_code is not None:
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
    if session.scalar(select(StaffUser.id).where(StaffUser.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists", code="user_exists")
    token = "oc_" + secrets.token_urlsafe(32)
    user = StaffUser(
        name=name,
        role=role,
        region_id=region_id,
        token_hash=token_hash(token),
        active=True,
        created_at=ctx.now(),
    )
    session.add(user)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor="cli",
        action="user.create",
        subject=f"user:{user.id}",
        detail={"role": role.value},
    )
    session.commit()
    return token


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


__all__ = [
    "ApiError",
    "Context",
    "DemoSeed",
    "add_kiosk",
    "authorize",
    "capture",
    "create_user",
    "enrol_resident",
    "issue_card",
    "prepare_demo",
    "seed_demo",
    "void",
]


@dataclass(frozen=True)
class PreparedDemo:
    resident_id: int
    technician_token: str
    limit: int
    category: str
    sku: str
    kiosk_id: str
    slot: int
    seed: DemoSeed


def prepare_demo(
    *,
    database_url: str,
    kiosk_id: str,
    kiosk_public_key: str,
    slot: int = 1,
    stock: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> PreparedDemo:
    """Everything the demo needs at the server, in one call: migrate the schema, seed the demo
    city, register the kiosk with `slot` holding the demo product, create a technician.

    `config` takes the same ONECARD_* settings the server process gets (at least its
    ONECARD_DATA_DIR or ONECARD_FIELD_KEY: residents' fields are encrypted with that key, and the
    server must be able to decrypt them).
    """
    from server.app import context_of, create_app
    from server.db import db
    from server.migrate import upgrade

    settings = {**(config or {}), "ONECARD_DATABASE_URL": database_url}
    app = create_app(settings)
    try:
        upgrade(db.bound(app).engine)
        ctx = context_of(app)
        with db.bound(app).sessionmaker() as session:
            seed = seed_demo(session, ctx)
            add_kiosk(session, ctx, kiosk_id, kiosk_public_key, {slot: seed.product_sku})
            if stock is not None:
                session.execute(
                    update(KioskSlot)
                    .where(KioskSlot.kiosk_id == kiosk_id, KioskSlot.slot == slot)
                    .values(stock=stock)
                )
                session.commit()
            token = create_user(
                session, ctx, f"demo-technician-{secrets.token_hex(4)}", Role.TECHNICIAN
            )
    finally:
        db.dispose(app)
    return PreparedDemo(
        resident_id=seed.resident_id,
        technician_token=token,
        limit=seed.monthly_limit,
        category=seed.category,
        sku=seed.product_sku,
        kiosk_id=kiosk_id,
        slot=slot,
        seed=seed,
    )
