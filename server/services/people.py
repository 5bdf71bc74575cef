"""People: residents (enrolment, search, what staff see), their cards, staff users and the
regions they are scoped to.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cardsvc.errors import CardVerificationError
from cardsvc.verify import guid_from_certificate, load_certificate, verify_certificate
from server.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
    Unprocessable,
)
from server.services.context import Context
from server.store import audit
from server.store.fieldcrypto import mask_id_number, normalise_id_number
from server.store.models import Card, CardStatus, Region, Resident, ResidentStatus, Role, StaffUser

# --- staff ---------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate_staff(
    session: Session, authorization_header: str | None, *roles: Role
) -> StaffUser:
    if not authorization_header or not authorization_header.startswith("Bearer "):
        raise Unauthenticated("a staff bearer token is required", code="token_missing")
    token = authorization_header.removeprefix("Bearer ").strip()
    user = session.scalar(select(StaffUser).where(StaffUser.token_hash == token_hash(token)))
    if user is None or not user.active:
        raise Unauthenticated("the bearer token is not valid", code="token_invalid")
    if roles and user.role not in roles:
        raise Forbidden(
            f"this needs the role {' or '.join(r.value for r in roles)}", code="role_required"
        )
    return user


def issue_card(
    session: Session,
    ctx: Context,
    resident_id: int,
    certificate_der: bytes,
    issued_by: StaffUser | None,
) -> Card:
    """Record a card issued to a resident. The certificate must come from the city card CA and be
    valid now; earlier active cards of the same person are marked replaced (allowances are per
    person, so a replacement does not reset them)."""
    if ctx.card_ca_der is None:
        raise ServiceUnavailable("the card CA is not configured", code="card_ca_not_configured")
    try:
        certificate = load_certificate(certificate_der)
        verified = verify_certificate(certificate, ctx.card_ca_der, now=ctx.now())
        guid = guid_from_certificate(certificate).hex()
    except CardVerificationError as exc:
        raise Unprocessable(str(exc), code="certificate_invalid", reason=exc.reason.value) from exc
    resident = session.scalar(select(Resident).where(Resident.id == resident_id).with_for_update())
    if resident is None:
        raise NotFound(f"no resident {resident_id}", code="resident_unknown")
    if issued_by is not None and not in_scope(session, issued_by, resident.region_id):
        raise Forbidden("this resident lives outside your area", code="out_of_scope")
    if session.scalar(select(Card.id).where(Card.guid == guid)) is not None:
        raise Conflict(f"card {guid} is already registered", code="card_exists")
    now = ctx.now()
    replaced = session.scalars(
        select(Card).where(Card.resident_id == resident.id, Card.status == CardStatus.ACTIVE)
    ).all()
    for old in replaced:
        old.status = CardStatus.REPLACED
        old.status_changed_at = now
    card = Card(
        guid=guid,
        resident_id=resident.id,
        certificate=certificate_der,
        not_after=verified.not_after,
        status=CardStatus.ACTIVE,
        issued_at=now,
        issued_by=issued_by.id if issued_by else None,
    )
    session.add(card)
    session.flush()
    audit.append(
        session,
        at=now,
        actor=f"user:{issued_by.id}" if issued_by else "cli",
        action="card.issue",
        subject=f"card:{guid}",
        detail={"resident_id": resident.id, "replaced": [c.guid for c in replaced]},
    )
    return card


def revoke_card(session: Session, ctx: Context, guid: str, reason: str, user: StaffUser) -> Card:
    """Revoke a card (lost, stolen, holder left). Idempotent; audited."""
    card = session.scalar(select(Card).where(Card.guid == guid.lower()).with_for_update())
    if card is None:
        raise NotFound(f"no card {guid}", code="card_unknown")
    resident = session.get(Resident, card.resident_id)
    assert resident is not None
    if not in_scope(session, user, resident.region_id):
        raise Forbidden("this card's holder lives outside your area", code="out_of_scope")
    if card.status is CardStatus.ACTIVE:
        card.status = CardStatus.REVOKED
        card.status_changed_at = ctx.now()
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="card.revoke",
            subject=f"card:{card.guid}",
            detail={"reason": reason},
        )
    return card


SEXES = frozenset({"F", "M"})


def resident_view(session: Session, ctx: Context, resident: Resident) -> dict[str, Any]:
    """What staff see of a person: decrypted fields, the ID number masked, the cards."""
    region_code = session.scalar(select(Region.code).where(Region.id == resident.region_id))
    cards = session.execute(
        select(Card.guid, Card.status).where(Card.resident_id == resident.id).order_by(Card.id)
    ).all()
    phone = ctx.cipher.decrypt("phone", resident.phone_enc) if resident.phone_enc else None
    return {
        "resident_id": resident.id,
        "name": ctx.cipher.decrypt("name", resident.name_enc),
        "sex": ctx.cipher.decrypt("sex", resident.sex_enc),
        "birth_date": ctx.cipher.decrypt("birth_date", resident.birth_date_enc),
        "phone": phone,
        "id_number": mask_id_number(resident.id_number_last4),
        "region": region_code,
        "status": resident.status.value,
        "cards": [{"card_guid": guid, "status": status.value} for guid, status in cards],
    }


def find_residents(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    id_number: str | None = None,
    region_code: str | None = None,
    limit: int = 50,
    after: int = 0,
) -> list[dict[str, Any]]:
    """Residents by exact ID number (through its keyed hash) or by region subtree, within the
    user's area. Every person shown is an audited read."""
    query = select(Resident)
    if id_number is not None:
        query = query.where(Resident.id_number_hash == ctx.cipher.id_number_hash(id_number))
    if region_code is not None:
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
        if not in_scope(session, user, region_id):
            raise Forbidden("this region is outside your area", code="out_of_scope")
        query = query.where(Resident.region_id.in_(subtree_ids(session, region_id)))
    elif user.region_id is not None:
        query = query.where(Resident.region_id.in_(subtree_ids(session, user.region_id)))
    rows = session.scalars(
        query.where(Resident.id > after).order_by(Resident.id).limit(limit)
    ).all()
    views = []
    for resident in rows:
        views.append(resident_view(session, ctx, resident))
        audit.append(
            session,
            at=ctx.now(),
            actor=f"user:{user.id}",
            action="resident.read",
            subject=f"resident:{resident.id}",
        )
    return views


