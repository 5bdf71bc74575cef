"""Staff-card sign-in: a staff user signs in with their own staff card and its PIN, through the
desk's card service (cardsvc.service, POST /v1/card/sign-in).

1. `issue_challenge`: a random challenge bound to the server's origin, expiring after
   CHALLENGE_LIFETIME (cardsvc.signin.SignInChallenge); only its SHA-256 is kept.
2. The card service checks the origin, VERIFYs the PIN and has the card sign the challenge.
3. `sign_in_with_card`: the challenge is one this server issued for this origin, unexpired and
   unused (it is used up now, whatever follows); the certificate chains to the city card CA, is
   valid, carries the staff policy, is not revoked (the card revocation list or the staff card's
   own revocation); its GUID is linked to an active staff user (`assign`); the signature over the
   challenge verifies with the certificate's key. Then the same server-side session as a
   password sign-in opens (staff_auth.open_session, method "card"). Every refusal is audited
   with its reason.

Revoking a staff card (`revoke`) refuses it here at once and puts it on the card revocation list,
so kiosks refuse it for maintenance too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cardsvc.errors import CardVerificationError
from cardsvc.signin import SIGN_IN_NONCE_LENGTH, SignInChallenge, verify_sign_in_signature
from cardsvc.verify import CardRole, verify_certificate
from server.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from server.services.context import Context
from server.services.staff_auth import SignInResult, open_session
from server.store import audit
from server.store.models import CardRevocation, StaffCard, StaffCardChallenge, StaffUser

CHALLENGE_LIFETIME = dt.timedelta(minutes=2)


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
    token = open_session(session, ctx, user, "card", address)
    return SignInResult(token=token, user_id=user.id)


def assign(session: Session, ctx: Context, name: str, guid_text: str, *, actor: str = "cli") -> str:
    """Link a staff card (by GUID) to the staff user `name`. No commit."""
    guid = normal_guid(guid_text)
    user = session.scalar(select(StaffUser).where(StaffUser.name == name))
    if user is None:
        raise NotFound(f"no user {name}", code="user_unknown")
    if session.get(StaffCard, guid) is not None:
        raise Conflict(f"card {guid} is already assigned", code="card_assigned")
    session.add(StaffCard(guid=guid, user_id=user.id, assigned_at=ctx.now()))
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="staff_card.assign",
        subject=f"staff-card:{guid}",
        detail={"user": user.id},
    )
    return guid


def revoke(session: Session, ctx: Context, guid_text: str, *, actor: str = "cli") -> str:
    """Revoke a staff card: no more sign-ins with it, and on the revocation list kiosks read.
    No commit."""
    guid = normal_guid(guid_text)
    card = session.get(StaffCard, guid)
    if card is None:
        raise NotFound(f"no staff card {guid}", code="card_unknown")
    if card.revoked_at is None:
        card.revoked_at = ctx.now()
        if (
            session.scalar(select(CardRevocation.seq).where(CardRevocation.card_guid == guid))
            is None
        ):
            session.add(CardRevocation(card_guid=guid, reason="revoked", revoked_at=ctx.now()))
        audit.append(
            session,
            at=ctx.now(),
            actor=actor,
            action="staff_card.revoke",
            subject=f"staff-card:{guid}",
        )
    return guid


def prune_challenges(session: Session, ctx: Context) -> int:
    """Forget challenges past their expiry (used or not: an expired one is refused either way,
    as unknown once forgotten). Returns how many. No commit."""
    result = session.execute(
        delete(StaffCardChallenge).where(StaffCardChallenge.expires_at < ctx.now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
