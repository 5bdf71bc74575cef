"""Appointments at stations, one booking per station and start time.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "appointments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.String(length=64), nullable=False),
        sa.Column("programme_id", sa.Integer(), nullable=False),
        sa.Column("resident_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("booked_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"], ["kiosks.id"], name=op.f("fk_appointments_station_id_kiosks")
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["exam_programmes.id"],
            name=op.f("fk_appointments_programme_id_exam_programmes"),
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_appointments_resident_id_residents")
        ),
        sa.ForeignKeyConstraint(
            ["booked_by"], ["staff_users.id"], name=op.f("fk_appointments_booked_by_staff_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
    )
    op.create_index(
        "uq_appointments_station_id_starts_at_booked",
        "appointments",
        ["station_id", "starts_at"],
        unique=True,
        sqlite_where=sa.text("status = 'booked'"),
        postgresql_where=sa.text("status = 'booked'"),
    )
    op.create_index("ix_appointments_resident_id", "appointments", ["resident_id"])


def downgrade() -> None:
    op.drop_index("ix_appointments_resident_id", table_name="appointments")
    op.drop_index("uq_appointments_station_id_starts_at_booked", table_name="appointments")
    op.drop_table("appointments")
