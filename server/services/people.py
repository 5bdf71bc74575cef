"""People: residents (enrolment, search, what staff see), their cards, staff users and the
regions they are scoped to.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cardsvc.errors import CardVerificationError
from cardsvc.verify import guid_from_certificate, load_certificate, verify_certificate
from server.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)
from server.services.context import Context
from server.store import audit
from server.store.fieldcrypto import id_number_parts, mask_id_number, normalise_id_number
from server.store.models import (
    Card,
    CardStatus,
    Couple,
    Region,
    Resident,
    ResidentStatus,
    StaffUser,
)

# --- cards ---------------------------------------------------------------------------------------


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
    return resident_views(session, ctx, [resident])[0]


def resident_views(
    session: Session, ctx: Context, residents: Sequence[Resident]
) -> list[dict[str, Any]]:
    """`resident_view` of several people, with two queries in all (their places' codes, their
    cards) rather than three per person."""
    if not residents:
        return []
    places = {r.region_id for r in residents} | {
        r.current_region_id for r in residents if r.current_region_id is not None
    }
    codes = dict(session.execute(select(Region.id, Region.code).where(Region.id.in_(places))).all())
    cards: dict[int, list[dict[str, str]]] = defaultdict(list)
    for resident_id, guid, status in session.execute(
        select(Card.resident_id, Card.guid, Card.status)
        .where(Card.resident_id.in_([r.id for r in residents]))
        .order_by(Card.id)
    ):
        cards[resident_id].append({"card_guid": guid, "status": status.value})
    cipher = ctx.cipher
    return [
        {
            "resident_id": r.id,
            "name": cipher.decrypt("name", r.name_enc),
            "sex": cipher.decrypt("sex", r.sex_enc),
            "birth_date": cipher.decrypt("birth_date", r.birth_date_enc),
            "phone": cipher.decrypt("phone", r.phone_enc) if r.phone_enc else None,
            "id_number": mask_id_number(r.id_number_last4),
            "region": codes.get(r.region_id),
            "current_region": (
                codes.get(r.current_region_id) if r.current_region_id is not None else None
            ),
            "status": r.status.value,
            "cards": cards.get(r.id, []),
        }
        for r in residents
    ]


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
    _audit_reads(session, ctx, user, [resident.id for resident in rows])
    return resident_views(session, ctx, rows)


def _region_id(session: Session, code: str, field: str) -> int:
    region_id = session.scalar(select(Region.id).where(Region.code == code))
    if region_id is None:
        raise NotFound(f"no region {code}", code="region_unknown", field=field)
    return region_id


def enrol_for_staff(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    name: str,
    sex: str,
    birth_date: dt.date,
    phone: str | None,
    id_number: str,
    region_code: str,
    current_region_code: str | None,
) -> dict[str, Any]:
    """Enrol a person registered (and possibly living) in the user's area. No commit."""
    region_id = _region_id(session, region_code, "region")
    current_id = (
        _region_id(session, current_region_code, "current_region") if current_region_code else None
    )
    # Registered here, or living here: migrants are served where they live.
    if not in_scope(session, user, region_id) and not (
        current_id is not None and in_scope(session, user, current_id)
    ):
        raise Forbidden("this person is outside your area", code="out_of_scope", field="region")
    resident = enrol_resident(
        session,
        ctx,
        name=name,
        sex=sex,
        birth_date=birth_date,
        phone=phone,
        id_number=id_number,
        region_id=region_id,
        current_region_id=current_id,
        actor=f"user:{user.id}",
    )
    return {"resident_id": resident.id, "id_number": mask_id_number(resident.id_number_last4)}


def _in_area(session: Session, user: StaffUser) -> Any:
    """The condition "registered or living in the user's area" (true for city-wide users)."""
    if user.region_id is None:
        return true()
    area = subtree_ids(session, user.region_id)
    return or_(Resident.region_id.in_(area), Resident.current_region_id.in_(area))


def _audit_reads(session: Session, ctx: Context, user: StaffUser, ids: Sequence[int]) -> None:
    """Each person shown is one `resident.read` entry (appended together, in the order shown)."""
    audit.append_many(
        session,
        ctx.now(),
        [audit.Entry(f"user:{user.id}", "resident.read", f"resident:{i}") for i in ids],
    )


MAX_MATCHES = 2000  # people sharing one name, at most, read for one search

_MASKED = re.compile(r"(?:([0-9A-Z]{6})\*+|\**)([0-9A-Z]{4})")


