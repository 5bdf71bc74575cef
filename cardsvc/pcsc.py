"""The PC/SC transport: the only module of the project that imports pyscard.

`PcscReader` waits for a card (insertion and removal come from SCardGetStatusChange, with the
PnP notification so readers plugged in later are seen), `PcscConnection` carries APDUs to it
inside a PC/SC transaction, so two processes never interleave commands on one card.

PC/SC result codes become the package's errors: pcscd gone → `PcscdUnavailableError` (and the
next call establishes a new context, so a reader object survives a pcscd restart); no reader →
`NoReaderError`; card gone or reset mid-command → `CardRemovedError`. pcsc-lite answers a
SCardGetStatusChange or SCardListReaders that pcscd dies under with SCARD_F_COMM_ERROR (its
socket to pcscd broke) and sometimes a waiting SCardGetStatusChange with
SCARD_W_SECURITY_VIOLATION (pcsc-lite 1.9.9: once in six restarts here; polkit is not asked on
that call): on the context both are pcscd gone, not a card; under SCardTransmit a broken
socket stays `CardRemovedError`, the command's fate being unknown.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from smartcard import scard

from .apdu import card_capabilities, split_response
from .errors import (
    CardRemovedError,
    NoCardError,
    NoReaderError,
    PcscdUnavailableError,
    ReaderBusyError,
    TransportError,
)

logger = logging.getLogger(__name__)

PNP_NOTIFICATION = "\\\\?PnP?\\Notification"
_MAX_WAIT_MS = 1000  # re-check readers and the deadline at least this often

_NO_SERVICE = {
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_INVALID_HANDLE,
}
# On a context call (not a card command), a broken socket to pcscd: pcscd stopped under it.
_SERVICE_LOST = _NO_SERVICE | {scard.SCARD_F_COMM_ERROR}
# What a waiting SCardGetStatusChange may get instead when pcscd stops (see the docstring).
_WAIT_SERVICE_LOST = _SERVICE_LOST | {scard.SCARD_W_SECURITY_VIOLATION}
_REMOVED = {
    scard.SCARD_W_REMOVED_CARD,
    scard.SCARD_E_NO_SMARTCARD,
    scard.SCARD_W_RESET_CARD,
    scard.SCARD_W_UNPOWERED_CARD,
    scard.SCARD_W_UNRESPONSIVE_CARD,
    scard.SCARD_F_COMM_ERROR,
    scard.SCARD_E_NOT_TRANSACTED,
    scard.SCARD_E_COMM_DATA_LOST,
}
_READER_GONE = {scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_UNKNOWN_READER}


def _message(hresult: int) -> str:
    try:
        text = scard.SCardGetErrorMessage(hresult)
    except Exception:  # pragma: no cover - pyscard's own failure
        text = ""
    return f"{text} (0x{hresult & 0xFFFFFFFF:08X})".strip()


def _raise_for(hresult: int, reader: str | None = None) -> None:
    if hresult == scard.SCARD_S_SUCCESS:
        return
    if hresult in _NO_SERVICE:
        raise PcscdUnavailableError(_message(hresult))
    if hresult in _REMOVED:
        raise CardRemovedError(_message(hresult))
    if hresult in _READER_GONE:
        raise NoReaderError(reader)
    if hresult == scard.SCARD_E_SHARING_VIOLATION:
        raise ReaderBusyError(reader)
    raise TransportError(f"PC/SC error: {_message(hresult)}")


class _Context:
    """A PC/SC context, established again after pcscd restarts."""

    def __init__(self) -> None:
        self.handle: int | None = None

    def get(self) -> int:
        if self.handle is None:
            hresult, handle = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult != scard.SCARD_S_SUCCESS:
                raise PcscdUnavailableError(_message(hresult))
            self.handle = handle
        return self.handle

    def invalidate(self) -> None:
        if self.handle is not None:
            scard.SCardReleaseContext(self.handle)
            self.handle = None

    def readers(self) -> list[str]:
        for attempt in (0, 1):
            hresult, readers = scard.SCardListReaders(self.get(), [])
            if hresult == scard.SCARD_S_SUCCESS:
                return list(readers)
            if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
                return []
            if hresult in _SERVICE_LOST:
                self.invalidate()
                if attempt == 0:
                    continue  # pcscd restarted since: one fresh context
                raise PcscdUnavailableError(_message(hresult))
            _raise_for(hresult)
        return []  # pragma: no cover


def list_readers() -> list[str]:
    """The names of the readers pcscd knows; raises `PcscdUnavailableError`."""
    context = _Context()
    try:
        return context.readers()
    finally:
        context.invalidate()


class PcscConnection:
    """A connection to the card in one reader; `send_and_receive` is the transport contract."""

    def __init__(self, context: int, reader: str, *, transaction: bool = True) -> None:
        hresult, card, protocol = scard.SCardConnect(
            context,
            reader,
            scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
        )
        if hresult in (scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_REMOVED_CARD):
            raise NoCardError(reader)
        _raise_for(hresult, reader)
        self.reader = reader
        self._card: int | None = card
        self._protocol = protocol
        self._transaction = False
        hresult, _, state, _, atr = scard.SCardStatus(card)
        self.atr = bytes(atr) if hresult == scard.SCARD_S_SUCCESS else b""
        self.supports_chaining, self.supports_extended = card_capabilities(self.atr)
        if transaction:
            hresult = scard.SCardBeginTransaction(card)
            if hresult != scard.SCARD_S_SUCCESS:
                self.close()
                _raise_for(hresult, reader)
            self._transaction = True

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        if self._card is None:
            raise TransportError("the connection is closed")
        hresult, response = scard.SCardTransmit(self._card, self._protocol, list(apdu))
        if hresult != scard.SCARD_S_SUCCESS:
            if hresult in _NO_SERVICE:
                raise CardRemovedError(_message(hresult))  # pcscd died under the command
            _raise_for(hresult, self.reader)
        if len(response) < 2:
            # What pcscd passes on when the card left under the command (vpcd, and readers
            # that lose the card mid-frame): no status word at all.
            raise CardRemovedError("the card gave no answer")
        return split_response(bytes(response))

    def close(self) -> None:
        card, self._card = self._card, None
        if card is None:
            return
        if self._transaction:
            scard.SCardEndTransaction(card, scard.SCARD_LEAVE_CARD)
            self._transaction = False
        scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)

    def __enter__(self) -> PcscConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PcscReader:
    """A card reader known to pcscd: `name` exact or a prefix of it; None means any reader."""

    def __init__(self, name: str | None = None, *, transaction: bool = True) -> None:
        self.name = name
        self.transaction = transaction
        self.current: str | None = None  # the reader of the last card found
        self._context = _Context()

    def _candidates(self) -> list[str]:
        readers = self._context.readers()
        if self.name is None:
            chosen = readers
        else:
            chosen = [r for r in readers if r == self.name] or [
                r for r in readers if r.startswith(self.name)
            ]
        if not chosen:
            raise NoReaderError(self.name)
        return chosen

    def _wait(self, predicate_present: bool, timeout: float | None) -> str | None:
        """Wait until one candidate reader has a card (or, for removal, none has): its name."""
        deadline = None if timeout is None else time.monotonic() + timeout
        known: dict[str, int] = {}
        while True:
            try:
                if predicate_present or self.current is None:
                    readers = self._candidates()
                else:
                    readers = [self.current]
                request = [(r, known.get(r, scard.SCARD_STATE_UNAWARE)) for r in readers]
                request.append(
                    (PNP_NOTIFICATION, known.get(PNP_NOTIFICATION, scard.SCARD_STATE_UNAWARE))
                )
                hresult, states = scard.SCardGetStatusChange(self._context.get(), 0, request)
                if hresult in _SERVICE_LOST:
                    raise PcscdUnavailableError(_message(hresult))
                if hresult not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT):
                    _raise_for(hresult)
                if hresult == scard.SCARD_S_SUCCESS:
                    present = [
                        name
                        for name, state, _atr in states
                        if name != PNP_NOTIFICATION
                        and state & scard.SCARD_STATE_PRESENT
                        and not state & scard.SCARD_STATE_MUTE
                    ]
                    if predicate_present and present:
                        return present[0]
                    if not predicate_present and not present:
                        return readers[0] if readers else ""
                    known = {name: state & ~scard.SCARD_STATE_CHANGED for name, state, _ in states}
                remaining_ms = _MAX_WAIT_MS
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    remaining_ms = min(_MAX_WAIT_MS, max(1, int(remaining * 1000)))
                request = [(name, state) for name, state in known.items()]
                hresult, _ = scard.SCardGetStatusChange(self._context.get(), remaining_ms, request)
                if hresult in _WAIT_SERVICE_LOST:
                    raise PcscdUnavailableError(_message(hresult))
                if hresult == scard.SCARD_S_SUCCESS:
                    known = {}  # something changed: look again from scratch
                elif hresult not in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_UNKNOWN_READER):
                    _raise_for(hresult)
            except PcscdUnavailableError:
                self._context.invalidate()
                raise

    def probe(self) -> str:
        """The reader asked for, once pcscd answers and has it (a fresh context after a
        restart); raises `PcscdUnavailableError` or `NoReaderError` until then."""
        try:
            return self._candidates()[0]
        except PcscdUnavailableError:
            self._context.invalidate()
            raise

    def wait_for_card(self, timeout: float | None = 5.0) -> PcscConnection | None:
        """A connection to the next card present (one already present counts), or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            reader = self._wait(True, remaining)
            if reader is None:
                return None
            try:
                connection = PcscConnection(
                    self._context.get(), reader, transaction=self.transaction
                )
            except (NoCardError, CardRemovedError):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue  # gone again before we could connect
            self.current = reader
            logger.debug("card in %s, ATR %s", reader, connection.atr.hex())
            return connection

    def wait_for_presence(self, timeout: float | None = 5.0) -> str | None:
        """The name of a reader with a card in it, without connecting to the card; or None."""
        reader = self._wait(True, timeout)
        if reader is not None:
            self.current = reader
        return reader

    def wait_for_removal(self, timeout: float | None = 5.0) -> bool:
        """True once the reader of the last card (or every candidate reader) is empty."""
        try:
            return self._wait(False, timeout) is not None
        except NoReaderError:
            return True  # the reader itself went away: so did its card

    def close(self) -> None:
        self._context.invalidate()

    def __enter__(self) -> PcscReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
