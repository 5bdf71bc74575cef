"""The kiosk hot path's reads and writes, one implementation per database.

`server.services` keeps every decision of an authorization or a settlement (request signature,
card proof, rules); a Ledger does its data access, in as few round trips as the database allows:

- `PgLedger` (PostgreSQL): each step is one call of a server-side function (migration 0007) on
  the session's own psycopg connection, as a prepared statement. That skips SQLAlchemy's
  per-statement machinery (about half the client cost of a small statement) and round trips: an
  authorization plus its capture is 12 round trips, BEGIN and COMMIT included, instead of 21.
- `CoreLedger` (SQLite): the same steps as SQLAlchemy Core statements. SQLite runs in-process, so a
  statement costs no round trip and there is nothing to gain from functions (it has none).

Both run inside the session's transaction and never commit, except `commit_answer`, which ends
the request's transaction (it is the last step of run_idempotent). PostgreSQL's test suite runs
the PgLedger, SQLite's the CoreLedger, so both are checked by the same tests.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import psycopg
from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.store.models import (
    Authorization,
    AuthorizationStatus,
    Card,
    CardStatus,
    Category,
    IdempotencyRecord,
    Kiosk,
    KioskSlot,
    Product,
    Resident,
    ResidentStatus,
    SeenNonce,
    Usage,
)

# What a duplicate key raises, through SQLAlchemy (CoreLedger) or straight from psycopg (PgLedger).
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (IntegrityError, psycopg.IntegrityError)

# Units used per category and day: {"condom": {date: 3}}, as server.domain.rules takes it.
UsageByCategory = dict[str, dict[dt.date, int]]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A registered kiosk or station, and whether this request's nonce was new (then it is now
    spent, in the open transaction: roll back if the request turns out not to be genuine)."""

    id: str
    enabled: bool
    public_key: str
    kind: str
    nonce_fresh: bool


@dataclass(frozen=True, slots=True)
class SlotProduct:
    id: int
    sku: str
    name: str
    units: int
    category_id: int
    category: str


@dataclass(frozen=True, slots=True)
class CardRow:
    id: int
    resident_id: int
    status: CardStatus
    certificate: bytes


@dataclass(frozen=True, slots=True)
class TapContext:
    product: SlotProduct | None  # None: the slot holds nothing
    card: CardRow | None  # None: no card with this GUID


@dataclass(frozen=True, slots=True)
class Hold:
    """The person, locked for this transaction, and their usage since the rules' lookback."""

    birth_date_enc: bytes
    sex_enc: bytes
    status: ResidentStatus
    usage: UsageByCategory


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    kiosk_id: str
    card_id: int
    resident_id: int
    product_id: int
    category_id: int
    slot: int
    quantity: int
    units: int
    usage_day: dt.date
    proof_counter: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OfflineRecord:
    """A tap a kiosk served offline, recorded already settled: captured when the item dropped
    (its units charged to the day it was tapped), voided otherwise."""

    reservation: Reservation
    dispensed: bool
    settled_at: dt.datetime
    board_txn: int | None
    void_reason: str | None
    flags: str | None


@dataclass(frozen=True, slots=True)
class Settlement:
    """An authorization after a capture or void: its status, whether this call moved it, whose
    it is, and (when it is the calling kiosk's) the person's usage since the lookback."""

    status: AuthorizationStatus
    moved: bool
    kiosk_id: str
    resident_id: int
    usage: UsageByCategory


@dataclass(frozen=True, slots=True)
class Answer:
    """An idempotency record: the first answer to (scope, key)."""

    scope: str
    key: str
    request_hash: str
    status_code: int
    response_body: str
    created_at: dt.datetime


