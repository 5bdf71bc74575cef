"""The demo's server side, readied in one call (`onecard demo`, the tests): the schema migrated,
the demo city seeded, the kiosk registered, a technician created. It builds the application to
do so, which is why it lives beside server.app and not among the services.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from server.app import context_of, create_app
from server.services import DemoSeed, add_kiosk, create_user, seed_demo
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import KioskSlot, Role


@dataclass(frozen=True)
class PreparedDemo:
    resident_id: int
    technician_token: str
    limit: int
    category: str
    sku: str
    kiosk_id: str
    slot: int
    seed: DemoSeed


def prepare_demo(
    *,
    database_url: str,
    kiosk_id: str,
    kiosk_public_key: str,
    slot: int = 1,
    stock: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> PreparedDemo:
    """Everything the demo needs at the server, in one call: migrate the schema, seed the demo
    city, register the kiosk with `slot` holding the demo product, create a technician.

    `config` takes the same ONECARD_* settings the server process gets (at least its
    ONECARD_DATA_DIR or ONECARD_FIELD_KEY: residents' fields are encrypted with that key, and the
    server must be able to decrypt them).
    """
    settings = {**(config or {}), "ONECARD_DATABASE_URL": database_url}
    app = create_app(settings)
    try:
        upgrade(db.bound(app).engine)
        ctx = context_of(app)
        with db.bound(app).sessionmaker() as session:
            seed = seed_demo(session, ctx)
            add_kiosk(session, ctx, kiosk_id, kiosk_public_key, {slot: seed.product_sku})
            if stock is not None:
                session.execute(
                    update(KioskSlot)
                    .where(KioskSlot.kiosk_id == kiosk_id, KioskSlot.slot == slot)
                    .values(stock=stock)
                )
                session.commit()
            token = create_user(
                session, ctx, f"demo-technician-{secrets.token_hex(4)}", Role.TECHNICIAN
            )
    finally:
        db.dispose(app)
    return PreparedDemo(
        resident_id=seed.resident_id,
        technician_token=token,
        limit=seed.monthly_limit,
        category=seed.category,
        sku=seed.product_sku,
        kiosk_id=kiosk_id,
        slot=slot,
        seed=seed,
    )
