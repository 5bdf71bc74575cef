"""Staff-card sign-in: a staff user signs in with their own staff card and its PIN, through the
desk's card service (cardsvc.service, POST /v1/card/sign-in).

1. `issue_challenge`: a random challenge bound to the server's origin, expiring after
   CHALLENGE_LIFETIME (cardsvc.signin.SignInChallenge); only its SHA-256 is kept.
2. The card service checks the origin, VERIFYs the PIN and has the card sign the challenge
   with its PIV authentication key (slot 9A), which the card refuses to use before the PIN.
3. `sign_in_with_card`: the challenge is one this server issued for this origin, unexpired and
   unused (it is used up now, whatever follows); the certificate chains to the city card CA, is
   valid, carries the staff policy and is the card's PIN-bound 9A certificate
   (`cardsvc.verify.STAFF_SIGN_IN_POLICY`; the 9E key signs without a PIN), is not revoked (the card revocation list or the staff card's
   own revocation); its GUID is linked to an active staff user (`assign`); the signature over the
   challenge verifies with the certificate's key. Then the same server-side session as a
   password sign-in opens (staff_auth.open_session, method "card"). Every refusal is audited
   with its reason.

Issuing (`certify`, `link_issued`, `card_holder`; the `/api/v1/staff-cards` calls that
`onecard card provision --staff` and the administrator's staff-card page use, as a resident's
card is issued): the card makes its 9E and 9A keys, the city card CA certifies both as a staff
card's (the 9A one PIN-bound) with the CHUID, and answers the card's diversified management key
and PUK (server.services.provisioning); the card is linked to the user only when written, by its
9A certificate, so a card pulled mid-way is never linked. Audited as `staff_card.certify` and
`staff_card.assign` (`by: issued`).

Linking and revoking (`assign`, `revoke` for the command line; `link`, `revoke_for` and
`cards_of` for the administrator's page, scoped like the other user pages): a card is named by
its GUID, or by its certificate, which must then be a staff card's of the city card CA, valid
now (its issue and expiry dates are kept). Revoking a staff card refuses it here at once and puts
it on the card revocation list, so kiosks refuse it for maintenance too. Each is audited
(`staff_card.assign`, `staff_card.revoke` with its reason).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cardsvc.errors import CardVerificationError, VerificationFailure
from cardsvc.signin import SIGN_IN_NONCE_LENGTH, SignInChallenge, verify_sign_in_signature
from cardsvc.verify import CardRole, verify_certificate
from server.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from server.services.context import Context
from server.services.provisioning import ProvisioningConfig, certify_keys, p256_key, secrets_of
from server.services.staff_auth import SignInResult, open_session, user_in_reach
from server.store import audit
from server.store.models import Card, CardRevocation, StaffCard, StaffCardChallenge, StaffUser

CHALLENGE_LIFETIME = dt.timedelta(minutes=2)
REVOKE_REASONS = ("lost", "stolen", "damaged", "holder_left", "revoked")
"""Why a staff card is revoked; "revoked" (no reason given) is the command line's default."""


class StaffCardStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"  # its certificate, as last seen
    REVOKED = "revoked"


@dataclass(frozen=True)
class CardIdentity:
    """A staff card as an administrator names it: its GUID, and its certificate's validity when
    named by the certificate."""

    guid: str
    issued_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normal_guid(text: str) -> str:
    """A card GUID as 32 lower-case hex characters (accepts the UUID form too)."""
    try:
        return uuid.UUID(text.strip()).hex
    except ValueError as exc:
        raise InvalidRequest(
            f"{text!r} is not a card GUID", code="field_invalid", field="guid"
        ) from exc


def issue_challenge(session: Session, ctx: Context, origin: str) -> SignInChallenge:
    """A new single-use challenge for `origin` (this server as the browser reaches it)."""
    expires = ctx.now() + CHALLENGE_LIFETIME
    challenge = SignInChallenge(
        origin, secrets.token_bytes(SIGN_IN_NONCE_LENGTH), int(expires.timestamp() * 1000)
    )
    session.add(StaffCardChallenge(challenge_hash=_hash(challenge.to_bytes()), expires_at=expires))
    session.flush()
    return challenge


def _refuse(
    session: Session, ctx: Context, address: str, reason: str, **detail: str
) -> SignInResult:
    audit.append(
        session,
        at=ctx.now(),
        actor=f"address:{address[:64]}",
        action="staff.sign_in.failed",
        subject=f"staff-card:{detail['card']}" if "card" in detail else "staff-card:unknown",
        detail={"method": "card", "reason": reason, **detail},
    )
    return SignInResult(refusal=reason)