def subtree_ids(session: Session, root_id: int) -> list[int]:
    """The region and every region below it (the tree is small: a city has ~1,000 regions)."""
    children: dict[int | None, list[int]] = defaultdict(list)
    for region_id, parent_id in session.execute(select(Region.id, Region.parent_id)):
        children[parent_id].append(region_id)
    found, todo = [], [root_id]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def in_scope(session: Session, user: StaffUser, region_id: int) -> bool:
    """Is `region_id` inside the subtree of regions the user is scoped to?"""
    if user.region_id is None:
        return True
    current: int | None = region_id
    for _ in range(16):  # the tree is shallow: city -> town -> village
        if current is None:
            return False
        if current == user.region_id:
            return True
        current = session.scalar(select(Region.parent_id).where(Region.id == current))
    return False


def enrol_resident(
    session: Session,
    ctx: Context,
    *,
    name: str,
    sex: str,
    birth_date: dt.date,
    phone: str | None,
    id_number: str,
    region_id: int,
    actor: str = "system",
) -> Resident:
    """Enrol a person; refuses a second enrolment of the same ID number. Does not commit."""
    id_hash = ctx.cipher.id_number_hash(id_number)
    if session.scalar(select(Resident.id).where(Resident.id_number_hash == id_hash)) is not None:
        raise Conflict("this ID number is already enrolled", code="resident_exists")
    resident = Resident(
        region_id=region_id,
        name_enc=ctx.cipher.encrypt("name", name),
        sex_enc=ctx.cipher.encrypt("sex", sex),
        birth_date_enc=ctx.cipher.encrypt_date("birth_date", birth_date),
        phone_enc=ctx.cipher.encrypt("phone", phone) if phone else None,
        id_number_hash=id_hash,
        id_number_last4=normalise_id_number(id_number)[-4:],
        status=ResidentStatus.ACTIVE,
        created_at=ctx.now(),
    )
    session.add(resident)
    try:
        session.flush()
    except IntegrityError:  # enrolled concurrently
        raise Conflict("this ID number is already enrolled", code="resident_exists") from None
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="resident.enrol",
        subject=f"resident:{resident.id}",
    )
    return resident


def create_user(
    session: Session, ctx: Context, name: str, role: Role | str, *, region_code: str | None = None
) -> str:
    """Create a staff user and return its bearer token (shown once; only its hash is kept). Commits."""
    role = Role(role)
    region_id = None
    if region_code is not None:
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
    if session.scalar(select(StaffUser.id).where(StaffUser.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists", code="user_exists")
    token = "oc_" + secrets.token_urlsafe(32)
    user = StaffUser(
        name=name,
        role=role,
        region_id=region_id,
        token_hash=token_hash(token),
        active=True,
        created_at=ctx.now(),
    )
    session.add(user)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor="cli",
        action="user.create",
        subject=f"user:{user.id}",
        detail={"role": role.value},
    )
    session.commit()
    return token
