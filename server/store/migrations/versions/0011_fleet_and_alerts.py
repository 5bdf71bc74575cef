"""Fleet state and alerts (issue 12).

- kiosks.latitude, kiosks.longitude: where a kiosk or station stands (WGS 84), for the map.
- kiosk_slots.minimum, kiosk_slots.capacity: the restock level and what a slot holds.
- kiosk_status: the latest state a kiosk's heartbeat reported (door and since when,
  temperature, faults), one row per kiosk, so the fleet page and the alert rules read 2,400
  rows instead of the telemetry journal.
- alert_rules: the rules as data (kind, threshold, temperature range, quiet period, enabled);
  a kind without a row runs with server.domain.alerts.DEFAULT_RULES' values.
- alert_contacts: how a staff member is reached (e-mail, a phone for the SMS gateway).
- kiosk_responsibles: which staff answer for which kiosk.
- alerts: one row per alert (kiosk, kind, subject) from opening until it clears or is resolved,
  with its acknowledgement; at most one open per kiosk, kind and subject.
- alert_deliveries: one message per alert, channel and recipient, with its outcome.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("kiosks") as batch:
        batch.add_column(sa.Column("latitude", sa.Float, nullable=True))
        batch.add_column(sa.Column("longitude", sa.Float, nullable=True))
    with op.batch_alter_table("kiosk_slots") as batch:
        batch.add_column(sa.Column("minimum", sa.Integer, nullable=True))
        batch.add_column(sa.Column("capacity", sa.Integer, nullable=True))
    op.create_table(
        "kiosk_status",
        sa.Column("kiosk_id", sa.String(64), sa.ForeignKey("kiosks.id"), primary_key=True),
        sa.Column("door_open", sa.Boolean, nullable=True),
        sa.Column("door_open_since", WHEN, nullable=True),
        sa.Column("temperature_c", sa.Float, nullable=True),
        sa.Column("faults", sa.Text, nullable=False, server_default="[]"),
        sa.Column("updated_at", WHEN, nullable=False),
    )
    op.create_table(
        "alert_rules",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("low", sa.Float, nullable=True),
        sa.Column("high", sa.Float, nullable=True),
        sa.Column("quiet_minutes", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "alert_contacts",
        sa.Column("staff_user_id", sa.Integer, sa.ForeignKey("staff_users.id"), primary_key=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("phone", sa.String(32), nullable=True),
    )
    op.create_table(
        "kiosk_responsibles",
        sa.Column("kiosk_id", sa.String(64), sa.ForeignKey("kiosks.id"), primary_key=True),
        sa.Column("staff_user_id", sa.Integer, sa.ForeignKey("staff_users.id"), primary_key=True),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kiosk_id", sa.String(64), sa.ForeignKey("kiosks.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("opened_at", WHEN, nullable=False),
        sa.Column("cleared_at", WHEN, nullable=True),
        sa.Column("acknowledged_at", WHEN, nullable=True),
        sa.Column("acknowledged_by", sa.Integer, sa.ForeignKey("staff_users.id"), nullable=True),
        sa.Column("resolved_by", sa.Integer, sa.ForeignKey("staff_users.id"), nullable=True),
    )
    op.create_index(
        "uq_alerts_kiosk_id_kind_subject_open",
        "alerts",
        ["kiosk_id", "kind", "subject"],
        unique=True,
        sqlite_where=sa.text("cleared_at IS NULL"),
        postgresql_where=sa.text("cleared_at IS NULL"),
    )
    op.create_index("ix_alerts_opened_at", "alerts", ["opened_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", WHEN, nullable=True),
        sa.Column("error", sa.String(300), nullable=True),
        sa.UniqueConstraint(
            "alert_id", "channel", "recipient", name="uq_alert_deliveries_alert_id"
        ),
    )
    op.create_index("ix_kiosk_events_at", "kiosk_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_kiosk_events_at", table_name="kiosk_events")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alerts_opened_at", table_name="alerts")
    op.drop_index("uq_alerts_kiosk_id_kind_subject_open", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("kiosk_responsibles")
    op.drop_table("alert_contacts")
    op.drop_table("alert_rules")
    op.drop_table("kiosk_status")
    with op.batch_alter_table("kiosk_slots") as batch:
        batch.drop_column("capacity")
        batch.drop_column("minimum")
    with op.batch_alter_table("kiosks") as batch:
        batch.drop_column("longitude")
        batch.drop_column("latitude")