class Ledger(Protocol):
    """The only writer of authorizations: reserve, settle and record_offline."""

    def device(self, device_id: str, nonce: str, seen_at: dt.datetime) -> DeviceRow | None:
        """The device, with its nonce spent if the device is enabled; None if unknown."""

    def tap_context(self, kiosk_id: str, slot: int, guid: str) -> TapContext: ...

    def hold(self, kiosk_id: str, counter: int, resident_id: int, since: dt.date) -> Hold | None:
        """Advance the kiosk's counter to `counter`, then lock the person and read their usage;
        None (and nothing done) when the counter does not grow: the tap was used before."""

    def reserve(self, reservation: Reservation) -> None:
        """Record the reservation and add its units to the day's usage (the person is held)."""

    def settle(
        self,
        authorization_id: str,
        kiosk_id: str,
        to: AuthorizationStatus,
        at: dt.datetime,
        board_txn: int | None,
        reason: str | None,
        since: dt.date,
    ) -> Settlement | None:
        """Move a reserved authorization of this kiosk to `to` once (a conditional UPDATE), shift
        its units between reserved and captured, take stock on capture; None if no such id."""

    def commit_answer(self, answer: Answer) -> None:
        """Store the answer and commit the transaction; INTEGRITY_ERRORS on a duplicate key."""

    def cards(self, guids: Iterable[str]) -> dict[str, CardRow]:
        """The registered cards among `guids`, by GUID."""

    def advance_counter(self, device_id: str, counter: int) -> bool:
        """Raise the device's tap counter to `counter`; False when it does not grow."""

    def offline_authorization(self, kiosk_id: str, counter: int) -> str | None:
        """The id of the authorization already recorded for this tap, if any."""

    def record_offline(self, record: OfflineRecord) -> None:
        """Record an offline tap, settled; a captured one's units are added to the day's usage
        (the person must be held)."""


def ledger_for(session: Session) -> Ledger:
    """The session's ledger (one per session: the PgLedger keeps the session's psycopg
    connection until the session ends its transaction)."""
    found: Ledger | None = session.info.get("onecard_ledger")
    if found is None:
        if session.get_bind().dialect.name == "postgresql":
            found = PgLedger(session)
        else:
            found = CoreLedger(session)
        session.info["onecard_ledger"] = found
    return found


def core_connection(session: Session) -> Connection:
    """The session's connection, for Core statements on the hot path: it skips the ORM's
    per-statement machinery (a third of the cost of a small statement). Pending ORM changes are
    flushed first, as session.execute would."""
    if session.new or session.dirty or session.deleted:
        session.flush()
    return session.connection()


def _usage_from_rows(rows: Iterable[tuple[str, dt.date, int]]) -> UsageByCategory:
    usage: dict[str, dict[dt.date, int]] = defaultdict(dict)
    for code, day, units in rows:
        if units:
            usage[code][day] = int(units)
    return dict(usage)


# --- Core statements (also used by server.services beyond the hot path) ------------------------


def table_of(model: type[Any]) -> Table:
    """A mapped class's table, for Core statements (typed: `__table__` is a FromClause)."""
    return cast(Table, model.__table__)


