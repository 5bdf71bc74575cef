"""Couples, and exam programmes that serve couples planning a pregnancy.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "couples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("partner_a_id", sa.Integer(), nullable=False),
        sa.Column("partner_b_id", sa.Integer(), nullable=False),
        sa.Column("planning_since", sa.Date(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner_a_id"], ["residents.id"], name=op.f("fk_couples_partner_a_id_residents")
        ),
        sa.ForeignKeyConstraint(
            ["partner_b_id"], ["residents.id"], name=op.f("fk_couples_partner_b_id_residents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_couples")),
    )
    op.create_index(op.f("ix_couples_partner_a_id"), "couples", ["partner_a_id"])
    op.create_index(op.f("ix_couples_partner_b_id"), "couples", ["partner_b_id"])
    op.add_column(
        "exam_programmes",
        sa.Column("requires_plan", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    # The seeded pre-pregnancy programme is the couples' one.
    op.execute("UPDATE exam_programmes SET requires_plan = TRUE WHERE code = 'pre_pregnancy'")


def downgrade() -> None:
    with op.batch_alter_table("exam_programmes") as batch_op:
        batch_op.drop_column("requires_plan")
    op.drop_index(op.f("ix_couples_partner_b_id"), table_name="couples")
    op.drop_index(op.f("ix_couples_partner_a_id"), table_name="couples")
    op.drop_table("couples")
