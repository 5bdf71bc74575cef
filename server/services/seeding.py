"""Reference and demo data: the demo city and catalogue, the example exam programmes, and
`prepare_demo`, which readies a whole server for the demo in one call.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server import exams
from server.models import (
    Category,
    EntitlementRule,
    ExamProgramme,
    KioskSlot,
    PeriodKindColumn,
    Product,
    Region,
    RegionKind,
    Role,
)
from server.services.context import Context
from server.services.kiosks import add_kiosk
from server.services.people import create_user, enrol_resident

# --- administration (CLI and demo) -----------------------------------------------------------------


@dataclass(frozen=True)
class DemoSeed:
    city_region_id: int
    town_region_id: int
    village_region_id: int
    category: str
    product_sku: str
    monthly_limit: int
    resident_id: int
    region_codes: list[str] = field(default_factory=list)


DEMO_CATEGORY = "condoms"
DEMO_SKU = "CONDOM-STD-1"
DEMO_MONTHLY_LIMIT = 3


def seed_demo(session: Session, ctx: Context) -> DemoSeed:
    """A small city, the condom category with a monthly limit of 3, one product, one resident.

    Idempotent for the reference data (regions, category, product, rule); each call enrols a new
    demo resident, so a demo run always starts with a full allowance. Commits.
    """
    city = _get_or_add_region(session, "C01", "Demo City", RegionKind.CITY, None)
    town = _get_or_add_region(
        session, "C01-T01", "Riverside Subdistrict", RegionKind.SUBDISTRICT, city
    )
    village = _get_or_add_region(
        session, "C01-T01-V001", "Willow Community", RegionKind.COMMUNITY, town
    )
    _get_or_add_region(session, "C01-T02", "Hill Town", RegionKind.TOWN, city)
    seed_catalog(session)
    seed_exam_programmes(session)
    resident = enrol_resident(
        session,
        ctx,
        name="Demo Resident",
        sex="F",
        birth_date=dt.date(1994, 5, 17),
        phone=None,
        id_number="DEMO" + secrets.token_hex(7).upper(),
        region_id=village.id,
    )
    session.commit()
    return DemoSeed(
        city_region_id=city.id,
        town_region_id=town.id,
        village_region_id=village.id,
        category=DEMO_CATEGORY,
        product_sku=DEMO_SKU,
        monthly_limit=DEMO_MONTHLY_LIMIT,
        resident_id=resident.id,
        region_codes=[city.code, town.code, village.code],
    )


def seed_catalog(session: Session) -> Product:
    """The condom category with its monthly rule (3) and one product; idempotent. No commit."""
    category = session.scalar(select(Category).where(Category.code == DEMO_CATEGORY))
    if category is None:
        category = Category(code=DEMO_CATEGORY, name="Condoms", unit="piece")
        session.add(category)
        session.flush()
        session.add(
            EntitlementRule(
                category_id=category.id,
                period_kind=PeriodKindColumn.CALENDAR_MONTH,
                units=DEMO_MONTHLY_LIMIT,
                per_visit_cap=DEMO_MONTHLY_LIMIT,
                active=True,
            )
        )
    product = session.scalar(select(Product).where(Product.sku == DEMO_SKU))
    if product is None:
        product = Product(sku=DEMO_SKU, name="Condom, standard", category_id=category.id, units=1)
        session.add(product)
    session.flush()
    return product


def _get_or_add_region(
    session: Session, code: str, name: str, kind: RegionKind, parent: Region | None
) -> Region:
    region = session.scalar(select(Region).where(Region.code == code))
    if region is None:
        region = Region(code=code, name=name, kind=kind, parent_id=parent.id if parent else None)
        session.add(region)
        session.flush()
    return region


DEMO_PROGRAMMES = [
    exams.Programme(
        "pre_pregnancy",
        "Free pre-pregnancy exam",
        frozenset("FM"),
        min_age=20,
        max_age=49,
        once=True,
        requires_plan=True,
    ),
    exams.Programme(
        "reproductive_health_check",
        "Yearly reproductive-health check",
        frozenset("F"),
        min_age=21,
        max_age=64,
        interval_days=365,
    ),
]


def seed_exam_programmes(session: Session) -> None:
    """The two example programmes of issue 5, as data; idempotent. No commit."""
    for programme in DEMO_PROGRAMMES:
        if (
            session.scalar(select(ExamProgramme.id).where(ExamProgramme.code == programme.code))
            is None
        ):
            session.add(
                ExamProgramme(
                    code=programme.code,
                    name=programme.name,
                    sexes="".join(sorted(programme.sexes)) or None,
                    min_age=programme.min_age,
                    max_age=programme.max_age,
                    interval_days=programme.interval_days,
                    once=programme.once,
                    requires_plan=programme.requires_plan,
                    active=True,
                )
            )
    session.flush()


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
    from server.app import context_of, create_app
    from server.db import db
    from server.migrate import upgrade

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