_KIOSKS = table_of(Kiosk).c
_DEVICE_BY_ID = select(_KIOSKS.id, _KIOSKS.enabled, _KIOSKS.public_key, _KIOSKS.kind).where(
    _KIOSKS.id == bindparam("b_device")
)
_SPEND_NONCE = sqlite_insert(table_of(SeenNonce)).on_conflict_do_nothing()
_CARDS = table_of(Card).c
CARD_BY_GUID = select(_CARDS.id, _CARDS.resident_id, _CARDS.status, _CARDS.certificate).where(
    _CARDS.guid == bindparam("b_guid")
)
ADVANCE_COUNTER = (
    update(table_of(Kiosk))
    .where(_KIOSKS.id == bindparam("b_device"), _KIOSKS.last_counter < bindparam("b_counter"))
    .values(last_counter=bindparam("b_counter"))
)
_SLOTS = table_of(KioskSlot).c
_PRODUCTS = table_of(Product).c
_CATEGORIES = table_of(Category).c
_SLOT_PRODUCT = (
    select(
        _PRODUCTS.id,
        _PRODUCTS.sku,
        _PRODUCTS.name,
        _PRODUCTS.units,
        _PRODUCTS.category_id,
        _CATEGORIES.code,
    )
    .select_from(table_of(KioskSlot))
    .join(table_of(Product), _PRODUCTS.id == _SLOTS.product_id)
    .join(table_of(Category), _CATEGORIES.id == _PRODUCTS.category_id)
    .where(_SLOTS.kiosk_id == bindparam("b_kiosk"), _SLOTS.slot == bindparam("b_slot"))
)
_RESIDENTS = table_of(Resident).c
# SQLite ignores FOR UPDATE: it holds the database write lock since BEGIN IMMEDIATE instead.
_LOCK_HOLDER = (
    select(_RESIDENTS.birth_date_enc, _RESIDENTS.sex_enc, _RESIDENTS.status)
    .where(_RESIDENTS.id == bindparam("b_resident"))
    .with_for_update()
)
_USAGE = table_of(Usage)
_USAGE_SINCE = (
    select(_CATEGORIES.code, _USAGE.c.day, _USAGE.c.reserved + _USAGE.c.captured)
    .join(table_of(Category), _USAGE.c.category_id == _CATEGORIES.id)
    .where(_USAGE.c.resident_id == bindparam("b_resident"), _USAGE.c.day >= bindparam("b_since"))
)
_BUMP_USAGE = (
    update(_USAGE)
    .where(
        _USAGE.c.resident_id == bindparam("b_resident"),
        _USAGE.c.category_id == bindparam("b_category"),
        _USAGE.c.day == bindparam("b_day"),
    )
    .values(
        reserved=_USAGE.c.reserved + bindparam("b_reserved"),
        captured=_USAGE.c.captured + bindparam("b_captured"),
    )
)
_INSERT_USAGE = insert(_USAGE)
_INSERT_AUTHORIZATION = insert(table_of(Authorization))
_AUTHORIZATIONS = table_of(Authorization).c


def _settle_statement(to: AuthorizationStatus, **values: Any) -> Any:
    return (
        update(table_of(Authorization))
        .where(
            _AUTHORIZATIONS.id == bindparam("b_id"),
            _AUTHORIZATIONS.kiosk_id == bindparam("b_kiosk"),
            _AUTHORIZATIONS.status == AuthorizationStatus.RESERVED,
        )
        .values(status=to, settled_at=bindparam("b_at"), **values)
        .returning(
            _AUTHORIZATIONS.resident_id,
            _AUTHORIZATIONS.category_id,
            _AUTHORIZATIONS.usage_day,
            _AUTHORIZATIONS.units,
            _AUTHORIZATIONS.slot,
            _AUTHORIZATIONS.quantity,
        )
    )


_SETTLE_TO = {
    AuthorizationStatus.CAPTURED: _settle_statement(
        AuthorizationStatus.CAPTURED, board_txn=bindparam("b_board_txn")
    ),
    AuthorizationStatus.VOIDED: _settle_statement(
        AuthorizationStatus.VOIDED, void_reason=bindparam("b_reason")
    ),
}
_SETTLED = select(
    _AUTHORIZATIONS.kiosk_id, _AUTHORIZATIONS.status, _AUTHORIZATIONS.resident_id
).where(_AUTHORIZATIONS.id == bindparam("b_id"))
_TAKE_STOCK = (
    update(table_of(KioskSlot))
    .where(
        _SLOTS.kiosk_id == bindparam("b_kiosk"),
        _SLOTS.slot == bindparam("b_slot"),
        _SLOTS.stock >= bindparam("b_quantity"),
    )
    .values(stock=_SLOTS.stock - bindparam("b_quantity"))
)
_INSERT_ANSWER = insert(table_of(IdempotencyRecord))


def authorization_values(
    reservation: Reservation, status: AuthorizationStatus, **settled: Any
) -> dict[str, Any]:
    """The row of a new authorization (`settled`: the columns of one recorded settled)."""
    return {
        "id": reservation.id,
        "kiosk_id": reservation.kiosk_id,
        "card_id": reservation.card_id,
        "resident_id": reservation.resident_id,
        "product_id": reservation.product_id,
        "category_id": reservation.category_id,
        "slot": reservation.slot,
        "quantity": reservation.quantity,
        "units": reservation.units,
        "usage_day": reservation.usage_day,
        "proof_counter": reservation.proof_counter,
        "status": status,
        "created_at": reservation.created_at,
        **settled,
    }


