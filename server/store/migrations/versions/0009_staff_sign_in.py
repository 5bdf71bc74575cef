"""Staff sign-in (issue 11): passwords, revocable sessions, throttled failures, expiring bearer
tokens; a rule's area; a resident's current residence; stations' opening hours as data.

- staff_users gains password_hash (argon2id, NULL: no password set), must_change_password and
  password_changed_at. Its old token_hash column is no longer read: bearer tokens live in
  staff_tokens (each with an expiry and a revocation), and every existing token is carried over
  there with a year of life from this migration.
- staff_sessions: one row per signed-in browser; the cookie carries a random token whose SHA-256
  is kept here, so ending a row ends that browser's session at once.
- sign_in_throttle: failures per (user, address) and per user, and until when each is locked.
- entitlement_rules.region_id: the area a rule serves (NULL: the whole city).
- residents.current_region_id: where a person lives now (NULL: where they are registered);
  residents.phone_index and name_index: keyed hashes of the normalised phone and name, so staff
  find a person by an exact phone or name without the database holding either in clear
  (filled at enrolment; `onecard server reindex-residents` fills them for earlier residents).
- station_hours: per station and weekday, opening and closing time, slot length and how many
  people one slot takes; replaces the hard-coded 08:00-17:00, 30-minute single slots. Stations
  with appointments get Monday-Friday 08:00-17:00, 30 minutes, 1 person (what they had).
  The one-booking-per-slot index gives way to the capacity check (services.appointments).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CARRIED_TOKEN_DAYS = 365


def upgrade() -> None:
    op.add_column("staff_users", sa.Column("password_hash", sa.String(200), nullable=True))
    op.add_column(
        "staff_users",
        sa.Column(
            "must_change_password", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
    )
    op.add_column(
        "staff_users",
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "staff_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["staff_users.id"], name=op.f("fk_staff_tokens_user_id_staff_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_staff_tokens_token_hash")),
    )
    op.create_index(op.f("ix_staff_tokens_user_id"), "staff_tokens", ["user_id"])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    bind = op.get_bind()
    users = bind.execute(sa.text("SELECT id, token_hash FROM staff_users ORDER BY id")).all()
    op.bulk_insert(
        sa.table(
            "staff_tokens",
            sa.column("user_id", sa.Integer()),
            sa.column("token_hash", sa.String()),
            sa.column("label", sa.String()),
            sa.column("created_at", sa.DateTime(timezone=True)),
            sa.column("expires_at", sa.DateTime(timezone=True)),
        ),
        [
            {
                "user_id": user_id,
                "token_hash": token_hash,
                "label": "carried over",
                "created_at": now,
                "expires_at": now + dt.timedelta(days=CARRIED_TOKEN_DAYS),
            }
            for user_id, token_hash in users
        ],
    )
    op.create_table(
        "staff_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["staff_users.id"], name=op.f("fk_staff_sessions_user_id_staff_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_staff_sessions_token_hash")),
    )
    op.create_index(op.f("ix_staff_sessions_user_id"), "staff_sessions", ["user_id"])
    op.create_table(
        "sign_in_throttle",
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sign_in_throttle")),
    )
    _add_region_reference("entitlement_rules", "region_id")
    _add_region_reference("residents", "current_region_id")
    op.create_index(op.f("ix_residents_current_region_id"), "residents", ["current_region_id"])
    op.add_column("residents", sa.Column("phone_index", sa.LargeBinary(32), nullable=True))
    op.add_column("residents", sa.Column("name_index", sa.LargeBinary(32), nullable=True))
    op.create_index(op.f("ix_residents_phone_index"), "residents", ["phone_index"])
    op.create_index(op.f("ix_residents_name_index"), "residents", ["name_index"])
    op.create_table(
        "station_hours",
        sa.Column("station_id", sa.String(64), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),  # 0 Monday ... 6 Sunday
        sa.Column("opens", sa.Time(), nullable=False),
        sa.Column("closes", sa.Time(), nullable=False),
        sa.Column("slot_minutes", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"], ["kiosks.id"], name=op.f("fk_station_hours_station_id_kiosks")
        ),
        sa.PrimaryKeyConstraint("station_id", "weekday", name=op.f("pk_station_hours")),
    )
    stations = bind.execute(sa.text("SELECT id FROM kiosks WHERE kind = 'station'")).scalars()
    op.bulk_insert(
        sa.table(
            "station_hours",
            sa.column("station_id", sa.String()),
            sa.column("weekday", sa.Integer()),
            sa.column("opens", sa.Time()),
            sa.column("closes", sa.Time()),
            sa.column("slot_minutes", sa.Integer()),
            sa.column("capacity", sa.Integer()),
        ),
        [
            {
                "station_id": station_id,
                "weekday": weekday,
                "opens": dt.time(8, 0),
                "closes": dt.time(17, 0),
                "slot_minutes": 30,
                "capacity": 1,
            }
            for station_id in list(stations)
            for weekday in range(5)
        ],
    )
    op.drop_index("uq_appointments_station_id_starts_at_booked", table_name="appointments")
    op.create_index(
        op.f("ix_appointments_station_id_starts_at"), "appointments", ["station_id", "starts_at"]
    )


def _add_region_reference(table: str, column: str) -> None:
    """A nullable column referring to regions.id. SQLite cannot add a constraint to a table, but
    can add a column that carries one (without rebuilding a table other tables refer to)."""
    name = op.f(f"fk_{table}_{column}_regions")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN {column} INTEGER"
            f" CONSTRAINT {name} REFERENCES regions (id)"
        )
    else:
        op.add_column(table, sa.Column(column, sa.Integer(), nullable=True))
        op.create_foreign_key(name, table, "regions", [column], ["id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_appointments_station_id_starts_at"), table_name="appointments")
    op.create_index(
        "uq_appointments_station_id_starts_at_booked",
        "appointments",
        ["station_id", "starts_at"],
        unique=True,
        sqlite_where=sa.text("status = 'booked'"),
        postgresql_where=sa.text("status = 'booked'"),
    )
    op.drop_table("station_hours")
    op.drop_index(op.f("ix_residents_name_index"), table_name="residents")
    op.drop_index(op.f("ix_residents_phone_index"), table_name="residents")
    op.drop_index(op.f("ix_residents_current_region_id"), table_name="residents")
    with op.batch_alter_table("residents") as batch_op:
        batch_op.drop_column("name_index")
        batch_op.drop_column("phone_index")
        batch_op.drop_column("current_region_id")
    with op.batch_alter_table("entitlement_rules") as batch_op:
        batch_op.drop_column("region_id")
    op.drop_table("sign_in_throttle")
    op.drop_index(op.f("ix_staff_sessions_user_id"), table_name="staff_sessions")
    op.drop_table("staff_sessions")
    op.drop_index(op.f("ix_staff_tokens_user_id"), table_name="staff_tokens")
    op.drop_table("staff_tokens")
    with op.batch_alter_table("staff_users") as batch_op:
        batch_op.drop_column("password_changed_at")
        batch_op.drop_column("must_change_password")
        batch_op.drop_column("password_hash")
