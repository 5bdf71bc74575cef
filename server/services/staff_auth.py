"""Staff sign-in: passwords (argon2id), revocable sessions, throttled failures, bearer tokens with
an expiry, and the administrators' user operations (create, reset, disable).

Sessions. A browser that signs in gets a random token (in the session cookie, server.web.auth);
the server keeps only its SHA-256 in `staff_sessions`. A session ends when its user signs out,
when it has been idle longer than the idle timeout, after the absolute lifetime, and for every
session of a user at once when the user is disabled or their password is set or reset.

Failed sign-ins (the throttle). Failures are counted per (user name, client address) and per
user name. The pair is locked after PAIR_FREE_FAILURES, for 30 s doubling with each further
failure up to PAIR_MAX_LOCK: guessing from one place stops quickly. The user name alone is
locked only after USER_FREE_FAILURES failures from anywhere, and only for USER_LOCK: a stranger
elsewhere on the network can slow a colleague's sign-in down for a minute at a time, never lock
them out for long, while guessing from many places is held to a few tries a minute. A success
clears the pair's count and the user's. Unknown user names are treated exactly like known ones
(same throttle, same work: an argon2 verification against a dummy hash), so the answer does not
tell which names exist. Every sign-in, failure, lock and sign-out is in the audit log.

Bearer tokens (scripts, the command line) live in `staff_tokens`: each has a label, an expiry
and can be revoked or rotated; `authenticate_token` is what the JSON API checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from server.services.context import Context
from server.services.people import in_scope, subtree_ids
from server.store import audit
from server.store.models import (
    Region,
    Role,
    SignInThrottle,
    StaffSession,
    StaffToken,
    StaffUser,
)

PAIR_FREE_FAILURES = 5
PAIR_FIRST_LOCK = dt.timedelta(seconds=30)
PAIR_MAX_LOCK = dt.timedelta(minutes=15)
USER_FREE_FAILURES = 20
USER_LOCK = dt.timedelta(seconds=60)
SESSION_LIFETIME = dt.timedelta(hours=12)
LAST_SEEN_GRANULARITY = dt.timedelta(seconds=30)  # idle tracking without a write per request
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 200
DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 366

# argon2id, the library's defaults (RFC 9106's second recommended option: 64 MiB, t=3, p=4).
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_problem(password: str, user_name: str) -> str | None:
    """Why a new password cannot be used (a stable code), or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return "password_too_short"
    if len(password) > MAX_PASSWORD_LENGTH:
        return "password_too_long"
    if password.strip().lower() == user_name.strip().lower():
        return "password_is_name"
    return None


def _check_password(password: str, user_name: str) -> None:
    problem = password_problem(password, user_name)
    if problem is not None:
        raise InvalidRequest(
            f"the password cannot be used: {problem}", code=problem, field="password"
        )


# --- signing in ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignInResult:
    """`token` (for the cookie) when it worked; else `refusal`: bad_credentials | locked |
    card_required (the right password, but the role signs in with a staff card)."""

    token: str | None = None
    user_id: int | None = None
    refusal: str | None = None
    locked_until: dt.datetime | None = None


def _throttle_row(session: Session, key: str) -> SignInThrottle | None:
    return session.get(SignInThrottle, key)


def _locked_until(session: Session, keys: list[str], now: dt.datetime) -> dt.datetime | None:
    latest = None
    for key in keys:
        row = _throttle_row(session, key)
        if row is not None and row.locked_until is not None:
            until = audit.as_utc(row.locked_until)
            if until > now and (latest is None or until > latest):
                latest = until
    return latest


def _count_failure(session: Session, key: str, now: dt.datetime, lock_for: Any) -> None:
    row = _throttle_row(session, key)
    if row is None:
        row = SignInThrottle(key=key, failures=0, updated_at=now)
        session.add(row)
    row.failures += 1
    row.updated_at = now
    duration = lock_for(row.failures)
    if duration is not None:
        row.locked_until = now + duration


def _pair_lock(failures: int) -> dt.timedelta | None:
    if failures < PAIR_FREE_FAILURES:
        return None
    return min(PAIR_FIRST_LOCK * 2 ** (failures - PAIR_FREE_FAILURES), PAIR_MAX_LOCK)


def _user_lock(failures: int) -> dt.timedelta | None:
    return USER_LOCK if failures >= USER_FREE_FAILURES and failures % 5 == 0 else None


def _throttle_keys(name: str, address: str) -> tuple[str, str]:
    folded = name.strip().lower()[:200]
    return f"pair:{folded}|{address[:64]}", f"user:{folded}"


