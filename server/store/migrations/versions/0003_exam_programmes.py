"""Exam programmes and exam records; devices are kiosks or stations.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "kiosks", sa.Column("kind", sa.String(length=10), server_default="kiosk", nullable=False)
    )
    op.create_table(
        "exam_programmes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sexes", sa.String(length=10), nullable=True),
        sa.Column("min_age", sa.Integer(), nullable=True),
        sa.Column("max_age", sa.Integer(), nullable=True),
        sa.Column("interval_days", sa.Integer(), nullable=True),
        sa.Column("once", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exam_programmes")),
        sa.UniqueConstraint("code", name=op.f("uq_exam_programmes_code")),
    )
    op.create_table(
        "exam_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("programme_id", sa.Integer(), nullable=False),
        sa.Column("resident_id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.String(length=64), nullable=False),
        sa.Column("given_on", sa.Date(), nullable=False),
        sa.Column("staff", sa.String(length=120), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["exam_programmes.id"],
            name=op.f("fk_exam_records_programme_id_exam_programmes"),
        ),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_exam_records_resident_id_residents")
        ),
        sa.ForeignKeyConstraint(
            ["station_id"], ["kiosks.id"], name=op.f("fk_exam_records_station_id_kiosks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exam_records")),
    )
    op.create_index(
        "ix_exam_records_resident_id_programme_id", "exam_records", ["resident_id", "programme_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_exam_records_resident_id_programme_id", table_name="exam_records")
    op.drop_table("exam_records")
    op.drop_table("exam_programmes")
    with op.batch_alter_table("kiosks") as batch_op:
        batch_op.drop_column("kind")
