"""Card provisioning and the card lifecycle at the server (issue 3): the operations behind the `/api/v1` calls (server/api/provisioning.py) a
technician's `onecard card provision|renew|replace|unblock-pin` and a kiosk's revocation
download use, and the service functions behind them.

Who holds what:
- The city card CA's private key (`ONECARD_CARD_CA_DIR`: `ca-key.pem`, `ca-cert.pem`, as
  `cardsvc.ca` lays them out) is on the server side only. A technician's desk sends the public
  key the card generated; the server signs the 9E certificate and the CHUID.
- The management-key master secret (`ONECARD_CARD_MASTER_KEY`, base64 of 32 bytes; unset: a key
  file `card-master.key` placed like the server's other development keys) never leaves the
  server. The server diversifies it per card GUID (`cardsvc.provision.diversify_management_key`,
  the same HMAC) and hands a technician the key of *one* card, audited. A stolen desk, or a
  technician's token, therefore exposes the cards it touched, never the master; and any desk
  can resume or re-provision any card without holding a secret of its own. The PUK is
  diversified the same way (8 digits), so a technician can unblock a holder's PIN at any desk.
- Issuance is recorded only by `POST /api/v1/cards` (server.services.issue_card), the last step:
  a certificate signed here for a card that never got that far is not an issued card (the
  server refuses its taps as `card_unknown`); every signature made here is in the audit log.

The revocation list for kiosks is a journal (`card_revocations`): one numbered row per card that
is no longer active (revoked, or replaced by a newer card). `GET /api/v1/revocations?since=N`
answers the rows after N and the current version, signed with the server's Ed25519 key over the
canonical JSON of the answer (as kiosk configurations are), so a kiosk keeps it and trusts it
offline. Rows are added when the list is read for any card whose status left `active` by any
path (the revoke call, a replacement), so no writer of card status has to know about the list;
the journalling and the version live in server.services.kiosks (`revocation_version`), which the
kiosk configuration and the heartbeat's answer use too.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.orm import Session

from cardsvc.ca import CardCA
from cardsvc.profile import Chuid
from cardsvc.requestsig import canonical_json
from cardsvc.verify import CardRole, load_certificate
from server.config import (
    CARD_CA_DIR,
    CARD_MASTER_KEY,
    ConfigError,
    ServerConfig,
    database_url_of,
    is_production,
    secret_key,
    settings_reader,
    whole_number,
)
from server.errors import Conflict, Forbidden, InvalidRequest, NotFound, ServiceUnavailable
from server.services.context import Context
from server.services.kiosks import revocation_version
from server.services.people import in_scope
from server.store import audit
from server.store.models import Card, CardRevocation, CardStatus, Resident, Role, StaffUser

EXTENSION_KEY = "onecard_provisioning"
DEFAULT_VALID_DAYS = 5 * 365
MANAGEMENT_KEY_TYPE = "aes128"
MANAGEMENT_KEY_LENGTH = 16
GUID_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
MAX_DELTA = 10_000
TECHNICIANS = (Role.TECHNICIAN, Role.ADMINISTRATOR)


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisioningConfig:
    master_key: bytes
    ca: CardCA | None
    valid_days: int = DEFAULT_VALID_DAYS


def load_config(overrides: Mapping[str, Any] | ServerConfig | None) -> ProvisioningConfig:
    given = dict(overrides) if isinstance(overrides, Mapping) else {}
    setting = settings_reader(given)
    production = (
        overrides.production
        if isinstance(overrides, ServerConfig)
        else is_production(setting, database_url_of(setting))
    )
    master = secret_key(setting, CARD_MASTER_KEY, production=production)
    ca_dir = setting(CARD_CA_DIR)
    ca = None
    if ca_dir:
        try:
            ca = CardCA.load(ca_dir)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"ONECARD_CARD_CA_DIR: cannot load the card CA: {exc}") from exc
    valid_days = whole_number(setting, "ONECARD_CARD_VALID_DAYS", DEFAULT_VALID_DAYS)
    return ProvisioningConfig(master, ca, valid_days)


# --- per-card secrets ---------------------------------------------------------------------------


def management_key_for(master: bytes, guid: bytes) -> bytes:
    """The card's AES-128 management key; the same derivation as
    `cardsvc.provision.diversify_management_key` (the server may not import that module)."""
    digest = hmac.new(master, b"ONECARD-MGMT-v1\x00" + guid, hashlib.sha256).digest()
    return digest[:MANAGEMENT_KEY_LENGTH]


def puk_for(master: bytes, guid: bytes) -> str:
    """The card's PUK: 8 digits from its own HMAC domain."""
    digest = hmac.new(master, b"ONECARD-PUK-v1\x00" + guid, hashlib.sha256).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 100_000_000:08d}"


