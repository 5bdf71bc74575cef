"""The one-card profile on top of PIV: what a city card holds and how a kiosk reads it.

On the card (SP 800-73-4 objects):
- CHUID (5FC102): FASC-N (30, the non-federal "9999" issuer form), card GUID (34), expiry
  (35, ASCII YYYYMMDD), issuer signature (3E, detached CMS by the city card CA), LRC (FE);
- the card-authentication key (slot 9E, ECC P-256, generated on the card; it never leaves it);
- the 9E certificate (5FC101), issued by the city card CA, naming only the card GUID (ca.py).
No name, no ID number, no health data.

A staff card (issued with `CardCA.staff_issuer()`) holds the same, its 9E certificate carrying
the staff policy, and also a PIV authentication key (slot 9A, ECC P-256, generated on the card)
with its certificate (5FC105, `cardsvc.verify.STAFF_SIGN_IN_POLICY`). The card uses 9A only
after VERIFY PIN, as PIV requires; staff sign in with it (`sign_in`). Kiosks keep using 9E.

A tap is SELECT, GET DATA CHUID, GET DATA 9E certificate (skipped when the kiosk already has
it), GENERAL AUTHENTICATE 9E: four APDUs at most with extended APDUs, three with the cache.
Both objects are free-read and the 9E key needs no PIN, as PIV intends for physical access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

from . import tlv
from .errors import BadResponseError, TlvError
from .piv import Algorithm, ObjectId, PivSession, Slot
from .verify import TapChallenge

__all__ = [
    "CardData",
    "Chuid",
    "TapChallenge",
    "encode_fasc_n",
    "prove",
    "read_card",
    "sign_in",
]

TAG_FASC_N = 0x30
TAG_GUID = 0x34
TAG_EXPIRY = 0x35
TAG_ISSUER_SIGNATURE = 0x3E
TAG_LRC = 0xFE

# 5-bit BCD characters of the FASC-N (TIG SCEPACS): 4 data bits, least significant first, then
# odd parity.
_SS, _FS, _ES = 0xB, 0xD, 0xF


def _fasc_char(value: int) -> str:
    bits = "".join("1" if value >> i & 1 else "0" for i in range(4))
    return bits + ("0" if bits.count("1") % 2 else "1")


def encode_fasc_n(
    agency: str = "9999",
    system: str = "9999",
    credential: str = "999999",
    series: str = "0",
    issue: str = "1",
    person: str = "0000000000",
    org_category: str = "2",  # 2: state or local government (a city)
    org: str = "9999",
    association: str = "1",
) -> bytes:
    """The 25-byte FASC-N; the defaults are the non-federal issuer form (agency code 9999)."""
    fields = [agency, system, credential, series, issue]
    lengths = [4, 4, 6, 1, 1]
    for text, length in zip(fields, lengths, strict=True):
        if len(text) != length or not text.isdigit():
            raise ValueError(f"FASC-N field {text!r} must be {length} digits")
    tail = person + org_category + org + association
    if len(tail) != 16 or not tail.isdigit():
        raise ValueError("FASC-N PI/OC/OI/POA must be 10+1+4+1 digits")
    values = [_SS]
    for digits in fields:
        values += [int(c) for c in digits] + [_FS]
    values += [int(c) for c in tail] + [_ES]
    lrc = 0
    for value in values:
        lrc ^= value
    bits = "".join(_fasc_char(v) for v in values + [lrc])
    return int(bits, 2).to_bytes(25, "big")


NON_FEDERAL_FASC_N = encode_fasc_n()


@dataclass(frozen=True)
class Chuid:
    """The Card Holder Unique Identifier object, the subset the one-card uses."""

    guid: bytes
    expiry: date
    fasc_n: bytes = NON_FEDERAL_FASC_N
    issuer_signature: bytes = b""

    def signed_content(self) -> bytes:
        """The bytes the issuer signature covers: every object before tag 3E."""
        return (
            tlv.encode(TAG_FASC_N, self.fasc_n)
            + tlv.encode(TAG_GUID, self.guid)
            + tlv.encode(TAG_EXPIRY, self.expiry.strftime("%Y%m%d").encode())
        )

    def to_bytes(self) -> bytes:
        return (
            self.signed_content()
            + tlv.encode(TAG_ISSUER_SIGNATURE, self.issuer_signature)
            + tlv.encode(TAG_LRC)
        )

    @classmethod
    def parse(cls, contents: bytes) -> Chuid:
        objects = tlv.parse_dict(contents)
        guid = objects.get(TAG_GUID)
        if guid is None or len(guid) != 16:
            raise BadResponseError("the CHUID has no 16-byte GUID")
        expiry_text = objects.get(TAG_EXPIRY, b"")
        try:
            text = expiry_text.decode("ascii")
            if len(text) != 8 or not text.isdigit():
                raise ValueError(text)
            expiry = date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError as exc:
            raise BadResponseError(f"the CHUID expiry {expiry_text!r} is not YYYYMMDD") from exc
        return cls(
            guid,
            expiry,
            objects.get(TAG_FASC_N, b""),
            objects.get(TAG_ISSUER_SIGNATURE, b""),
        )


@dataclass(frozen=True)
class CardData:
    """What a kiosk reads from a card before it asks for a proof."""

    guid: bytes
    expiry: date
    certificate_der: bytes
    chuid: Chuid | None = field(default=None, compare=False, repr=False)


def read_card(piv: PivSession, *, certificates: Mapping[bytes, bytes] | None = None) -> CardData:
    """SELECT the PIV application and read the CHUID and the 9E certificate.

    `certificates` maps card GUIDs to certificates the caller has already read (and verified);
    a card found there costs one APDU less.
    """
    piv.select()
    try:
        chuid = Chuid.parse(piv.get_object(ObjectId.CHUID))
    except TlvError as exc:
        raise BadResponseError(f"malformed CHUID: {exc}") from exc
    certificate = (certificates or {}).get(chuid.guid)
    if certificate is None:
        try:
            certificate = piv.get_certificate(Slot.CARD_AUTH)
        except TlvError as exc:
            raise BadResponseError(f"malformed certificate object: {exc}") from exc
    return CardData(chuid.guid, chuid.expiry, certificate, chuid)


def prove(piv: PivSession, challenge: TapChallenge) -> bytes:
    """Have the card sign SHA-256(challenge) with its 9E key; the DER ECDSA signature."""
    return piv.sign_digest(Slot.CARD_AUTH, challenge.digest(), Algorithm.ECCP256)


def sign_in(piv: PivSession, pin: str, digest: bytes) -> tuple[bytes, bytes]:
    """A staff card's answer to a sign-in challenge's `digest`: its 9A certificate and the 9A
    key's DER ECDSA signature, after VERIFY `pin` (without it the card refuses 9A, SW 6982).
    A card without a 9A certificate raises `NotFoundError` before the PIN is tried."""
    piv.select()
    try:
        certificate = piv.get_certificate(Slot.AUTHENTICATION)
    except TlvError as exc:
        raise BadResponseError(f"malformed certificate object: {exc}") from exc
    piv.verify_pin(pin)
    return certificate, piv.sign_digest(Slot.AUTHENTICATION, digest, Algorithm.ECCP256)