def sign_in_with_card(
    session: Session,
    ctx: Context,
    *,
    origin: str,
    challenge_bytes: bytes,
    certificate_der: bytes,
    signature: bytes,
    address: str,
) -> SignInResult:
    """Check a staff card's answer to a challenge; open a session when it holds. Commits
    nothing; the caller commits (refusals are audited, so commit them too)."""
    if ctx.card_ca_der is None:
        raise ServiceUnavailable("the card CA is not configured", code="card_ca_not_configured")
    now = ctx.now()
    try:
        challenge = SignInChallenge.parse(challenge_bytes)
    except ValueError:
        return _refuse(session, ctx, address, "challenge_unknown")
    row = session.scalar(
        select(StaffCardChallenge)
        .where(StaffCardChallenge.challenge_hash == _hash(challenge_bytes))
        .with_for_update()
    )
    if row is None or challenge.origin != origin:
        return _refuse(session, ctx, address, "challenge_unknown")
    if row.used_at is not None:
        return _refuse(session, ctx, address, "challenge_used")
    row.used_at = now
    if audit.as_utc(row.expires_at) <= now:
        return _refuse(session, ctx, address, "challenge_expired")
    try:
        card = verify_certificate(certificate_der, ctx.card_ca_der, now=now)
    except CardVerificationError as exc:
        return _refuse(session, ctx, address, f"card_{exc.reason.value}")
    guid = card.guid.hex()
    if card.role is not CardRole.STAFF:
        return _refuse(session, ctx, address, "not_staff_card", card=guid)
    if not card.pin_bound:  # e.g. the 9E certificate, whose key signs without the PIN
        return _refuse(session, ctx, address, "not_pin_bound_key", card=guid)
    linked = session.get(StaffCard, guid)
    revoked = session.scalar(select(CardRevocation.seq).where(CardRevocation.card_guid == guid))
    if revoked is not None or (linked is not None and linked.revoked_at is not None):
        return _refuse(session, ctx, address, "card_revoked", card=guid)
    if linked is None:
        return _refuse(session, ctx, address, "card_unassigned", card=guid)
    user = session.get(StaffUser, linked.user_id)
    if user is None or not user.active:
        return _refuse(session, ctx, address, "user_disabled", card=guid)
    try:
        verify_sign_in_signature(card.certificate.public_key(), challenge, signature)
    except CardVerificationError:
        return _refuse(session, ctx, address, "bad_signature", card=guid)
    # The certificate just verified is the card's as it is now (a renewal changes it).
    linked.issued_at = card.certificate.not_valid_before_utc
    linked.expires_at = card.not_after
    token = open_session(session, ctx, user, "card", address)
    return SignInResult(token=token, user_id=user.id)


def _certificate_der(text: str) -> bytes | None:
    """A certificate pasted as PEM, or as base64 of its DER; None if it is neither."""
    if text.startswith("-----BEGIN"):
        return text.encode("ascii", "replace")
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return der if der[:1] == b"\x30" else None  # a DER SEQUENCE


_CERTIFICATE_REFUSALS = {
    VerificationFailure.UNTRUSTED_ISSUER: "certificate_untrusted",
    VerificationFailure.EXPIRED: "certificate_expired",
    VerificationFailure.NOT_YET_VALID: "certificate_expired",
}


def identify(ctx: Context, text: str) -> CardIdentity:
    """A staff card named by its GUID (hex or UUID form) or by its certificate (PEM, or base64
    of DER); a certificate must be a staff card's of the city card CA, valid now."""
    text = text.strip()
    if not text:
        raise InvalidRequest(
            "give the card's GUID or certificate", code="card_missing", field="card"
        )
    try:
        return CardIdentity(uuid.UUID(text).hex)
    except ValueError:
        pass
    der = _certificate_der(text)
    if der is None:
        raise InvalidRequest(
            "neither a card GUID nor a certificate", code="card_text_invalid", field="card"
        )
    if ctx.card_ca_der is None:
        raise ServiceUnavailable("the card CA is not configured", code="card_ca_not_configured")
    try:
        card = verify_certificate(der, ctx.card_ca_der, now=ctx.now())
    except CardVerificationError as exc:
        raise InvalidRequest(
            f"the certificate is refused: {exc.reason.value}",
            code=_CERTIFICATE_REFUSALS.get(exc.reason, "certificate_malformed"),
            field="card",
        ) from exc
    if card.role is not CardRole.STAFF:
        raise InvalidRequest("this is a resident's card", code="not_staff_card", field="card")
    return CardIdentity(card.guid.hex(), card.certificate.not_valid_before_utc, card.not_after)


