"""Stock events: a technician's refill or test dispense at a kiosk (kiosk maintenance mode).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stock_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kiosk_id", sa.String(64), sa.ForeignKey("kiosks.id"), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("product_id", sa.Integer, sa.ForeignKey("products.id"), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("count_before", sa.Integer, nullable=True),
        sa.Column("count_after", sa.Integer, nullable=True),
        sa.Column("staff_card_guid", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_stock_events_kiosk_id_at", "stock_events", ["kiosk_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_stock_events_kiosk_id_at", table_name="stock_events")
    op.drop_table("stock_events")
