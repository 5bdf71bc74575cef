"""Reference and demo data: the demo city and catalogue, and the example exam programmes
(server.demo readies a whole server for the demo in one call).

The demo catalogue: the condom category (3 a calendar month) with a standard and a thin condom,
and a lubricant category (2 per rolling 30 days) with one sachet, so a kiosk offers a real
choice; DEMO_KIOSK_SLOTS says which slot of the demo kiosk holds which (the tests' kiosks use the
same, tests/fixtures/catalogue.py)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.domain import exams
from server.services.context import Context
from server.services.people import enrol_resident
from server.store.models import (
    Category,
    EntitlementRule,
    ExamProgramme,
    PeriodKindColumn,
    Product,
    Region,
    RegionKind,
)

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
CHOICE_CATEGORY = "lubricant"
LUBE_RULE_UNITS = 2
THIN_SKU = "CONDOM-THIN-1"
LUBE_SKU = "LUBE-1"
DEMO_KIOSK_SLOTS = {1: DEMO_SKU, 2: THIN_SKU, 3: LUBE_SKU}


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


def seed_choice_catalogue(session: Session, *, lube_max_age: int | None = None) -> None:
    """Besides seed_catalog's: a thin condom (same category) and a lubricant sachet in a
    category of its own with its rule (LUBE_RULE_UNITS per rolling 30 days, up to
    `lube_max_age` when given). Idempotent; needs seed_catalog first. No commit."""
    condoms = session.scalar(select(Category).where(Category.code == DEMO_CATEGORY))
    if condoms is None:
        raise ValueError("seed the demo catalogue (seed_catalog) first")
    lube = session.scalar(select(Category).where(Category.code == CHOICE_CATEGORY))
    if lube is None:
        lube = Category(code=CHOICE_CATEGORY, name="Lubricant", unit="sachet")
        session.add(lube)
        session.flush()
        session.add(
            EntitlementRule(
                category_id=lube.id,
                period_kind=PeriodKindColumn.ROLLING_DAYS,
                period_days=30,
                units=LUBE_RULE_UNITS,
                max_age=lube_max_age,
                active=True,
            )
        )
    for sku, name, category in (
        (THIN_SKU, "Condom, thin", condoms),
        (LUBE_SKU, "Lubricant sachet", lube),
    ):
        if session.scalar(select(Product.id).where(Product.sku == sku)) is None:
            session.add(Product(sku=sku, name=name, category_id=category.id, units=1))
    session.flush()


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
