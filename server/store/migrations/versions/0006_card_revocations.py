"""The revocation list's journal: one numbered row per card kiosks must refuse.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "card_revocations",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("card_guid", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_card_revocations")),
        sa.UniqueConstraint("card_guid", name=op.f("uq_card_revocations_card_guid")),
    )


def downgrade() -> None:
    op.drop_table("card_revocations")
