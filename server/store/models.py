"""The server's persistent model: typed SQLAlchemy 2 declarative classes, no I/O of their own.

The schema is built by the Alembic migrations in server/store/migrations (also in the tests); these
classes must match them, and tests/test_server_migrations.py checks that they do.

Design notes:
- Usage is counted per *person* (resident), per category, per day: a replacement card does not
  reset an allowance, and any period kind (calendar month, rolling N days, calendar year) is a sum
  over day rows. Authorize holds a row lock on the resident (PostgreSQL) or the database write lock
  (SQLite `BEGIN IMMEDIATE`) while it reads and increments them.
- Authorizations are never deleted; their status only moves reserved -> captured | voided.
- The audit log is append-only (database triggers refuse UPDATE and DELETE) and hash-chained.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    Time,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RegionKind(enum.StrEnum):
    CITY = "city"
    TOWN = "town"
    SUBDISTRICT = "subdistrict"
    VILLAGE = "village"
    COMMUNITY = "community"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    REPLACED = "replaced"


class ResidentStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    LEFT = "left"


class PeriodKindColumn(enum.StrEnum):
    CALENDAR_MONTH = "calendar_month"
    ROLLING_DAYS = "rolling_days"
    CALENDAR_YEAR = "calendar_year"


class AuthorizationStatus(enum.StrEnum):
    RESERVED = "reserved"
    CAPTURED = "captured"
    VOIDED = "voided"


class Role(enum.StrEnum):
    ADMINISTRATOR = "administrator"
    TECHNICIAN = "technician"
    STATION_STAFF = "station_staff"
    AUDITOR = "auditor"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, and readable in SQL.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


class Region(Base):
    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), index=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[RegionKind] = mapped_column(_enum(RegionKind, "region_kind"))

    parent: Mapped[Region | None] = relationship(remote_side=[id])


class Resident(Base):
    __tablename__ = "residents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"), index=True)
    # AES-256-GCM ciphertexts (server.store.fieldcrypto); the plaintext never reaches the database.
    name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    sex_enc: Mapped[bytes] = mapped_column(LargeBinary)
    birth_date_enc: Mapped[bytes] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    # HMAC-SHA256 of the normalised ID number: refuses duplicate enrolment, reveals nothing.
    id_number_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    id_number_last4: Mapped[str] = mapped_column(String(4))
    # Where the person lives now, when not where registered (services follow it); NULL: same.
    current_region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), index=True)
    # Keyed hashes (FieldCipher.blind_index) of the normalised phone and name: exact search.
    phone_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    name_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    # Keyed hashes for finding by a masked ID number (migration 0016): the first six and last
    # four characters (FieldCipher.id_prefix_index; NULL until the full number is next seen, for
    # residents enrolled before), and the date of birth with the last four (id_birth_index).
    id_prefix_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    id_birth_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    status: Mapped[ResidentStatus] = mapped_column(
        _enum(ResidentStatus, "resident_status"), default=ResidentStatus.ACTIVE
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Card(Base):
    __tablename__ = "cards"
    __table_args__ = (
        # The cards that left `active` (revoked or replaced): the revocation list's journal is
        # brought up to date from them on every configuration and heartbeat, without a scan of
        # every card in the city.
        Index(
            "ix_cards_not_active",
            "guid",
            postgresql_where=text("status <> 'active'"),
            sqlite_where=text("status <> 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guid: Mapped[str] = mapped_column(String(32), unique=True)  # 32 lower-case hex
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"), index=True)
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # DER, recorded at issuance
    not_after: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[CardStatus] = mapped_column(_enum(CardStatus, "card_status"))
    issued_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    issued_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    status_changed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    resident: Mapped[Resident] = relationship()


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(40), default="piece")


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"), index=True)
    # How many of the category's units one item counts for (a box of 3 counts as 3, say).
    units: Mapped[int] = mapped_column(Integer, default=1)

    category: Mapped[Category] = relationship()


class EntitlementRule(Base):
    """Units of one category per period, with eligibility; evaluated by server.domain.rules."""

    __tablename__ = "entitlement_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"), index=True)
    period_kind: Mapped[PeriodKindColumn] = mapped_column(_enum(PeriodKindColumn, "period_kind"))
    period_days: Mapped[int | None] = mapped_column(Integer)  # for rolling_days only
    units: Mapped[int] = mapped_column(Integer)
    per_visit_cap: Mapped[int | None] = mapped_column(Integer)
    min_age: Mapped[int | None] = mapped_column(Integer)
    max_age: Mapped[int | None] = mapped_column(Integer)
    sexes: Mapped[str | None] = mapped_column(String(10))  # e.g. "F" or "FM"; NULL = any
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The area the rule serves (taps at the kiosks in its subtree); NULL: the whole city.
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"))

    category: Mapped[Category] = relationship()


class Kiosk(Base):
    __tablename__ = "kiosks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))  # base64 of the raw Ed25519 key
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_counter: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # "kiosk" (dispenses) or "station" (a service station's desk: exam eligibility and records).
    # Both sign their requests and make card proofs the same way.
    kind: Mapped[str] = mapped_column(String(10), default="kiosk", server_default="kiosk")
    # Where it stands (WGS 84), for the fleet map; NULL: not surveyed yet.
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)


class KioskSlot(Base):
    __tablename__ = "kiosk_slots"

    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    stock: Mapped[int | None] = mapped_column(Integer)
    minimum: Mapped[int | None] = mapped_column(Integer)  # restock at or under this
    capacity: Mapped[int | None] = mapped_column(Integer)  # what the slot holds when full

    product: Mapped[Product] = relationship()


class Authorization(Base):
    __tablename__ = "authorizations"
    __table_args__ = (
        Index("ix_authorizations_status_created_at", "status", "created_at"),
        Index("ix_authorizations_resident_id_created_at", "resident_id", "created_at"),
        # A tap (kiosk, counter) is used at most once, online or offline.
        Index("uq_authorizations_kiosk_id_proof_counter", "kiosk_id", "proof_counter", unique=True),
        # The captures not yet rolled up into dispense_months (server.services.rollup).
        Index(
            "ix_authorizations_captured_settled_at",
            "settled_at",
            sqlite_where=text("status = 'captured'"),
            postgresql_where=text("status = 'captured'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), index=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"))
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    slot: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)  # items
    units: Mapped[int] = mapped_column(Integer)  # category units charged: quantity * product.units
    usage_day: Mapped[dt.date] = mapped_column(Date)
    proof_counter: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[AuthorizationStatus] = mapped_column(
        _enum(AuthorizationStatus, "authorization_status")
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    settled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    board_txn: Mapped[int | None] = mapped_column(BigInteger)
    void_reason: Mapped[str | None] = mapped_column(String(64))
    # Applied from a kiosk's offline batch (the kiosk approved it alone, within its caps).
    offline: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Comma-separated flags for review: overdraft, stale, card_revoked (offline only).
    flags: Mapped[str | None] = mapped_column(String(120))


class Usage(Base):
    """Units reserved and captured by one person in one category on one (local) day."""

    __tablename__ = "usage"

    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"), primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    captured: Mapped[int] = mapped_column(Integer, default=0)


class SeenNonce(Base):
    __tablename__ = "seen_nonces"

    kiosk_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class IdempotencyRecord(Base):
    """The first answer to a request with this key, replayed to every retry."""

    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)  # "kiosk:K-0001"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "staff_role"))
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"))  # scope; NULL = all
    # Legacy: bearer tokens are in staff_tokens since migration 0009 (this holds a hash of a
    # secret nobody has, or of a token carried over there).
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    password_hash: Mapped[str | None] = mapped_column(String(200))  # argon2id; NULL: none set
    must_change_password: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(120))  # "user:3", "kiosk:K-0001", "cli"
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(120))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class KioskEvent(Base):
    """Telemetry a kiosk reported: heartbeat, stock, fault, door, temperature, power-up, ..."""

    __tablename__ = "kiosk_events"
    __table_args__ = (
        Index("ix_kiosk_events_kiosk_id_at", "kiosk_id", "at"),
        Index("ix_kiosk_events_at", "at"),  # retention prunes by age
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)  # JSON


class StockEvent(Base):
    """A technician's refill or test dispense at a kiosk, as its staff card proved it
    (server.services.stock; append-only)."""

    __tablename__ = "stock_events"
    __table_args__ = (Index("ix_stock_events_kiosk_id_at", "kiosk_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    slot: Mapped[int] = mapped_column(Integer)
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"))
    kind: Mapped[str] = mapped_column(String(32))  # refill | test_dispense
    count_before: Mapped[int | None] = mapped_column(Integer)
    count_after: Mapped[int | None] = mapped_column(Integer)
    staff_card_guid: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # the staff card's tap
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ExamProgramme(Base):
    """A free exam programme, as data: who it serves and how often (server.domain.exams evaluates it)."""

    __tablename__ = "exam_programmes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    sexes: Mapped[str | None] = mapped_column(String(10))  # NULL: anyone
    min_age: Mapped[int | None] = mapped_column(Integer)
    max_age: Mapped[int | None] = mapped_column(Integer)
    interval_days: Mapped[int | None] = mapped_column(Integer)  # NULL with once: never again
    once: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # For couples planning a pregnancy: both partners, and "once" counts from the plan's start.
    requires_plan: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ExamRecord(Base):
    """That an exam was given: programme, station, date, staff. Never its results."""

    __tablename__ = "exam_records"
    __table_args__ = (
        Index("ix_exam_records_resident_id_programme_id", "resident_id", "programme_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    programme_id: Mapped[int] = mapped_column(ForeignKey("exam_programmes.id"))
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    station_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    given_on: Mapped[dt.date] = mapped_column(Date)
    staff: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Appointment(Base):
    """A booked slot at a station for an exam programme. A slot takes as many bookings as the
    station's hours say (StationHours.capacity), counted under the station's row lock
    (server.services.appointments)."""

    __tablename__ = "appointments"
    __table_args__ = (
        Index("ix_appointments_station_id_starts_at", "station_id", "starts_at"),
        Index("ix_appointments_resident_id", "resident_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    programme_id: Mapped[int] = mapped_column(ForeignKey("exam_programmes.id"))
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    starts_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(10))  # booked | cancelled
    booked_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Couple(Base):
    """Two residents served together (programmes for couples planning a pregnancy)."""

    __tablename__ = "couples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    partner_a_id: Mapped[int] = mapped_column(ForeignKey("residents.id"), index=True)
    partner_b_id: Mapped[int] = mapped_column(ForeignKey("residents.id"), index=True)
    planning_since: Mapped[dt.date | None] = mapped_column(Date)  # a pregnancy plan, if any
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class CardRevocation(Base):
    """The revocation list as a journal: `seq` numbers the list's versions, so a kiosk fetches
    only what was added since the version it holds (server.services.provisioning)."""

    __tablename__ = "card_revocations"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    card_guid: Mapped[str] = mapped_column(String(32), unique=True)
    reason: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class StaffToken(Base):
    """A bearer token for scripts and the command line: only its SHA-256 is kept; it expires
    and can be revoked (server.services.staff_auth)."""

    __tablename__ = "staff_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class StaffSession(Base):
    """A signed-in browser. The cookie carries a random token; this row holds its SHA-256, so
    the server ends a session by setting `ended_at` (sign-out, idle, disabled, new password)."""

    __tablename__ = "staff_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    method: Mapped[str] = mapped_column(String(16))  # password | card
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(32))


class SignInThrottle(Base):
    """Failed sign-ins counted per key ("pair:<user>|<address>", "user:<user>") and until when
    the key is locked."""

    __tablename__ = "sign_in_throttle"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class StationHours(Base):
    """When a station takes appointments on a weekday (0 Monday ... 6 Sunday), how long a slot
    is and how many people one slot takes. No row for a weekday: closed that day."""

    __tablename__ = "station_hours"

    station_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), primary_key=True)
    weekday: Mapped[int] = mapped_column(Integer, primary_key=True)
    opens: Mapped[dt.time] = mapped_column(Time)
    closes: Mapped[dt.time] = mapped_column(Time)
    slot_minutes: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)


# --- fleet state and alerts (issue 12; server.services.fleet and server.services.alerts) ---------


class KioskStatus(Base):
    """The latest state a kiosk's heartbeat reported: one row per kiosk."""

    __tablename__ = "kiosk_status"

    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), primary_key=True)
    door_open: Mapped[bool | None] = mapped_column(Boolean)
    door_open_since: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    temperature_c: Mapped[float | None] = mapped_column(Float)
    faults: Mapped[str] = mapped_column(Text, server_default="[]")  # JSON list of codes
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class AlertRuleRow(Base):
    """An alert rule as data (server.domain.alerts.AlertRule); one per kind."""

    __tablename__ = "alert_rules"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    low: Mapped[float | None] = mapped_column(Float)
    high: Mapped[float | None] = mapped_column(Float)
    quiet_minutes: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)