def _refuse_known(session: Session, guid: str) -> None:
    """A GUID already linked, revoked or a resident's cannot become a new staff card's."""
    if session.get(StaffCard, guid) is not None:
        raise Conflict(f"card {guid} is already assigned", code="card_assigned", field="card")
    if session.scalar(select(CardRevocation.seq).where(CardRevocation.card_guid == guid)):
        raise Conflict(f"card {guid} is revoked", code="card_revoked", field="card")
    if session.scalar(select(Card.id).where(Card.guid == guid)) is not None:
        raise Conflict(f"card {guid} is a resident's card", code="not_staff_card", field="card")


def _link(
    session: Session,
    ctx: Context,
    user: StaffUser,
    card: CardIdentity,
    actor: str,
    *,
    issued: bool = False,
) -> str:
    guid = card.guid
    _refuse_known(session, guid)
    session.add(
        StaffCard(
            guid=guid,
            user_id=user.id,
            assigned_at=ctx.now(),
            issued_at=card.issued_at,
            expires_at=card.expires_at,
        )
    )
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="staff_card.assign",
        subject=f"staff-card:{guid}",
        detail={
            "user": user.id,
            "by": "issued" if issued else "guid" if card.expires_at is None else "certificate",
        },
    )
    return guid


def assign(session: Session, ctx: Context, name: str, card_text: str, *, actor: str = "cli") -> str:
    """Link a staff card (its GUID or certificate, see `identify`) to the staff user `name`.
    No commit."""
    card = identify(ctx, card_text)
    user = session.scalar(select(StaffUser).where(StaffUser.name == name))
    if user is None:
        raise NotFound(f"no user {name}", code="user_unknown")
    return _link(session, ctx, user, card, actor)


def link(session: Session, ctx: Context, admin: StaffUser, user_id: int, card_text: str) -> str:
    """An administrator links a staff card to a user in their area. No commit."""
    user = user_in_reach(session, admin, user_id)
    return _link(session, ctx, user, identify(ctx, card_text), f"user:{admin.id}")


def _user_named(session: Session, admin: StaffUser, name: str) -> StaffUser:
    """The active staff user `name`, in the administrator's area."""
    user_id = session.scalar(select(StaffUser.id).where(StaffUser.name == name))
    if user_id is None:
        raise NotFound(f"no user {name}", code="user_unknown")
    user = user_in_reach(session, admin, user_id)
    if not user.active:
        raise Conflict(f"user {name} is disabled", code="user_disabled")
    return user


def card_holder(session: Session, ctx: Context, guid_text: str) -> dict[str, Any]:
    """Whom the card `guid` was issued to, before a desk overwrites its keys: a staff user (and
    the card's state) or a resident; NotFound (`card_unknown`) for a card not issued."""
    guid = normal_guid(guid_text)
    staff_card = session.get(StaffCard, guid)
    if staff_card is not None:
        return {
            "card_guid": guid,
            "holder": "staff",
            "status": status_of(staff_card, ctx.now()).value,
        }
    resident_card = session.scalar(select(Card).where(Card.guid == guid))
    if resident_card is not None:
        return {"card_guid": guid, "holder": "resident", "status": resident_card.status.value}
    if session.scalar(select(CardRevocation.seq).where(CardRevocation.card_guid == guid)):
        return {"card_guid": guid, "holder": "staff", "status": StaffCardStatus.REVOKED.value}
    raise NotFound(f"no card {guid}", code="card_unknown")


def certify(
    session: Session,
    ctx: Context,
    cfg: ProvisioningConfig,
    admin: StaffUser,
    user_name: str,
    public_key_der: bytes,
    sign_in_key_der: bytes,
    guid: bytes | None,
) -> dict[str, Any]:
    """A staff card's certificates (9E, and 9A PIN-bound) and CHUID for the keys the card made,
    with its management key and PUK, for user `user_name` in the administrator's area. Links
    nothing (`link_issued` does, once the card is written). No commit."""
    user = _user_named(session, admin, user_name)
    public_key = p256_key(public_key_der, "public_key")
    sign_in_key = p256_key(sign_in_key_der, "sign_in_public_key")
    guid = guid or uuid.uuid4().bytes
    _refuse_known(session, guid.hex())
    answer = certify_keys(ctx, cfg, public_key, guid, sign_in_key=sign_in_key)
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{admin.id}",
        action="staff_card.certify",
        subject=f"staff-card:{guid.hex()}",
        detail={"user": user.id, "expiry": answer["expiry"]},
    )
    return {**answer, **secrets_of(cfg, guid)}


