"""What an administrator sees of a staff card (issue 11, the staff-card page): when its
certificate was issued and until when it is valid, and why it was revoked.

- staff_cards.issued_at / expires_at: the validity of the card's certificate, known when the
  card is linked by its certificate (the administrator's page, `staff-card assign
  --certificate`) and refreshed from the verified certificate at each card sign-in; empty for a
  card linked by its GUID alone until it first signs in.
- staff_cards.revoke_reason: lost, stolen, damaged, holder_left, or revoked (the command line's
  default).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("staff_cards") as table:
        table.add_column(sa.Column("issued_at", sa.DateTime(timezone=True)))
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True)))
        table.add_column(sa.Column("revoke_reason", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("staff_cards") as table:
        table.drop_column("revoke_reason")
        table.drop_column("expires_at")
        table.drop_column("issued_at")