def sign_in(
    session: Session,
    ctx: Context,
    name: str,
    password: str,
    address: str,
    *,
    card_roles: frozenset[Role] = frozenset(),
) -> SignInResult:
    """Check a user name and password; on success open a session. Commits nothing. A user whose
    role is in `card_roles` must sign in with their staff card (server.services.staff_cards):
    the right password is refused with `card_required` (and audited)."""
    now = ctx.now()
    pair_key, user_key = _throttle_keys(name, address)
    user = session.scalar(select(StaffUser).where(StaffUser.name == name.strip()))
    subject = f"user:{user.id}" if user is not None else "user:unknown"
    locked = _locked_until(session, [pair_key, user_key], now)
    if locked is not None:
        audit.append(
            session,
            at=now,
            actor=f"address:{address[:64]}",
            action="staff.sign_in.locked",
            subject=subject,
            detail={"name": name[:120], "until": locked.isoformat()},
        )
        return SignInResult(refusal="locked", locked_until=locked)
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        good = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        good = False
    if not good or user is None or not user.active or not user.password_hash:
        _count_failure(session, pair_key, now, _pair_lock)
        _count_failure(session, user_key, now, _user_lock)
        reason = "disabled" if user is not None and not user.active and good else "bad_password"
        audit.append(
            session,
            at=now,
            actor=f"address:{address[:64]}",
            action="staff.sign_in.failed",
            subject=subject,
            detail={"name": name[:120], "reason": reason},
        )
        return SignInResult(refusal="bad_credentials")
    for key in (pair_key, user_key):
        row = _throttle_row(session, key)
        if row is not None:
            session.delete(row)
    if user.role in card_roles:
        audit.append(
            session,
            at=now,
            actor=f"address:{address[:64]}",
            action="staff.sign_in.failed",
            subject=subject,
            detail={"name": name[:120], "reason": "card_required"},
        )
        return SignInResult(refusal="card_required")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    token = open_session(session, ctx, user, "password", address)
    return SignInResult(token=token, user_id=user.id)


def open_session(
    session: Session, ctx: Context, user: StaffUser, method: str, address: str
) -> str:
    now = ctx.now()
    token = secrets.token_urlsafe(32)
    session.add(
        StaffSession(
            user_id=user.id,
            token_hash=sha256_hex(token),
            method=method,
            created_at=now,
            last_seen_at=now,
        )
    )
    session.flush()
    audit.append(
        session,
        at=now,
        actor=f"user:{user.id}",
        action="staff.sign_in",
        subject=f"user:{user.id}",
        detail={"method": method, "address": address[:64]},
    )
    return token


@dataclass(frozen=True)
class SignedIn:
    """The user behind a live session, as the pages need it."""

    session_id: int
    user_id: int
    name: str
    role: Role
    region_id: int | None
    must_change_password: bool


def live_session(session: Session, ctx: Context, token: str, idle: dt.timedelta) -> SignedIn | None:
    """The signed-in user of a session token, or None when the session is unknown or ended.
    Ends a session found idle or past its lifetime. Commits nothing; the caller commits."""
    now = ctx.now()
    row = session.execute(
        select(StaffSession, StaffUser)
        .join(StaffUser, StaffUser.id == StaffSession.user_id)
        .where(StaffSession.token_hash == sha256_hex(token))
    ).first()
    if row is None:
        return None
    staff_session, user = row
    if staff_session.ended_at is not None:
        return None
    reason = None
    if not user.active:
        reason = "disabled"
    elif now - audit.as_utc(staff_session.last_seen_at) > idle:
        reason = "idle"
    elif now - audit.as_utc(staff_session.created_at) > SESSION_LIFETIME:
        reason = "lifetime"
    if reason is not None:
        _end(session, ctx, staff_session, reason)
        return None
    if now - audit.as_utc(staff_session.last_seen_at) > LAST_SEEN_GRANULARITY:
        staff_session.last_seen_at = now
    return SignedIn(
        session_id=staff_session.id,
        user_id=user.id,
        name=user.name,
        role=user.role,
        region_id=user.region_id,
        must_change_password=user.must_change_password,
    )


def _end(session: Session, ctx: Context, staff_session: StaffSession, reason: str) -> None:
    staff_session.ended_at = ctx.now()
    staff_session.end_reason = reason
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{staff_session.user_id}" if reason == "sign_out" else "system",
        action="staff.sign_out" if reason == "sign_out" else "staff.session.ended",
        subject=f"user:{staff_session.user_id}",
        detail={"session": staff_session.id, "reason": reason},
    )


