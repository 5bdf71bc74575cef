"""The DHIS2 mapping the administrator keeps on the reports page (issue 12): our region codes to
DHIS2 org-unit UIDs, our figures to data elements and category option combos, as JSON
(server.domain.dhis2.Dhis2Mapping); one row.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dhis2_mapping",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mapping", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.Integer, sa.ForeignKey("staff_users.id"), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("dhis2_mapping")
