"""The card package's one error hierarchy.

Every failure that cardsvc reports is a `CardError` with structured fields; the words for a
person are chosen only at the edges (CLI, kiosk screen, HTTP handler). `str(error)` gives a
plain English sentence for logs and for those edges that have nothing better.
"""

from __future__ import annotations

from enum import StrEnum


class CardError(Exception):
    """Base class of every error raised by cardsvc."""


# --- transport (PC/SC, vpcd) -------------------------------------------------------------


class TransportError(CardError):
    """The link to the card failed (reader, pcscd, socket)."""


class PcscdUnavailableError(TransportError):
    """pcscd is not running or cannot be reached."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        message = "pcscd is not running: start it with `pcscd --foreground` (Debian package pcscd)"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class NoReaderError(TransportError):
    """No smart-card reader is attached (or not the one asked for)."""

    def __init__(self, reader: str | None = None) -> None:
        self.reader = reader
        if reader:
            message = f"no smart-card reader named {reader!r} is attached"
        else:
            message = (
                "no smart-card reader is attached (for the virtual card: install vsmartcard-vpcd)"
            )
        super().__init__(message)


class CardRemovedError(TransportError):
    """The card left the reader before the command finished."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__("the card was removed before the command finished")


class NoCardError(TransportError):
    """There is no card in the reader."""

    def __init__(self, reader: str | None = None) -> None:
        self.reader = reader
        super().__init__(f"there is no card in the reader {reader!r}" if reader else "no card")


class ReaderBusyError(TransportError):
    """Another process holds the card in an exclusive transaction."""

    def __init__(self, reader: str | None = None) -> None:
        self.reader = reader
        super().__init__(f"the card in {reader!r} is in use by another program")


# --- encoding -------------------------------------------------------------------------------


class TlvError(CardError, ValueError):
    """Bytes that are not the BER-TLV expected (malformed, truncated, wrong tag)."""


class BadResponseError(CardError, ValueError):
    """The card answered, but not with what the command set allows (truncated, malformed)."""


# --- card status words ------------------------------------------------------------------------


class ApduError(CardError):
    """The card answered a command with an unexpected status word."""

    def __init__(self, sw: int, data: bytes = b"", message: str | None = None) -> None:
        self.sw = sw
        self.data = data
        super().__init__(message or f"the card refused the command (status word {sw:04X})")


class NotFoundError(ApduError):
    """File, object or application not found (6A82)."""


class SecurityStatusError(ApduError):
    """Security status not satisfied (6982): the PIN or the management key is needed first."""


class ApplicationNotAvailableError(ApduError):
    """The card has no PIV application (SELECT answered 6A82)."""

    def __init__(self, sw: int, data: bytes = b"") -> None:
        super().__init__(sw, data, "the card has no PIV application")


class InvalidPinError(ApduError):
    """A wrong PIN or PUK (63Cx); `attempts_remaining` says how many tries are left."""

    def __init__(
        self, attempts_remaining: int, sw: int | None = None, *, puk: bool = False
    ) -> None:
        self.attempts_remaining = attempts_remaining
        self.puk = puk
        what = "PUK" if puk else "PIN"
        plural = "attempt" if attempts_remaining == 1 else "attempts"
        super().__init__(
            sw if sw is not None else 0x63C0 | attempts_remaining,
            b"",
            f"wrong {what}: {attempts_remaining} {plural} left",
        )


class PinBlockedError(ApduError):
    """The PIN (or PUK) is blocked (6983)."""

    def __init__(self, sw: int = 0x6983, *, puk: bool = False) -> None:
        self.puk = puk
        what = "PUK" if puk else "PIN"
        super().__init__(sw, b"", f"the {what} is blocked")


class AuthenticationError(CardError):
    """Management-key authentication failed: the card or the host used a different key."""


# --- verification ---------------------------------------------------------------------------


class VerificationFailure(StrEnum):
    """Why a tap was refused; stable codes, usable in logs and protocols."""

    UNTRUSTED_ISSUER = "untrusted_issuer"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    BAD_SIGNATURE = "bad_signature"
    GUID_MISMATCH = "guid_mismatch"
    MALFORMED_CERTIFICATE = "malformed_certificate"
    MALFORMED_PROOF = "malformed_proof"
    UNSUPPORTED_KEY = "unsupported_key"


_FAILURE_TEXT = {
    VerificationFailure.UNTRUSTED_ISSUER: "the card was not issued by the city card CA",
    VerificationFailure.NOT_YET_VALID: "the card is not valid yet",
    VerificationFailure.EXPIRED: "the card has expired",
    VerificationFailure.REVOKED: "the card has been revoked",
    VerificationFailure.BAD_SIGNATURE: "the card's signature does not match its certificate",
    VerificationFailure.GUID_MISMATCH: "the certificate belongs to another card",
    VerificationFailure.MALFORMED_CERTIFICATE: "the card's certificate is malformed",
    VerificationFailure.MALFORMED_PROOF: "the card proof is malformed",
    VerificationFailure.UNSUPPORTED_KEY: "the card's key type is not supported",
}


class CardVerificationError(CardError):
    """A card (or a proof it made) failed verification; `reason` says which check failed."""

    def __init__(self, reason: VerificationFailure, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        text = _FAILURE_TEXT[reason]
        super().__init__(f"{text}: {detail}" if detail else text)


class ProvisioningError(CardError):
    """A provisioning step could not be completed."""