@dataclass(frozen=True)
class MaskedIdNumber:
    """What a masked view shows of an ID number: the first six characters (None when hidden)
    and the last four."""

    first6: str | None
    last4: str


def masked_id_number(typed: str) -> MaskedIdNumber | None:
    """`110105********1234` (first six, stars, last four), `**************1234` or `1234` as a
    masked number; None for a number without a star and longer than four characters (a full
    number). Other masks (`1101************1234`) are refused: they are neither what our views
    nor what the usual national masking print."""
    compact = re.sub(r"[\s-]", "", typed).upper().replace("\uff0a", "*")
    if "*" not in compact and len(compact) != 4:
        return None
    match = _MASKED.fullmatch(compact)
    if match is None:
        raise Unprocessable(
            "a masked ID number shows its first 6 and last 4 characters, or only the last 4",
            code="id_number_mask_unknown",
            field="id_number",
        )
    return MaskedIdNumber(match.group(1), match.group(2))


def search_residents(
    session: Session,
    ctx: Context,
    user: StaffUser,
    *,
    id_number: str | None = None,
    phone: str | None = None,
    name: str | None = None,
    birth_date: dt.date | None = None,
    after: int = 0,
    limit: int = 25,
    one_more: bool = False,
) -> list[dict[str, Any]]:
    """Residents registered or living in the user's area, by ID number, phone or name (each
    through its keyed hash; given together, all must match), by id from `after`. Each person
    returned is an audited read. With `one_more`, a next match after the `limit` shown, if
    any, comes last as `{"resident_id": id}` only: not read, not audited, just so a page knows
    that more follow. No commit.

    The ID number may be masked (`masked_id_number`): its first six and last four are found
    through their keyed hash; the last four alone only together with the date of birth (their
    keyed hash), the name or the phone, never alone (10,000 values: it would list a share of
    the city). A date of birth is taken only with a masked number.

    The keyed hashes are indexed and match few people, so the matches are read through that
    index and the area and the page are applied to them here (an ORDER BY id in SQL would tempt
    the planner to walk every resident by id instead)."""
    masked = masked_id_number(id_number) if id_number else None
    if birth_date is not None and masked is None:
        raise Unprocessable(
            "a date of birth is used with the last 4 of a masked ID number",
            code="birth_date_needs_last4",
            field="birth_date",
        )
    if not (id_number or phone or name):
        return []
    cipher = ctx.cipher
    query = select(Resident).where(Resident.id > after)
    if masked is not None:
        if masked.first6 is not None:
            query = query.where(
                Resident.id_prefix_index == cipher.id_prefix_index(masked.first6, masked.last4)
            )
        elif not (birth_date or name or phone):
            raise Unprocessable(
                "the last 4 of an ID number alone would list too many people: give the name, "
                "the date of birth or the phone too",
                code="id_number_needs_more",
                field="id_number",
            )
        if birth_date is not None:
            query = query.where(
                Resident.id_birth_index == cipher.id_birth_index(birth_date, masked.last4)
            )
        query = query.where(Resident.id_number_last4 == masked.last4)
    elif id_number:
        query = query.where(Resident.id_number_hash == cipher.id_number_hash(id_number))
    if phone:
        query = query.where(Resident.phone_index == cipher.blind_index("phone", phone))
    if name:
        query = query.where(Resident.name_index == cipher.blind_index("name", name))
    matches = sorted(session.scalars(query.limit(MAX_MATCHES)).all(), key=lambda r: r.id)
    area = None if user.region_id is None else set(subtree_ids(session, user.region_id))
    in_area = [
        resident
        for resident in matches
        if area is None or resident.region_id in area or resident.current_region_id in area
    ]
    shown = in_area[:limit]
    if id_number and masked is None:
        for resident in shown:
            remember_id_prefix(ctx, resident, id_number)
    _audit_reads(session, ctx, user, [resident.id for resident in shown])
    more = [{"resident_id": in_area[limit].id}] if one_more and len(in_area) > limit else []
    return resident_views(session, ctx, shown) + more


def remember_id_prefix(ctx: Context, resident: Resident, id_number: str) -> None:
    """Fill the first-six-and-last-four index of a person enrolled before it existed, from their
    full number (just matched against its keyed hash). No flush."""
    parts = id_number_parts(id_number)
    if resident.id_prefix_index is None and parts is not None:
        resident.id_prefix_index = ctx.cipher.id_prefix_index(*parts)