def sign_out(session: Session, ctx: Context, token: str) -> None:
    staff_session = session.scalar(
        select(StaffSession).where(StaffSession.token_hash == sha256_hex(token))
    )
    if staff_session is not None and staff_session.ended_at is None:
        _end(session, ctx, staff_session, "sign_out")


def end_sessions(
    session: Session, ctx: Context, user_id: int, reason: str, *, keep: int | None = None
) -> int:
    """End every live session of a user (all but `keep`); how many were ended."""
    query = update(StaffSession).where(
        StaffSession.user_id == user_id, StaffSession.ended_at.is_(None)
    )
    if keep is not None:
        query = query.where(StaffSession.id != keep)
    ended = session.execute(
        query.values(ended_at=ctx.now(), end_reason=reason).execution_options(
            synchronize_session=False
        )
    ).rowcount
    if ended:
        audit.append(
            session,
            at=ctx.now(),
            actor="system",
            action="staff.session.ended",
            subject=f"user:{user_id}",
            detail={"reason": reason, "sessions": ended},
        )
    return int(ended or 0)


def change_password(
    session: Session, ctx: Context, signed_in: SignedIn, current: str, new: str
) -> None:
    """The user sets a new password (also after a reset); every other session ends."""
    user = session.get(StaffUser, signed_in.user_id)
    if user is None or not user.password_hash:
        raise Unauthenticated("no password to change", code="no_password")
    try:
        _hasher.verify(user.password_hash, current)
    except (VerificationError, InvalidHashError):
        raise InvalidRequest(
            "the current password is wrong", code="password_wrong", field="current"
        ) from None
    if new == current:
        raise InvalidRequest(
            "the new password must differ from the current one",
            code="password_unchanged",
            field="password",
        )
    _check_password(new, user.name)
    user.password_hash = hash_password(new)
    user.must_change_password = False
    user.password_changed_at = ctx.now()
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="staff.password.change",
        subject=f"user:{user.id}",
    )
    end_sessions(session, ctx, user.id, "password_changed", keep=signed_in.session_id)


# --- administrators' operations on users ---------------------------------------------------------


def _admin(session: Session, admin_id: int) -> StaffUser:
    admin = session.get(StaffUser, admin_id)
    if admin is None or not admin.active or admin.role is not Role.ADMINISTRATOR:
        raise Forbidden("this needs an administrator", code="role_required")
    return admin


def user_in_reach(session: Session, admin: StaffUser, user_id: int) -> StaffUser:
    user = session.get(StaffUser, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}", code="user_unknown")
    if admin.region_id is not None and (
        user.region_id is None or not in_scope(session, admin, user.region_id)
    ):
        raise Forbidden("this user is outside your area", code="out_of_scope")
    return user


def region_code_of(session: Session, region_id: int | None) -> str | None:
    if region_id is None:
        return None
    return session.scalar(select(Region.code).where(Region.id == region_id))


def region_id_in_reach(session: Session, admin: StaffUser, region_code: str | None) -> int | None:
    """The region a scoped thing may be given: inside the administrator's area. An empty code
    means the whole city, which only an administrator of the whole city may give."""
    if not region_code:
        if admin.region_id is not None:
            raise Forbidden(
                "only a city-wide administrator can give the whole city",
                code="out_of_scope",
                field="region",
            )
        return None
    region_id = session.scalar(select(Region.id).where(Region.code == region_code))
    if region_id is None:
        raise NotFound(f"no region {region_code}", code="region_unknown", field="region")
    if not in_scope(session, admin, region_id):
        raise Forbidden("this region is outside your area", code="out_of_scope", field="region")
    return region_id