class AlertContact(Base):
    """How a staff member is told of alerts: e-mail, and a phone for the city's SMS gateway."""

    __tablename__ = "alert_contacts"

    staff_user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))


class KioskResponsible(Base):
    __tablename__ = "kiosk_responsibles"

    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), primary_key=True)
    staff_user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), primary_key=True)


class Alert(Base):
    """One alert from opening until it clears (or someone resolves it); figures only."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "uq_alerts_kiosk_id_kind_subject_open",
            "kiosk_id",
            "kind",
            "subject",
            unique=True,
            sqlite_where=text("cleared_at IS NULL"),
            postgresql_where=text("cleared_at IS NULL"),
        ),
        Index("ix_alerts_opened_at", "opened_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"))
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)  # JSON figures
    opened_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    cleared_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))


class AlertDelivery(Base):
    """One message of an alert to one recipient on one channel (email, webhook)."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "channel", "recipient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"))
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(254))
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(String(300))


class Dhis2MappingRow(Base):
    """The administrator's DHIS2 mapping (server.domain.dhis2.Dhis2Mapping as JSON); one row."""

    __tablename__ = "dhis2_mapping"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mapping: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))


class DispenseMonth(Base):
    """Captured dispenses per kiosk and month of their usage day (server.services.rollup)."""

    __tablename__ = "dispense_months"

    kiosk_id: Mapped[str] = mapped_column(ForeignKey("kiosks.id"), primary_key=True)
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)  # the 1st of the month
    dispenses: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(Integer)


class RollupState(Base):
    """How far a rollup has read: the latest settled_at it added."""

    __tablename__ = "rollup_state"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    watermark: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class StaffCard(Base):
    """A staff card (by GUID) linked to the staff user who signs in with it
    (server.services.staff_cards)."""

    __tablename__ = "staff_cards"

    guid: Mapped[str] = mapped_column(String(32), primary_key=True)  # 32 lower-case hex
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), index=True)
    assigned_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The certificate's validity, once the server has seen the certificate (linked by it, or a
    # sign-in): migration 0015.
    issued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_reason: Mapped[str | None] = mapped_column(String(32))


class StaffCardChallenge(Base):
    """A staff-card sign-in challenge the server issued: its SHA-256, expiry, and use (once)."""

    __tablename__ = "staff_card_challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    challenge_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