def link_issued(
    session: Session, ctx: Context, admin: StaffUser, user_name: str, certificate_der: bytes
) -> str:
    """Link the staff card just written to user `user_name`, by its PIN-bound 9A certificate
    (the last step of issuing it). No commit."""
    user = _user_named(session, admin, user_name)
    card = identify(ctx, base64.b64encode(certificate_der).decode())
    if not verify_certificate(certificate_der, ctx.card_ca_der or b"", now=ctx.now()).pin_bound:
        raise InvalidRequest(
            "give the card's sign-in (9A) certificate", code="not_pin_bound_key", field="card"
        )
    return _link(session, ctx, user, card, f"user:{admin.id}", issued=True)


def revoke(
    session: Session,
    ctx: Context,
    guid_text: str,
    *,
    actor: str = "cli",
    reason: str = "revoked",
) -> str:
    """Revoke a staff card: no more sign-ins with it, and on the revocation list kiosks read.
    Revoking a revoked card changes nothing. No commit."""
    guid = normal_guid(guid_text)
    if reason not in REVOKE_REASONS:
        raise InvalidRequest(f"no reason {reason!r}", code="field_invalid", field="reason")
    card = session.get(StaffCard, guid)
    if card is None:
        raise NotFound(f"no staff card {guid}", code="card_unknown")
    if card.revoked_at is None:
        card.revoked_at = ctx.now()
        card.revoke_reason = reason
        if (
            session.scalar(select(CardRevocation.seq).where(CardRevocation.card_guid == guid))
            is None
        ):
            session.add(CardRevocation(card_guid=guid, reason=reason, revoked_at=ctx.now()))
        audit.append(
            session,
            at=ctx.now(),
            actor=actor,
            action="staff_card.revoke",
            subject=f"staff-card:{guid}",
            detail={"user": card.user_id, "reason": reason},
        )
    return guid


def revoke_for(
    session: Session, ctx: Context, admin: StaffUser, user_id: int, guid_text: str, reason: str
) -> str:
    """An administrator revokes a staff card of a user in their area. No commit."""
    user_in_reach(session, admin, user_id)
    guid = normal_guid(guid_text)
    card = session.get(StaffCard, guid)
    if card is None or card.user_id != user_id:
        raise NotFound(f"user {user_id} has no staff card {guid}", code="card_unknown")
    return revoke(session, ctx, guid, actor=f"user:{admin.id}", reason=reason)


def status_of(card: StaffCard, now: dt.datetime) -> StaffCardStatus:
    if card.revoked_at is not None:
        return StaffCardStatus.REVOKED
    if card.expires_at is not None and audit.as_utc(card.expires_at) <= now:
        return StaffCardStatus.EXPIRED
    return StaffCardStatus.ACTIVE


def cards_of(
    session: Session,
    ctx: Context,
    admin: StaffUser,
    user_id: int,
    *,
    after: int = 0,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """One page of a user's staff cards (the user in the administrator's area), newest link
    first; `after` is how many came on the pages before, and each row's `n` its place."""
    user_in_reach(session, admin, user_id)
    rows = session.scalars(
        select(StaffCard)
        .where(StaffCard.user_id == user_id)
        .order_by(StaffCard.assigned_at.desc(), StaffCard.guid)
        .offset(after)
        .limit(limit)
    ).all()
    now = ctx.now()
    return [
        {
            "n": after + i + 1,
            "guid": card.guid,
            "assigned_at": audit.as_utc(card.assigned_at),
            "issued_at": audit.as_utc(card.issued_at) if card.issued_at else None,
            "expires_at": audit.as_utc(card.expires_at) if card.expires_at else None,
            "revoked_at": audit.as_utc(card.revoked_at) if card.revoked_at else None,
            "revoke_reason": card.revoke_reason,
            "status": status_of(card, now),
        }
        for i, card in enumerate(rows)
    ]


def prune_challenges(session: Session, ctx: Context) -> int:
    """Forget challenges past their expiry (used or not: an expired one is refused either way,
    as unknown once forgotten). Returns how many. No commit."""
    result = session.execute(
        delete(StaffCardChallenge).where(StaffCardChallenge.expires_at < ctx.now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
