"""Provisioning a card for a resident (technician side): the card makes its 9E key, the city
card CA certifies it, and the certificate and the CHUID are written. A staff card
(`SignInCardIssuer`, e.g. `CardCA.staff_issuer()`) also gets a PIV authentication key (slot 9A,
used by the card only after its PIN) and its certificate, the one staff sign in with.

Order of writes: the certificate first, the CHUID last. A card pulled midway has no CHUID for
its new key, so it is never mistaken for an issued card; provisioning it again starts over
(a new key, a new GUID unless the caller passes the old one).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import InvalidPinError
from .piv import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    Algorithm,
    ManagementKeyType,
    ObjectId,
    PivSession,
    Slot,
)
from .profile import Chuid

DEFAULT_VALID_DAYS = 5 * 365


class CardIssuer(Protocol):
    """What provisioning needs from the city card CA (local `CardCA`, or a server client)."""

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, guid: bytes, not_after: datetime
    ) -> bytes: ...

    def sign_detached(self, content: bytes) -> bytes: ...


@runtime_checkable
class SignInCardIssuer(CardIssuer, Protocol):
    """A CA that also certifies a staff card's PIN-bound 9A key (cardsvc.ca.StaffCardIssuer)."""

    def issue_sign_in(
        self, public_key: ec.EllipticCurvePublicKey, guid: bytes, not_after: datetime
    ) -> bytes: ...


@dataclass(frozen=True)
class ProvisionedCard:
    guid: bytes
    certificate_der: bytes
    expiry: date
    public_key_der: bytes
    sign_in_certificate_der: bytes | None = None  # a staff card's 9A certificate


def new_guid() -> bytes:
    """A random card GUID (an RFC 4122 version-4 UUID)."""
    return uuid.uuid4().bytes


def diversify_management_key(
    master_secret: bytes, guid: bytes, key_type: ManagementKeyType = ManagementKeyType.AES128
) -> bytes:
    """The card's own management key: HMAC-SHA256(master, "ONECARD-MGMT-v1" | GUID), cut."""
    digest = hmac.new(master_secret, b"ONECARD-MGMT-v1\x00" + guid, hashlib.sha256).digest()
    return digest[: key_type.key_length].ljust(key_type.key_length, b"\x00")


def provision_card(
    piv: PivSession,
    ca: CardIssuer,
    *,
    management_key: bytes = DEFAULT_MANAGEMENT_KEY,
    management_key_type: ManagementKeyType = ManagementKeyType.TDES,
    valid_days: int = DEFAULT_VALID_DAYS,
    guid: bytes | None = None,
    new_management_key: tuple[ManagementKeyType, bytes] | None = None,
    pin: str | None = None,
    now: datetime | None = None,
) -> ProvisionedCard:
    """Provision the card behind `piv`; see the module docstring for the order of steps.

    `new_management_key` replaces the management key at the end (issue the card its
    diversified key); `pin` replaces the default PIN 123456.
    """
    now = now or datetime.now(UTC)
    guid = guid or new_guid()
    expiry = (now + timedelta(days=valid_days)).date()
    not_after = datetime.combine(expiry, time(23, 59, 59), tzinfo=UTC)
    piv.select()
    piv.authenticate(management_key, management_key_type)
    public_key = piv.generate_key(Slot.CARD_AUTH, Algorithm.ECCP256)
    certificate = ca.issue(public_key, guid, not_after)
    piv.put_certificate(Slot.CARD_AUTH, certificate)
    sign_in_certificate = None
    if isinstance(ca, SignInCardIssuer):
        sign_in_key = piv.generate_key(Slot.AUTHENTICATION, Algorithm.ECCP256)
        sign_in_certificate = ca.issue_sign_in(sign_in_key, guid, not_after)
        piv.put_certificate(Slot.AUTHENTICATION, sign_in_certificate)
    unsigned = Chuid(guid, expiry)
    chuid = Chuid(guid, expiry, unsigned.fasc_n, ca.sign_detached(unsigned.signed_content()))
    piv.put_object(ObjectId.CHUID, chuid.to_bytes())
    if pin is not None:
        piv.change_pin(DEFAULT_PIN, pin)
    if new_management_key is not None:
        piv.set_management_key(*new_management_key)
    return ProvisionedCard(
        guid,
        certificate,
        expiry,
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        sign_in_certificate,
    )


def generate_keys(
    piv: PivSession, *, sign_in: bool = False
) -> tuple[ec.EllipticCurvePublicKey, ec.EllipticCurvePublicKey | None]:
    """The card makes its 9E key and, for a staff card (`sign_in`), its PIN-bound 9A key; their
    public keys. `piv` is authenticated already."""
    public_key = piv.generate_key(Slot.CARD_AUTH, Algorithm.ECCP256)
    sign_in_key = piv.generate_key(Slot.AUTHENTICATION, Algorithm.ECCP256) if sign_in else None
    return public_key, sign_in_key


def spki(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, as the server's certify calls take it."""
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def set_puk(piv: PivSession, puk: str, default_management: bool) -> None:
    """Give the card its own PUK. A card still on the default management key may carry the
    default PUK or, after an interrupted run, this PUK already; a card on its own management key
    got its PUK before that key was set (the management key is the last thing changed)."""
    if not default_management:
        return
    try:
        piv.change_puk(DEFAULT_PUK, puk)
    except InvalidPinError as exc:
        if not exc.puk:
            raise
        piv.change_puk(puk, puk)  # set already: the card's own PUK resets the counter


def finish_card(
    piv: PivSession,
    certificate_der: bytes,
    chuid: bytes,
    *,
    puk: str | None = None,
    pin: str | None = None,
    management_key: tuple[ManagementKeyType, bytes] | None = None,
    default_management: bool = False,
    sign_in_certificate_der: bytes | None = None,
    step: Callable[[str], None] = lambda _: None,
) -> None:
    """The card-side steps after the server certified the card's new key, in their order: the
    certificate (and a staff card's 9A certificate, `sign_in_certificate_der`) and the
    server-signed CHUID; then, for an issuance, the PUK and the holder's PIN (RESET RETRY
    COUNTER with the PUK sets it whatever it was); the card's own management key last. A
    renewal passes only the certificate and the CHUID. `piv` is authenticated already."""
    step("write certificate and CHUID")
    piv.put_certificate(Slot.CARD_AUTH, certificate_der)
    if sign_in_certificate_der is not None:
        piv.put_certificate(Slot.AUTHENTICATION, sign_in_certificate_der)
    piv.put_object(ObjectId.CHUID, chuid)
    if puk is not None and pin is not None:
        step("set PIN")
        set_puk(piv, puk, default_management)
        piv.unblock_pin(puk, pin)
    if management_key is not None:
        step("set management key")
        piv.set_management_key(*management_key)


__all__ = [
    "DEFAULT_VALID_DAYS",
    "CardIssuer",
    "ProvisionedCard",
    "SignInCardIssuer",
    "diversify_management_key",
    "finish_card",
    "generate_keys",
    "spki",
    "set_puk",
    "new_guid",
    "provision_card",
]
