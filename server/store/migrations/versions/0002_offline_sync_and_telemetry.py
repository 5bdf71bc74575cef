"""Offline sync and telemetry: authorizations may come from a kiosk's offline batch (flagged for
review), a tap is used at most once per kiosk, kiosks report events and when they were last seen.

Written without table rebuilds: plain ADD COLUMN and CREATE UNIQUE INDEX work on SQLite too, and
a batch rebuild there would drop the CHECK constraints of the enum columns.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kiosk_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kiosk_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["kiosk_id"], ["kiosks.id"], name=op.f("fk_kiosk_events_kiosk_id_kiosks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kiosk_events")),
    )
    op.create_index("ix_kiosk_events_kiosk_id_at", "kiosk_events", ["kiosk_id", "at"])
    op.add_column(
        "authorizations",
        sa.Column("offline", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("authorizations", sa.Column("flags", sa.String(length=120), nullable=True))
    op.create_index(
        "uq_authorizations_kiosk_id_proof_counter",
        "authorizations",
        ["kiosk_id", "proof_counter"],
        unique=True,
    )
    op.add_column("kiosks", sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("kiosks") as batch_op:
        batch_op.drop_column("last_seen_at")
    op.drop_index("uq_authorizations_kiosk_id_proof_counter", table_name="authorizations")
    with op.batch_alter_table("authorizations") as batch_op:
        batch_op.drop_column("flags")
        batch_op.drop_column("offline")
    op.drop_index("ix_kiosk_events_kiosk_id_at", table_name="kiosk_events")
    op.drop_table("kiosk_events")
