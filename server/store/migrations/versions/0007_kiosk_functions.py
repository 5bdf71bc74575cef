"""Server-side functions for the kiosk hot path on PostgreSQL (server.store.ledger.PgLedger).

Each function is one round trip of an authorization or a settlement; the Python service keeps the
decisions (signatures, card proof, rules) and calls them in between. SQLite has no functions: its
ledger (server.store.ledger.CoreLedger) runs the same steps as single statements in-process.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Under READ COMMITTED each statement of a PL/pgSQL function takes a fresh snapshot, so a read
# after a row lock sees every transaction that committed before the lock was granted.
FUNCTIONS = r"""
CREATE FUNCTION onecard_device_request(p_device text, p_nonce text, p_seen_at timestamptz)
RETURNS TABLE (r_enabled boolean, r_public_key text, r_kind text, r_nonce_fresh boolean)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT k.enabled, k.public_key, k.kind INTO r_enabled, r_public_key, r_kind
      FROM kiosks k WHERE k.id = p_device;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    r_nonce_fresh := false;
    IF r_enabled THEN
        INSERT INTO seen_nonces (kiosk_id, nonce, seen_at) VALUES (p_device, p_nonce, p_seen_at)
        ON CONFLICT DO NOTHING;
        r_nonce_fresh := FOUND;
    END IF;
    RETURN NEXT;
END
$$;

CREATE FUNCTION onecard_tap_context(p_kiosk text, p_slot integer, p_guid text)
RETURNS TABLE (
    r_product_id integer, r_sku text, r_name text, r_units integer, r_category_id integer,
    r_category text, r_card_id integer, r_resident_id integer, r_card_status text,
    r_certificate bytea
)
LANGUAGE sql STABLE AS $$
    SELECT p.id, p.sku, p.name, p.units, p.category_id, c.code,
           cd.id, cd.resident_id, cd.status, cd.certificate
      FROM (SELECT 1) AS one
      LEFT JOIN kiosk_slots s ON s.kiosk_id = p_kiosk AND s.slot = p_slot
      LEFT JOIN products p ON p.id = s.product_id
      LEFT JOIN categories c ON c.id = p.category_id
      LEFT JOIN cards cd ON cd.guid = p_guid
$$;

CREATE FUNCTION onecard_hold(p_kiosk text, p_counter bigint, p_resident integer, p_since date)
RETURNS TABLE (
    r_birth_date_enc bytea, r_sex_enc bytea, r_status text,
    r_categories text[], r_days date[], r_units integer[]
)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kiosks SET last_counter = p_counter WHERE id = p_kiosk AND last_counter < p_counter;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT r.birth_date_enc, r.sex_enc, r.status INTO r_birth_date_enc, r_sex_enc, r_status
      FROM residents r WHERE r.id = p_resident FOR UPDATE;
    SELECT array_agg(c.code), array_agg(u.day), array_agg(u.reserved + u.captured)
      INTO r_categories, r_days, r_units
      FROM usage u JOIN categories c ON c.id = u.category_id
     WHERE u.resident_id = p_resident AND u.day >= p_since;
    RETURN NEXT;
END
$$;

CREATE FUNCTION onecard_reserve(
    p_id text, p_kiosk text, p_card integer, p_resident integer, p_product integer,
    p_category integer, p_slot integer, p_quantity integer, p_units integer, p_day date,
    p_counter bigint, p_at timestamptz
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO authorizations (
        id, kiosk_id, card_id, resident_id, product_id, category_id, slot, quantity, units,
        usage_day, proof_counter, status, created_at, offline
    ) VALUES (
        p_id, p_kiosk, p_card, p_resident, p_product, p_category, p_slot, p_quantity, p_units,
        p_day, p_counter, 'reserved', p_at, false
    );
    INSERT INTO usage (resident_id, category_id, day, reserved, captured)
    VALUES (p_resident, p_category, p_day, p_units, 0)
    ON CONFLICT (resident_id, category_id, day)
    DO UPDATE SET reserved = usage.reserved + EXCLUDED.reserved;
END
$$;

CREATE FUNCTION onecard_settle(
    p_id text, p_kiosk text, p_to text, p_at timestamptz, p_board_txn bigint, p_reason text,
    p_since date
)
RETURNS TABLE (
    r_moved boolean, r_status text, r_kiosk_id text, r_resident_id integer,
    r_categories text[], r_days date[], r_units integer[]
)
LANGUAGE plpgsql AS $$
DECLARE
    a record;
BEGIN
    UPDATE authorizations x
       SET status = p_to, settled_at = p_at,
           board_txn = CASE WHEN p_to = 'captured' THEN p_board_txn ELSE x.board_txn END,
           void_reason = CASE WHEN p_to = 'voided' THEN p_reason ELSE x.void_reason END
     WHERE x.id = p_id AND x.kiosk_id = p_kiosk AND x.status = 'reserved'
    RETURNING x.resident_id, x.category_id, x.usage_day, x.units, x.slot, x.quantity INTO a;
    IF FOUND THEN
        r_moved := true;
        r_status := p_to;
        r_kiosk_id := p_kiosk;
        r_resident_id := a.resident_id;
        UPDATE usage u
           SET reserved = u.reserved - a.units,
               captured = u.captured + CASE WHEN p_to = 'captured' THEN a.units ELSE 0 END
         WHERE u.resident_id = a.resident_id AND u.category_id = a.category_id
           AND u.day = a.usage_day;
        IF p_to = 'captured' THEN
            UPDATE kiosk_slots s SET stock = s.stock - a.quantity
             WHERE s.kiosk_id = p_kiosk AND s.slot = a.slot AND s.stock >= a.quantity;
        END IF;
    ELSE
        r_moved := false;
        SELECT x.status, x.kiosk_id, x.resident_id INTO r_status, r_kiosk_id, r_resident_id
          FROM authorizations x WHERE x.id = p_id;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF r_kiosk_id = p_kiosk THEN
        SELECT array_agg(c.code), array_agg(u.day), array_agg(u.reserved + u.captured)
          INTO r_categories, r_days, r_units
          FROM usage u JOIN categories c ON c.id = u.category_id
         WHERE u.resident_id = r_resident_id AND u.day >= p_since;
    END IF;
    RETURN NEXT;
END
$$;
"""

NAMES = [
    "onecard_device_request(text, text, timestamptz)",
    "onecard_tap_context(text, integer, text)",
    "onecard_hold(text, bigint, integer, date)",
    "onecard_reserve(text, text, integer, integer, integer, integer, integer, integer, integer, "
    "date, bigint, timestamptz)",
    "onecard_settle(text, text, text, timestamptz, bigint, text, date)",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTIONS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in NAMES:
            op.execute(f"DROP FUNCTION {name}")