def resident_for_staff(
    session: Session, ctx: Context, user: StaffUser, resident_id: int
) -> dict[str, Any]:
    """One person, with their partner's masked ID number; an audited read. No commit."""
    resident = session.scalar(
        select(Resident).where(Resident.id == resident_id, _in_area(session, user))
    )
    if resident is None:
        raise NotFound(f"no resident {resident_id} in your area", code="resident_unknown")
    view = resident_view(session, ctx, resident)
    partner = session.scalar(
        select(Resident.id_number_last4)
        .join(
            Couple,
            ((Couple.partner_a_id == resident.id) & (Couple.partner_b_id == Resident.id))
            | ((Couple.partner_b_id == resident.id) & (Couple.partner_a_id == Resident.id)),
        )
        .where(Couple.active.is_(True))
    )
    view["partner"] = mask_id_number(partner) if partner else None
    _audit_reads(session, ctx, user, [resident.id])
    return view


def resident_id_by_number(
    session: Session, ctx: Context, user: StaffUser, id_number: str, *, field: str = "id_number"
) -> int:
    """The id of the person in the user's area with this ID number (404 otherwise)."""
    resident = session.scalar(
        select(Resident).where(
            Resident.id_number_hash == ctx.cipher.id_number_hash(id_number),
            _in_area(session, user),
        )
    )
    if resident is None:
        raise NotFound(
            "nobody in your area has this ID number",
            code="resident_unknown",
            field=field,
        )
    remember_id_prefix(ctx, resident, id_number)
    return resident.id


def reindex_residents(session: Session, ctx: Context, *, batch: int = 1000) -> int:
    """Fill the phone, name and date-of-birth-with-last-four indexes of residents enrolled before
    they existed (the first-six-and-last-four index needs the full number: `remember_id_prefix`).
    No commit."""
    done = 0
    after = 0
    while True:
        rows = session.scalars(
            select(Resident)
            .where(
                Resident.id > after,
                Resident.name_index.is_(None) | Resident.id_birth_index.is_(None),
            )
            .order_by(Resident.id)
            .limit(batch)
        ).all()
        if not rows:
            return done
        for resident in rows:
            resident.name_index = ctx.cipher.blind_index(
                "name", ctx.cipher.decrypt("name", resident.name_enc)
            )
            resident.id_birth_index = ctx.cipher.id_birth_index(
                ctx.cipher.decrypt_date("birth_date", resident.birth_date_enc),
                resident.id_number_last4,
            )
            if resident.phone_enc:
                resident.phone_index = ctx.cipher.blind_index(
                    "phone", ctx.cipher.decrypt("phone", resident.phone_enc)
                )
            after = resident.id
        done += len(rows)
        session.flush()


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


def ancestor_ids(session: Session, region_id: int) -> list[int]:
    """The regions above `region_id` (its parent, the parent's parent, ...)."""
    found: list[int] = []
    current = session.scalar(select(Region.parent_id).where(Region.id == region_id))
    for _ in range(16):
        if current is None:
            break
        found.append(current)
        current = session.scalar(select(Region.parent_id).where(Region.id == current))
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
    current_region_id: int | None = None,
    actor: str = "system",
) -> Resident:
    """Enrol a person; refuses a second enrolment of the same ID number. Does not commit."""
    id_hash = ctx.cipher.id_number_hash(id_number)
    if session.scalar(select(Resident.id).where(Resident.id_number_hash == id_hash)) is not None:
        raise Conflict("this ID number is already enrolled", code="resident_exists")
    parts = id_number_parts(id_number)
    resident = Resident(
        region_id=region_id,
        name_enc=ctx.cipher.encrypt("name", name),
        sex_enc=ctx.cipher.encrypt("sex", sex),
        birth_date_enc=ctx.cipher.encrypt_date("birth_date", birth_date),
        phone_enc=ctx.cipher.encrypt("phone", phone) if phone else None,
        id_number_hash=id_hash,
        id_number_last4=normalise_id_number(id_number)[-4:],
        current_region_id=current_region_id if current_region_id != region_id else None,
        phone_index=ctx.cipher.blind_index("phone", phone) if phone else None,
        name_index=ctx.cipher.blind_index("name", name),
        id_prefix_index=ctx.cipher.id_prefix_index(*parts) if parts else None,
        id_birth_index=ctx.cipher.id_birth_index(birth_date, normalise_id_number(id_number)[-4:]),
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
