"""What the city hands out and offers, as data: product categories, products, and free exam
programmes (a new programme needs no code: server.domain.exams evaluates any row). The
catalogue is the city's: only a city-wide administrator changes it; everything is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import Conflict, Forbidden, InvalidRequest, NotFound
from server.services.context import Context
from server.store import audit
from server.store.models import Category, ExamProgramme, Product, StaffUser

SEXES = frozenset({"F", "M"})


def _city_admin(user: StaffUser) -> None:
    if user.region_id is not None:
        raise Forbidden(
            "the catalogue is the city's: a city-wide administrator changes it",
            code="out_of_scope",
        )


def _audit(
    session: Session,
    ctx: Context,
    user: StaffUser,
    action: str,
    subject: str,
    detail: dict[str, Any],
) -> None:
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action=action,
        subject=subject,
        detail=detail,
    )


def listing(session: Session) -> dict[str, list[Any]]:
    return {
        "categories": list(session.scalars(select(Category).order_by(Category.code))),
        "products": list(
            session.execute(
                select(Product, Category.code)
                .join(Category, Category.id == Product.category_id)
                .order_by(Product.sku)
            ).all()
        ),
        "programmes": list(session.scalars(select(ExamProgramme).order_by(ExamProgramme.id))),
    }


def add_category(
    session: Session, ctx: Context, user: StaffUser, *, code: str, name: str, unit: str
) -> Category:
    _city_admin(user)
    if session.scalar(select(Category.id).where(Category.code == code)) is not None:
        raise Conflict(f"a category {code} exists", code="category_exists", field="code")
    row = Category(code=code, name=name, unit=unit)
    session.add(row)
    session.flush()
    _audit(session, ctx, user, "category.create", f"category:{code}", {"name": name, "unit": unit})
    return row


def add_product(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    sku: str,
    name: str,
    category: str,
    units: int,
) -> Product:
    _city_admin(user)
    category_id = session.scalar(select(Category.id).where(Category.code == category))
    if category_id is None:
        raise NotFound(f"no category {category}", code="category_unknown", field="category")
    if session.scalar(select(Product.id).where(Product.sku == sku)) is not None:
        raise Conflict(f"a product {sku} exists", code="product_exists", field="sku")
    row = Product(sku=sku, name=name, category_id=category_id, units=units)
    session.add(row)
    session.flush()
    _audit(
        session,
        ctx,
        user,
        "product.create",
        f"product:{sku}",
        {"category": category, "units": units},
    )
    return row


@dataclass(frozen=True)
class ProgrammeSpec:
    code: str
    name: str
    sexes: str  # "", "F", "M" or "FM"
    min_age: int | None
    max_age: int | None
    interval_days: int | None
    once: bool
    requires_plan: bool


def add_programme(
    session: Session, ctx: Context, user: StaffUser, spec: ProgrammeSpec
) -> ExamProgramme:
    _city_admin(user)
    if not set(spec.sexes) <= SEXES:
        raise InvalidRequest("sexes: F, M, FM or empty", code="field_invalid", field="sexes")
    if spec.min_age is not None and spec.max_age is not None and spec.min_age > spec.max_age:
        raise InvalidRequest(
            "the upper age is below the lower one", code="field_invalid", field="max_age"
        )
    if not spec.once and spec.interval_days is None:
        raise InvalidRequest(
            "a programme is given once, or again after an interval",
            code="field_invalid",
            field="interval_days",
        )
    if session.scalar(select(ExamProgramme.id).where(ExamProgramme.code == spec.code)) is not None:
        raise Conflict(f"a programme {spec.code} exists", code="programme_exists", field="code")
    row = ExamProgramme(
        code=spec.code,
        name=spec.name,
        sexes=spec.sexes or None,
        min_age=spec.min_age,
        max_age=spec.max_age,
        interval_days=spec.interval_days,
        once=spec.once,
        active=True,
        requires_plan=spec.requires_plan,
    )
    session.add(row)
    session.flush()
    _audit(session, ctx, user, "programme.create", f"programme:{spec.code}", {"name": spec.name})
    return row


def set_programme_active(
    session: Session, ctx: Context, user: StaffUser, code: str, active: bool
) -> None:
    _city_admin(user)
    row = session.scalar(select(ExamProgramme).where(ExamProgramme.code == code))
    if row is None:
        raise NotFound(f"no programme {code}", code="programme_unknown")
    if row.active != active:
        row.active = active
        _audit(
            session,
            ctx,
            user,
            "programme.enable" if active else "programme.disable",
            f"programme:{code}",
            {},
        )