def _new_user(
    session: Session,
    ctx: Context,
    *,
    name: str,
    role: Role,
    region_id: int | None,
    password: str,
    must_change: bool,
    actor: str,
    region_code: str | None,
) -> StaffUser:
    name = name.strip()
    if session.scalar(select(StaffUser.id).where(StaffUser.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists", code="user_exists", field="name")
    _check_password(password, name)
    user = StaffUser(
        name=name,
        role=role,
        region_id=region_id,
        # The legacy column (bearer tokens are in staff_tokens since migration 0009): a hash of
        # a secret nobody holds.
        token_hash=sha256_hex(secrets.token_urlsafe(32)),
        active=True,
        created_at=ctx.now(),
        password_hash=hash_password(password),
        must_change_password=must_change,
    )
    session.add(user)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="user.create",
        subject=f"user:{user.id}",
        detail={"role": role.value, "region": region_code},
    )
    return user


def create_user(
    session: Session,
    ctx: Context,
    admin_id: int,
    *,
    name: str,
    role: Role,
    region_code: str | None,
    password: str,
) -> StaffUser:
    """A new staff user with a first password, which they must change at their first sign-in.
    The administrator may give only their own area or a part of it."""
    admin = _admin(session, admin_id)
    region_id = region_id_in_reach(session, admin, region_code)
    return _new_user(
        session,
        ctx,
        name=name,
        role=role,
        region_id=region_id,
        password=password,
        must_change=True,
        actor=f"user:{admin.id}",
        region_code=region_code or None,
    )


def bootstrap_user(
    session: Session,
    ctx: Context,
    *,
    name: str,
    role: Role,
    region_code: str | None,
    password: str,
    must_change: bool = True,
) -> int:
    """A user made from the server's command line (the first administrator). No commit."""
    region_id = None
    if region_code:
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
    user = _new_user(
        session,
        ctx,
        name=name,
        role=role,
        region_id=region_id,
        password=password,
        must_change=must_change,
        actor="cli",
        region_code=region_code,
    )
    return user.id


def set_password(
    session: Session, ctx: Context, name: str, password: str, *, must_change: bool = True
) -> None:
    """From the server's command line: a user's password (e.g. one made before passwords
    existed). Every session of the user ends. No commit."""
    user = session.scalar(select(StaffUser).where(StaffUser.name == name))
    if user is None:
        raise NotFound(f"no user {name}", code="user_unknown")
    _check_password(password, user.name)
    user.password_hash = hash_password(password)
    user.must_change_password = must_change
    user.password_changed_at = ctx.now()
    audit.append(
        session, at=ctx.now(), actor="cli", action="user.password.reset", subject=f"user:{user.id}"
    )
    end_sessions(session, ctx, user.id, "password_reset")


def reset_password(
    session: Session, ctx: Context, admin_id: int, user_id: int, password: str
) -> None:
    """A temporary password, to be changed at the next sign-in; the user's sessions end."""
    admin = _admin(session, admin_id)
    user = user_in_reach(session, admin, user_id)
    _check_password(password, user.name)
    user.password_hash = hash_password(password)
    user.must_change_password = True
    user.password_changed_at = ctx.now()
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{admin.id}",
        action="user.password.reset",
        subject=f"user:{user.id}",
    )
    end_sessions(session, ctx, user.id, "password_reset")


def set_active(session: Session, ctx: Context, admin_id: int, user_id: int, active: bool) -> None:
    """Disable (every session and token stops working at once) or enable a user."""
    admin = _admin(session, admin_id)
    user = user_in_reach(session, admin, user_id)
    if user.id == admin.id and not active:
        raise Conflict("you cannot disable yourself", code="self_disable")
    user.active = active
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{admin.id}",
        action="user.enable" if active else "user.disable",
        subject=f"user:{user.id}",
    )
    if not active:
        end_sessions(session, ctx, user.id, "disabled")


def update_user(
    session: Session,
    ctx: Context,
    admin_id: int,
    user_id: int,
    *,
    role: Role,
    region_code: str | None,
) -> None:
    admin = _admin(session, admin_id)
    user = user_in_reach(session, admin, user_id)
    user.role = role
    user.region_id = region_id_in_reach(session, admin, region_code)
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{admin.id}",
        action="user.update",
        subject=f"user:{user.id}",
        detail={"role": role.value, "region": region_code or None},
    )
    end_sessions(session, ctx, user.id, "role_changed")


def list_users(
    session: Session, admin_id: int, *, after: int = 0, limit: int = 50
) -> list[dict[str, Any]]:
    """Users in the administrator's area, by id, one page."""
    admin = _admin(session, admin_id)
    query = (
        select(StaffUser, Region.code)
        .outerjoin(Region, Region.id == StaffUser.region_id)
        .where(StaffUser.id > after)
    )
    if admin.region_id is not None:
        query = query.where(StaffUser.region_id.in_(subtree_ids(session, admin.region_id)))
    rows = session.execute(query.order_by(StaffUser.id).limit(limit)).all()
    return [
        {
            "id": user.id,
            "name": user.name,
            "role": user.role,
            "region": code,
            "active": user.active,
            "must_change_password": user.must_change_password,
        }
        for user, code in rows
    ]


# --- bearer tokens ----------------------------------------------------------------------------------


