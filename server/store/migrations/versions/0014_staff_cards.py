"""Staff-card sign-in (issue 11): which staff user a staff card belongs to, and the server's
single-use sign-in challenges.

- staff_cards: a staff card's GUID (32 lower-case hex) linked to one staff user
  (`onecard server staff-card assign`); revoked_at set when the card is revoked
  (`onecard server staff-card revoke`, which also puts it on the card revocation list).
- staff_card_challenges: the SHA-256 of each challenge issued (server.services.staff_cards),
  its expiry and when it was used; a challenge is accepted once, before it expires.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "staff_cards",
        sa.Column("guid", sa.String(32), primary_key=True),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("staff_users.id"), nullable=False, index=True
        ),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "staff_card_challenges",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("challenge_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("used_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("staff_card_challenges")
    op.drop_table("staff_cards")