def read_usage(connection: Connection, resident_id: int, since: dt.date) -> UsageByCategory:
    rows = connection.execute(_USAGE_SINCE, {"b_resident": resident_id, "b_since": since})
    return _usage_from_rows(rows)  # type: ignore[arg-type]


def add_usage(
    connection: Connection,
    resident_id: int,
    category_id: int,
    day: dt.date,
    *,
    reserved: int,
    captured: int = 0,
) -> None:
    """Add to a person's usage row for one category and day (the person must be held)."""
    key = {"b_resident": resident_id, "b_category": category_id, "b_day": day}
    bumped = connection.execute(
        _BUMP_USAGE, {**key, "b_reserved": reserved, "b_captured": captured}
    )
    if bumped.rowcount == 0:
        # Safe without ON CONFLICT: the resident row lock (or SQLite's write lock) is held.
        connection.execute(
            _INSERT_USAGE,
            {
                "resident_id": resident_id,
                "category_id": category_id,
                "day": day,
                "reserved": reserved,
                "captured": captured,
            },
        )


_CARDS_BY_GUID = select(
    _CARDS.guid, _CARDS.id, _CARDS.resident_id, _CARDS.status, _CARDS.certificate
).where(_CARDS.guid.in_(bindparam("b_guids", expanding=True)))
_OFFLINE_BY_COUNTER = select(_AUTHORIZATIONS.id).where(
    _AUTHORIZATIONS.kiosk_id == bindparam("b_kiosk"),
    _AUTHORIZATIONS.proof_counter == bindparam("b_counter"),
)


class _Common:
    """What both databases do the same way (no hot path: stations' taps, offline batches)."""

    session: Session

    def cards(self, guids: Iterable[str]) -> dict[str, CardRow]:
        wanted = sorted(set(guids))
        if not wanted:
            return {}
        rows = core_connection(self.session).execute(_CARDS_BY_GUID, {"b_guids": wanted})
        return {row.guid: CardRow(row.id, row.resident_id, row.status, row.certificate) for row in rows}

    def advance_counter(self, device_id: str, counter: int) -> bool:
        advanced = core_connection(self.session).execute(
            ADVANCE_COUNTER, {"b_device": device_id, "b_counter": counter}
        )
        return advanced.rowcount == 1

    def offline_authorization(self, kiosk_id: str, counter: int) -> str | None:
        return core_connection(self.session).scalar(  # type: ignore[no-any-return]
            _OFFLINE_BY_COUNTER, {"b_kiosk": kiosk_id, "b_counter": counter}
        )

    def record_offline(self, record: OfflineRecord) -> None:
        connection = core_connection(self.session)
        r = record.reservation
        status = AuthorizationStatus.CAPTURED if record.dispensed else AuthorizationStatus.VOIDED
        connection.execute(
            _INSERT_AUTHORIZATION,
            authorization_values(
                r,
                status,
                settled_at=record.settled_at,
                board_txn=record.board_txn,
                void_reason=record.void_reason,
                offline=True,
                flags=record.flags,
            ),
        )
        if record.dispensed:
            add_usage(connection, r.resident_id, r.category_id, r.usage_day, reserved=0, captured=r.units)