def secrets_of(cfg: ProvisioningConfig, guid: bytes) -> dict[str, str]:
    """A card's diversified management key and PUK, as the certify and secrets calls answer."""
    return {
        "management_key": base64.b64encode(management_key_for(cfg.master_key, guid)).decode(),
        "management_key_type": MANAGEMENT_KEY_TYPE,
        "puk": puk_for(cfg.master_key, guid),
    }


# --- services ------------------------------------------------------------------------------------


def _signing_ca(ctx: Context, cfg: ProvisioningConfig) -> CardCA:
    if cfg.ca is None:
        raise ServiceUnavailable(
            "this server holds no card CA key (ONECARD_CARD_CA_DIR)", code="card_ca_not_configured"
        )
    if ctx.card_ca_der is not None and ctx.card_ca_der != cfg.ca.certificate_der:
        raise ServiceUnavailable(
            "ONECARD_CARD_CA_DIR and ONECARD_CARD_CA_CERT name different CAs",
            code="card_ca_not_configured",
        )
    return cfg.ca


def _scoped_resident(session: Session, user: StaffUser, resident_id: int) -> Resident:
    resident = session.get(Resident, resident_id)
    if resident is None:
        raise NotFound(f"no resident {resident_id}", code="resident_unknown")
    if not in_scope(session, user, resident.region_id):
        raise Forbidden("this resident lives outside your area", code="out_of_scope")
    return resident


def certify_keys(
    ctx: Context,
    cfg: ProvisioningConfig,
    public_key: ec.EllipticCurvePublicKey,
    guid: bytes,
    *,
    sign_in_key: ec.EllipticCurvePublicKey | None = None,
) -> dict[str, Any]:
    """The certificate and the signed CHUID for `public_key` (9E) on card `guid`. With
    `sign_in_key`, a staff card's: both certificates carry the staff policy, and the 9A one
    (`sign_in_certificate`) is the PIN-bound one staff sign in with."""
    ca = _signing_ca(ctx, cfg)
    now = ctx.now()
    expiry = (now + dt.timedelta(days=cfg.valid_days)).date()
    not_after = dt.datetime.combine(expiry, dt.time(23, 59, 59), tzinfo=dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    role = CardRole.RESIDENT if sign_in_key is None else CardRole.STAFF
    certificate = ca.issue(public_key, guid, not_after, not_before=not_before, role=role)
    unsigned = Chuid(guid, expiry)
    chuid = Chuid(guid, expiry, unsigned.fasc_n, ca.sign_detached(unsigned.signed_content()))
    answer = {
        "card_guid": guid.hex(),
        "certificate": base64.b64encode(certificate).decode(),
        "chuid": base64.b64encode(chuid.to_bytes()).decode(),
        "expiry": expiry.isoformat(),
    }
    if sign_in_key is not None:
        sign_in = ca.issue(
            sign_in_key, guid, not_after, not_before=not_before, role=role, pin_bound=True
        )
        answer["sign_in_certificate"] = base64.b64encode(sign_in).decode()
    return answer


def p256_key(der: bytes, field: str) -> ec.EllipticCurvePublicKey:
    """A card's P-256 public key from its SubjectPublicKeyInfo; refused as `field` otherwise."""
    try:
        public_key = serialization.load_der_public_key(der)
    except ValueError:
        public_key = None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise InvalidRequest(
            f"{field} must be base64 of a P-256 SubjectPublicKeyInfo",
            code="field_invalid",
            field=field,
        )
    return public_key


def certify_card(
    session: Session,
    ctx: Context,
    cfg: ProvisioningConfig,
    user: StaffUser,
    resident_id: int,
    public_key_der: bytes,
    guid: bytes | None,
) -> dict[str, Any]:
    """Steps 2 and 4 of provisioning: sign the card's certificate and CHUID, and give the
    technician this card's management key and PUK. Records no issuance."""
    _scoped_resident(session, user, resident_id)
    public_key = p256_key(public_key_der, "public_key")
    guid = guid or uuid.uuid4().bytes
    existing = session.scalar(select(Card).where(Card.guid == guid.hex()))
    if existing is not None:
        raise Conflict(
            f"card {guid.hex()} is already issued ({existing.status.value}); renew or replace it",
            code="card_exists",
        )
    answer = certify_keys(ctx, cfg, public_key, guid)
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="card.certify",
        subject=f"card:{guid.hex()}",
        detail={"resident_id": resident_id, "expiry": answer["expiry"]},
    )
    return {**answer, **secrets_of(cfg, guid)}


