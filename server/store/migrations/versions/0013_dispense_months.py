"""Dispenses rolled up per kiosk and month (issue 12's report speed).

- dispense_months: captured dispenses and units per kiosk and month of their usage day, added to
  by `onecard server rollup` (server.services.rollup) for every capture settled up to its
  watermark;
- rollup_state: that watermark (the latest settled_at rolled up);
- ix_authorizations_captured_settled_at: the captures settled after the watermark, found
  without reading the table (partial: captured rows only).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispense_months",
        sa.Column("kiosk_id", sa.String(64), sa.ForeignKey("kiosks.id"), primary_key=True),
        sa.Column("month", sa.Date, primary_key=True),
        sa.Column("dispenses", sa.Integer, nullable=False),
        sa.Column("units", sa.Integer, nullable=False),
    )
    op.create_table(
        "rollup_state",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_authorizations_captured_settled_at",
        "authorizations",
        ["settled_at"],
        sqlite_where=sa.text("status = 'captured'"),
        postgresql_where=sa.text("status = 'captured'"),
    )


def downgrade() -> None:
    op.drop_index("ix_authorizations_captured_settled_at", table_name="authorizations")
    op.drop_table("rollup_state")
    op.drop_table("dispense_months")