class CoreLedger(_Common):
    """The hot path as SQLAlchemy Core statements (SQLite)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def device(self, device_id: str, nonce: str, seen_at: dt.datetime) -> DeviceRow | None:
        connection = core_connection(self.session)
        row = connection.execute(_DEVICE_BY_ID, {"b_device": device_id}).first()
        if row is None:
            return None
        fresh = False
        if row.enabled:
            spent = connection.execute(
                _SPEND_NONCE, {"kiosk_id": device_id, "nonce": nonce, "seen_at": seen_at}
            )
            fresh = spent.rowcount == 1
        return DeviceRow(row.id, row.enabled, row.public_key, row.kind, fresh)

    def tap_context(self, kiosk_id: str, slot: int, guid: str) -> TapContext:
        connection = core_connection(self.session)
        product = connection.execute(_SLOT_PRODUCT, {"b_kiosk": kiosk_id, "b_slot": slot}).first()
        card = connection.execute(CARD_BY_GUID, {"b_guid": guid}).first()
        return TapContext(
            SlotProduct(*product) if product is not None else None,
            CardRow(card.id, card.resident_id, card.status, card.certificate)
            if card is not None
            else None,
        )

    def hold(self, kiosk_id: str, counter: int, resident_id: int, since: dt.date) -> Hold | None:
        connection = core_connection(self.session)
        advanced = connection.execute(ADVANCE_COUNTER, {"b_device": kiosk_id, "b_counter": counter})
        if advanced.rowcount != 1:
            return None
        person = connection.execute(_LOCK_HOLDER, {"b_resident": resident_id}).one()
        return Hold(
            person.birth_date_enc,
            person.sex_enc,
            person.status,
            read_usage(connection, resident_id, since),
        )

    def reserve(self, reservation: Reservation) -> None:
        connection = core_connection(self.session)
        connection.execute(
            _INSERT_AUTHORIZATION, authorization_values(reservation, AuthorizationStatus.RESERVED)
        )
        add_usage(
            connection,
            reservation.resident_id,
            reservation.category_id,
            reservation.usage_day,
            reserved=reservation.units,
        )

    def settle(
        self,
        authorization_id: str,
        kiosk_id: str,
        to: AuthorizationStatus,
        at: dt.datetime,
        board_txn: int | None,
        reason: str | None,
        since: dt.date,
    ) -> Settlement | None:
        connection = core_connection(self.session)
        moved = connection.execute(
            _SETTLE_TO[to],
            {
                "b_id": authorization_id,
                "b_kiosk": kiosk_id,
                "b_at": at,
                "b_board_txn": board_txn,
                "b_reason": reason,
            },
        ).first()
        if moved is not None:
            captured = moved.units if to is AuthorizationStatus.CAPTURED else 0
            connection.execute(
                _BUMP_USAGE,
                {
                    "b_resident": moved.resident_id,
                    "b_category": moved.category_id,
                    "b_day": moved.usage_day,
                    "b_reserved": -moved.units,
                    "b_captured": captured,
                },
            )
            if to is AuthorizationStatus.CAPTURED:
                # The slot's stock as the server knows it (telemetry resets it to the board's).
                connection.execute(
                    _TAKE_STOCK,
                    {"b_kiosk": kiosk_id, "b_slot": moved.slot, "b_quantity": moved.quantity},
                )
            status, owner, resident_id = to, kiosk_id, moved.resident_id
        else:
            current = connection.execute(_SETTLED, {"b_id": authorization_id}).first()
            if current is None:
                return None
            status, owner, resident_id = current.status, current.kiosk_id, current.resident_id
        usage = read_usage(connection, resident_id, since) if owner == kiosk_id else {}
        return Settlement(status, moved is not None, owner, resident_id, usage)

    def commit_answer(self, answer: Answer) -> None:
        core_connection(self.session).execute(
            _INSERT_ANSWER,
            {
                "scope": answer.scope,
                "key": answer.key,
                "request_hash": answer.request_hash,
                "status_code": answer.status_code,
                "response_body": answer.response_body,
                "created_at": answer.created_at,
            },
        )
        self.session.commit()


# --- PostgreSQL: the functions of migration 0007 --------------------------------------------------

_PG_DEVICE = "SELECT * FROM onecard_device_request(%s, %s, %s)"
_PG_TAP_CONTEXT = "SELECT * FROM onecard_tap_context(%s, %s, %s)"
_PG_HOLD = "SELECT * FROM onecard_hold(%s, %s, %s, %s)"
_PG_RESERVE = "SELECT onecard_reserve(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_SETTLE = "SELECT * FROM onecard_settle(%s, %s, %s, %s, %s, %s, %s)"
_PG_INSERT_ANSWER = (
    "INSERT INTO idempotency_records"
    " (scope, key, request_hash, status_code, response_body, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)


def _usage_from_arrays(
    categories: list[str] | None, days: list[dt.date] | None, units: list[int] | None
) -> UsageByCategory:
    if not categories:
        return {}
    assert days is not None and units is not None
    return _usage_from_rows(zip(categories, days, units, strict=True))


class PgLedger(_Common):
    """The hot path as one function call per step, on the session's psycopg connection."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._pg: psycopg.Connection[Any] | None = None

    @property
    def pg(self) -> psycopg.Connection[Any]:
        """The psycopg connection under the session's SQLAlchemy connection (same transaction).
        Kept while the session's transaction lasts: a commit or rollback may return the
        connection to the pool, so the next transaction asks the session again."""
        pg = self._pg
        if pg is None or not self.session.in_transaction():
            driver = core_connection(self.session).connection.driver_connection
            pg = self._pg = cast("psycopg.Connection[Any]", driver)
        return pg

    def _one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return self.pg.execute(query, params, prepare=True).fetchone()

    def device(self, device_id: str, nonce: str, seen_at: dt.datetime) -> DeviceRow | None:
        row = self._one(_PG_DEVICE, (device_id, nonce, seen_at))
        if row is None:
            return None
        enabled, public_key, kind, fresh = row
        return DeviceRow(device_id, enabled, public_key, kind, fresh)

    def tap_context(self, kiosk_id: str, slot: int, guid: str) -> TapContext:
        row = self._one(_PG_TAP_CONTEXT, (kiosk_id, slot, guid))
        assert row is not None  # the function always returns one row
        product = SlotProduct(*row[:6]) if row[0] is not None else None
        card = (
            CardRow(row[6], row[7], CardStatus(row[8]), bytes(row[9]))
            if row[6] is not None
            else None
        )
        return TapContext(product, card)

    def hold(self, kiosk_id: str, counter: int, resident_id: int, since: dt.date) -> Hold | None:
        row = self._one(_PG_HOLD, (kiosk_id, counter, resident_id, since))
        if row is None:
            return None
        birth_date_enc, sex_enc, status, categories, days, units = row
        return Hold(
            bytes(birth_date_enc),
            bytes(sex_enc),
            ResidentStatus(status),
            _usage_from_arrays(categories, days, units),
        )

    def reserve(self, reservation: Reservation) -> None:
        r = reservation
        self.pg.execute(
            _PG_RESERVE,
            (
                r.id,
                r.kiosk_id,
                r.card_id,
                r.resident_id,
                r.product_id,
                r.category_id,
                r.slot,
                r.quantity,
                r.units,
                r.usage_day,
                r.proof_counter,
                r.created_at,
            ),
            prepare=True,
        )

    def settle(
        self,
        authorization_id: str,
        kiosk_id: str,
        to: AuthorizationStatus,
        at: dt.datetime,
        board_txn: int | None,
        reason: str | None,
        since: dt.date,
    ) -> Settlement | None:
        row = self._one(
            _PG_SETTLE, (authorization_id, kiosk_id, to.value, at, board_txn, reason, since)
        )
        if row is None:
            return None
        moved, status, owner, resident_id, categories, days, units = row
        return Settlement(
            AuthorizationStatus(status),
            moved,
            owner,
            resident_id,
            _usage_from_arrays(categories, days, units),
        )

    def commit_answer(self, answer: Answer) -> None:
        a = answer
        # Two round trips: psycopg's pipeline mode would save one but costs more CPU than it.
        self.pg.execute(
            _PG_INSERT_ANSWER,
            (a.scope, a.key, a.request_hash, a.status_code, a.response_body, a.created_at),
            prepare=True,
        )
        self.pg.commit()
        # SQLAlchemy's transaction ends too; psycopg's commit() is a no-op when none is open.
        self.session.commit()
