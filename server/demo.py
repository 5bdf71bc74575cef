"""The demo's server side, readied in one call (`onecard demo`, the tests): the schema migrated,
the demo city and its catalogue seeded, the kiosk registered with the catalogue's products in
its slots (server.services.seeding.DEMO_KIOSK_SLOTS: two condoms and a lubricant, so its screen
offers a choice), a technician's token and one staff sign-in per role created. It builds the
application to do so, which is why it lives beside server.app and not among the services.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from server.app import context_of, create_app
from server.services import DemoSeed, add_kiosk, create_user, seed_demo
from server.services.seeding import DEMO_KIOSK_SLOTS, seed_choice_catalogue
from server.services.staff_auth import bootstrap_user
from server.store.db import db
from server.store.migrate import upgrade
from server.store.models import KioskSlot, Role, StaffUser


@dataclass(frozen=True)
class PreparedDemo:
    resident_id: int
    technician_token: str
    limit: int
    category: str
    sku: str
    kiosk_id: str
    slot: int  # the slot holding `sku`, the product the walk takes
    seed: DemoSeed
    slots: Mapping[int, str] = field(default_factory=dict)  # every slot of the kiosk: its SKU
    # (name, role, password) of the demo's staff, one per role, to try every page
    staff: tuple[tuple[str, str, str], ...] = ()


# The demo city's staff: one per role, city-wide, with a password printed by the demo (a demo
# database only; a real city's first administrator comes from `onecard server create-user`).
DEMO_STAFF = (
    ("demo-admin", Role.ADMINISTRATOR),
    ("demo-technician", Role.TECHNICIAN),
    ("demo-nurse", Role.STATION_STAFF),
    ("demo-auditor", Role.AUDITOR),
)
DEMO_PASSWORD = "onecard-demo-2026"


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
    city and catalogue, register the kiosk with the catalogue's products in DEMO_KIOSK_SLOTS
    (`slot` must be the one holding the demo product), each with `stock` when given, create a
    technician and the demo's staff sign-ins.

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
            if DEMO_KIOSK_SLOTS.get(slot) != seed.product_sku:
                raise ValueError(f"slot {slot} does not hold {seed.product_sku} in the demo kiosk")
            seed_choice_catalogue(session)
            session.commit()
            add_kiosk(session, ctx, kiosk_id, kiosk_public_key, DEMO_KIOSK_SLOTS)
            if stock is not None:
                session.execute(
                    update(KioskSlot).where(KioskSlot.kiosk_id == kiosk_id).values(stock=stock)
                )
                session.commit()
            token = create_user(
                session, ctx, f"demo-technician-{secrets.token_hex(4)}", Role.TECHNICIAN
            )
            for name, role in DEMO_STAFF:
                if session.scalar(select(StaffUser.id).where(StaffUser.name == name)) is None:
                    bootstrap_user(
                        session,
                        ctx,
                        name=name,
                        role=role,
                        region_code=None,
                        password=DEMO_PASSWORD,
                        must_change=False,
                    )
            session.commit()
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
        slots=dict(DEMO_KIOSK_SLOTS),
        staff=tuple((name, role.value, DEMO_PASSWORD) for name, role in DEMO_STAFF),
    )