def issue_token(
    session: Session,
    ctx: Context,
    user_id: int,
    *,
    label: str,
    days: int = DEFAULT_TOKEN_DAYS,
    actor: str = "cli",
) -> str:
    """A new bearer token for a user (shown once; only its hash is kept)."""
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise InvalidRequest(f"a token lives 1 to {MAX_TOKEN_DAYS} days", code="field_invalid")
    if session.get(StaffUser, user_id) is None:
        raise NotFound(f"no user {user_id}", code="user_unknown")
    token = "oc_" + secrets.token_urlsafe(32)
    row = StaffToken(
        user_id=user_id,
        token_hash=sha256_hex(token),
        label=label[:80],
        created_at=ctx.now(),
        expires_at=ctx.now() + dt.timedelta(days=days),
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        at=ctx.now(),
        actor=actor,
        action="token.issue",
        subject=f"token:{row.id}",
        detail={"user": user_id, "days": days, "label": row.label},
    )
    return token


def authenticate_token(session: Session, ctx: Context, token: str) -> StaffUser:
    """The active user of a live bearer token (401 otherwise)."""
    row = session.execute(
        select(StaffToken, StaffUser)
        .join(StaffUser, StaffUser.id == StaffToken.user_id)
        .where(StaffToken.token_hash == sha256_hex(token))
    ).first()
    if row is None:
        raise Unauthenticated("the bearer token is not valid", code="token_invalid")
    staff_token, user = row
    now = ctx.now()
    if staff_token.revoked_at is not None or not user.active:
        raise Unauthenticated("the bearer token is not valid", code="token_invalid")
    if audit.as_utc(staff_token.expires_at) <= now:
        raise Unauthenticated("the bearer token has expired", code="token_expired")
    return user


def authenticate_staff(
    session: Session, ctx: Context, authorization_header: str | None, *roles: Role
) -> StaffUser:
    """The user behind an `Authorization: Bearer` header, with one of `roles` (401/403)."""
    if not authorization_header or not authorization_header.startswith("Bearer "):
        raise Unauthenticated("a staff bearer token is required", code="token_missing")
    user = authenticate_token(session, ctx, authorization_header.removeprefix("Bearer ").strip())
    require_role(user, roles)
    return user


def require_role(user: StaffUser, roles: tuple[Role, ...]) -> None:
    if roles and user.role not in roles:
        raise Forbidden(
            f"this needs the role {' or '.join(r.value for r in roles)}", code="role_required"
        )


def create_user_with_token(
    session: Session,
    ctx: Context,
    name: str,
    role: Role | str,
    *,
    region_code: str | None = None,
    days: int = DEFAULT_TOKEN_DAYS,
) -> str:
    """From the server's command line: a user without a password, and a bearer token for their
    scripts (shown once; only its hash is kept). Commits."""
    role = Role(role)
    region_id = None
    if region_code is not None:
        region_id = session.scalar(select(Region.id).where(Region.code == region_code))
        if region_id is None:
            raise NotFound(f"no region {region_code}", code="region_unknown")
    if session.scalar(select(StaffUser.id).where(StaffUser.name == name)) is not None:
        raise Conflict(f"a user named {name!r} exists", code="user_exists")
    user = StaffUser(
        name=name,
        role=role,
        region_id=region_id,
        token_hash=sha256_hex(secrets.token_urlsafe(32)),  # legacy column, see _new_user
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
    token = issue_token(session, ctx, user.id, label="created with the user", days=days)
    session.commit()
    return token


def list_tokens(session: Session, ctx: Context) -> list[dict[str, Any]]:
    now = ctx.now()
    rows = session.execute(
        select(StaffToken, StaffUser.name)
        .join(StaffUser, StaffUser.id == StaffToken.user_id)
        .order_by(StaffToken.id)
    ).all()
    return [
        {
            "id": token.id,
            "user": name,
            "label": token.label,
            "created_at": audit.as_utc(token.created_at).isoformat(),
            "expires_at": audit.as_utc(token.expires_at).isoformat(),
            "state": "revoked"
            if token.revoked_at is not None
            else "expired"
            if audit.as_utc(token.expires_at) <= now
            else "live",
        }
        for token, name in rows
    ]


def revoke_token(session: Session, ctx: Context, token_id: int, *, actor: str = "cli") -> None:
    row = session.get(StaffToken, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}", code="token_unknown")
    if row.revoked_at is None:
        row.revoked_at = ctx.now()
        audit.append(
            session, at=ctx.now(), actor=actor, action="token.revoke", subject=f"token:{row.id}"
        )


def rotate_token(
    session: Session,
    ctx: Context,
    token_id: int,
    *,
    days: int = DEFAULT_TOKEN_DAYS,
    actor: str = "cli",
) -> str:
    """Revoke a token and issue its successor (same user, same label)."""
    row = session.get(StaffToken, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}", code="token_unknown")
    revoke_token(session, ctx, token_id, actor=actor)
    return issue_token(session, ctx, row.user_id, label=row.label, days=days, actor=actor)