def _card(session: Session, guid_hex: str) -> Card:
    card = (
        session.scalar(select(Card).where(Card.guid == guid_hex.lower()))
        if GUID_HEX.match(guid_hex)
        else None
    )
    if card is None:
        raise NotFound(f"no card {guid_hex}", code="card_unknown")
    return card


def card_view(session: Session, user: StaffUser, guid_hex: str) -> dict[str, Any]:
    card = _card(session, guid_hex)
    _scoped_resident(session, user, card.resident_id)
    return {
        "card_guid": card.guid,
        "resident_id": card.resident_id,
        "status": card.status.value,
        "not_after": card.not_after.isoformat(),
        "issued_at": card.issued_at.isoformat(),
    }


def card_secrets(
    session: Session,
    ctx: Context,
    cfg: ProvisioningConfig,
    user: StaffUser,
    guid_hex: str,
    purpose: str,
) -> dict[str, Any]:
    """A card's management key and PUK, for a technician who holds the card (audited). Also for
    a GUID the server has not recorded: a card pulled after its keys were changed but before its
    issuance was recorded has to be reachable to be provisioned again."""
    if not GUID_HEX.match(guid_hex):
        raise NotFound(f"no card {guid_hex}", code="card_unknown")
    card = session.scalar(select(Card).where(Card.guid == guid_hex.lower()))
    if card is not None:
        _scoped_resident(session, user, card.resident_id)
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="card.secrets",
        subject=f"card:{guid_hex.lower()}",
        detail={"purpose": purpose},
    )
    return {"card_guid": guid_hex.lower(), **secrets_of(cfg, bytes.fromhex(guid_hex))}


def renew_card(
    session: Session,
    ctx: Context,
    cfg: ProvisioningConfig,
    user: StaffUser,
    guid_hex: str,
) -> dict[str, Any]:
    """A new certificate and CHUID, with a new expiry, for the key an active card already has.
    The card keeps its GUID and key; the server records the new certificate at once (it names
    the same key, so a card that never gets it written still works until its old expiry)."""
    card = _card(session, guid_hex)
    _scoped_resident(session, user, card.resident_id)
    if card.status is not CardStatus.ACTIVE:
        raise Conflict(f"card {card.guid} is {card.status.value}", code="card_not_active")
    public_key = load_certificate(card.certificate).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    answer = certify_keys(ctx, cfg, public_key, bytes.fromhex(card.guid))
    certificate = base64.b64decode(answer["certificate"])
    card.certificate = certificate
    card.not_after = load_certificate(certificate).not_valid_after_utc
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="card.renew",
        subject=f"card:{card.guid}",
        detail={"expiry": answer["expiry"]},
    )
    return {**answer, **secrets_of(cfg, bytes.fromhex(card.guid))}


def revocations_since(session: Session, ctx: Context, since: int) -> dict[str, Any]:
    """The revocation list after version `since`, signed by the server key. When `since` is
    ahead of the server (a restored database), the whole list is sent (`full`: true)."""
    version = revocation_version(session, ctx)
    full = since > version
    rows = session.scalars(
        select(CardRevocation)
        .where(CardRevocation.seq > (0 if full else since))
        .order_by(CardRevocation.seq)
        .limit(MAX_DELTA)
    ).all()
    if len(rows) == MAX_DELTA:
        version = rows[-1].seq  # the kiosk asks again from there
    body = {
        "since": 0 if full else since,
        "version": version,
        "full": full,
        "issued_at": ctx.now().isoformat(),
        "added": [{"seq": r.seq, "card_guid": r.card_guid, "reason": r.reason} for r in rows],
    }
    signature = ctx.server_key.sign(canonical_json(body))
    return {**body, "signature": base64.b64encode(signature).decode()}
