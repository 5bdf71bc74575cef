"""A partial index of the cards that left `active`, for the revocation journal's catch-up.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_ACTIVE = sa.text("status <> 'active'")


def upgrade() -> None:
    op.create_index(
        "ix_cards_not_active",
        "cards",
        ["guid"],
        postgresql_where=NOT_ACTIVE,
        sqlite_where=NOT_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_cards_not_active", table_name="cards")
