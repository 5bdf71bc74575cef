"""APDUs (ISO/IEC 7816-4 section 5): command encoding and parsing, status words, and the
processor that sends a command over any `Connection`.

Implements, for the host side:
- short and extended command APDUs (cases 1 to 4);
- command chaining (CLA bit 0x10) for data longer than a short APDU holds;
- response chaining: SW 61xx is followed by GET RESPONSE until the data is complete;
- SW 6Cxx (wrong Le): the command is sent again once with the Le the card asked for.

And for the card side (the virtual card) `CommandApdu.parse`, the inverse of `to_bytes`.

The whole transport contract is one method, `send_and_receive(apdu) -> (data, sw)`.
Wire traffic is logged as hex at level `TRAFFIC` (5) on the logger "cardsvc.apdu".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum, unique
from typing import Protocol

from .errors import ApduError, BadResponseError, NotFoundError, SecurityStatusError

TRAFFIC = 5
logging.addLevelName(TRAFFIC, "TRAFFIC")
logger = logging.getLogger(__name__)

SHORT_MAX_DATA = 255
SHORT_MAX_LE = 256
EXTENDED_MAX_DATA = 65535
EXTENDED_MAX_LE = 65536
MAX_GET_RESPONSE = 256  # 64 KiB of short answers: more than any PIV object needs
CLA_CHAINING = 0x10
INS_GET_RESPONSE = 0xC0
# VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, SET MANAGEMENT KEY carry secrets.
_SECRET_INS = frozenset({0x20, 0x24, 0x2C, 0xFF})


@unique
class SW(IntEnum):
    """Status words the PIV command set uses (ISO 7816-4 table 5, SP 800-73-4 part 2)."""

    OK = 0x9000
    NO_INPUT_DATA = 0x6285  # not used as error; kept for decoding
    VERIFY_FAIL_NO_RETRY = 0x63C0
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    SECURITY_CONDITION_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    INCORRECT_PARAMETERS = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    NOT_ENOUGH_SPACE = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_DATA_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN_ERROR = 0x6F00


class Connection(Protocol):
    """A link that carries one command APDU to a card and brings back its answer."""

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]: ...


@dataclass(frozen=True)
class CommandApdu:
    """One command APDU. `ne` is the number of bytes expected back (0: none expected)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int = 0
    extended: bool = False

    def to_bytes(self) -> bytes:
        header = bytes([self.cla, self.ins, self.p1, self.p2])
        nc, ne = len(self.data), self.ne
        extended = self.extended or nc > SHORT_MAX_DATA or ne > SHORT_MAX_LE
        if nc > EXTENDED_MAX_DATA or ne > EXTENDED_MAX_LE or ne < 0:
            raise ValueError(f"APDU too long: Nc={nc}, Ne={ne}")
        if not extended:
            body = bytes([nc]) + self.data if nc else b""
            if ne:
                body += bytes([ne % 256])
            return header + body
        body = b""
        if nc:
            body = b"\x00" + nc.to_bytes(2, "big") + self.data
        if ne:
            le = (ne % 65536).to_bytes(2, "big")
            body += le if nc else b"\x00" + le
        return header + body

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        """Decode a command APDU (ISO 7816-3 12.1.3); raises `BadResponseError` if malformed."""
        if len(raw) < 4:
            raise BadResponseError(f"APDU shorter than its header: {raw.hex()}")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        n = len(body)
        if n == 0:  # case 1
            return cls(cla, ins, p1, p2)
        if n == 1:  # case 2 short
            return cls(cla, ins, p1, p2, b"", body[0] or 256)
        if body[0] != 0:  # short case 3 or 4
            nc = body[0]
            if n == 1 + nc:
                return cls(cla, ins, p1, p2, bytes(body[1:]))
            if n == 2 + nc:
                return cls(cla, ins, p1, p2, bytes(body[1 : 1 + nc]), body[-1] or 256)
            raise BadResponseError(f"APDU length mismatch: {raw.hex()}")
        # extended: first body byte is 00
        if n == 3:  # case 2 extended
            le = int.from_bytes(body[1:3], "big")
            return cls(cla, ins, p1, p2, b"", le or 65536, True)
        if n < 3:
            raise BadResponseError(f"APDU length mismatch: {raw.hex()}")
        nc = int.from_bytes(body[1:3], "big")
        if nc == 0:
            raise BadResponseError(f"APDU with extended Lc 0: {raw.hex()}")
        if n == 3 + nc:
            return cls(cla, ins, p1, p2, bytes(body[3:]), 0, True)
        if n == 5 + nc:
            le = int.from_bytes(body[-2:], "big")
            return cls(cla, ins, p1, p2, bytes(body[3 : 3 + nc]), le or 65536, True)
        raise BadResponseError(f"APDU length mismatch: {raw.hex()}")


def split_response(raw: bytes) -> tuple[bytes, int]:
    """Split a response APDU into its data and its status word."""
    if len(raw) < 2:
        raise BadResponseError(f"response shorter than a status word: {raw.hex()}")
    return bytes(raw[:-2]), (raw[-2] << 8) | raw[-1]


def error_for(sw: int, data: bytes = b"") -> ApduError:
    """The typed error for a status word (unknown words give a plain `ApduError`)."""
    if sw == SW.FILE_NOT_FOUND:
        return NotFoundError(sw, data, "not found on the card")
    if sw == SW.SECURITY_CONDITION_NOT_SATISFIED:
        return SecurityStatusError(sw, data, "the card needs the PIN or the management key first")
    return ApduError(sw, data)


def card_capabilities(atr: bytes) -> tuple[bool, bool]:
    """(command chaining, extended Lc/Le) as the ATR's historical bytes announce them.

    Reads the "card capabilities" compact-TLV (tag 7, ISO 7816-4 8.1.1.2.7) when the historical
    bytes start with category indicator 0x80; anything else announces neither.
    """
    historical = _historical_bytes(atr)
    if not historical or historical[0] != 0x80:
        return False, False
    i = 1
    while i < len(historical):
        tag, length = historical[i] >> 4, historical[i] & 0x0F
        value = historical[i + 1 : i + 1 + length]
        if tag == 0x7 and length >= 3 and len(value) >= 3:
            return bool(value[2] & 0x80), bool(value[2] & 0x40)
        i += 1 + length
    return False, False


def _historical_bytes(atr: bytes) -> bytes:
    if len(atr) < 2:
        return b""
    count = atr[1] & 0x0F
    y = atr[1] >> 4
    i = 2
    while True:
        present = [bool(y & 1), bool(y & 2), bool(y & 4), bool(y & 8)]
        i += sum(present[:3])
        if not present[3] or i >= len(atr):
            break
        y = atr[i] >> 4
        i += 1
    return bytes(atr[i : i + count])


class ApduProcessor:
    """Sends commands over a `Connection` with chaining, 61xx and 6Cxx handled.

    `extended=True` sends one extended APDU where a short one would not do (and asks for up to
    65536 bytes back); otherwise long data goes by command chaining and long answers by 61xx.
    """

    def __init__(self, connection: Connection, *, extended: bool = False) -> None:
        self.connection = connection
        self.extended = extended
        self.apdu_count = 0

    def _exchange(self, apdu: bytes) -> tuple[bytes, int]:
        if logger.isEnabledFor(TRAFFIC):
            if apdu[1] in _SECRET_INS:  # PINs, PUKs and keys never reach a log
                logger.log(TRAFFIC, "> %s <%d bytes withheld>", apdu[:4].hex(), len(apdu) - 4)
            else:
                logger.log(TRAFFIC, "> %s", apdu.hex())
        data, sw = self.connection.send_and_receive(apdu)
        self.apdu_count += 1
        if logger.isEnabledFor(TRAFFIC):
            logger.log(TRAFFIC, "< %s %04X", data.hex(), sw)
        return data, sw

    def send(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"", *, ne: int | None = None
    ) -> bytes:
        """Send one command; return the response data, or raise `ApduError` unless SW is 9000."""
        data, sw = self.transmit(cla, ins, p1, p2, data, ne=ne)
        if sw != SW.OK:
            raise error_for(sw, data)
        return data

    def transmit(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"", *, ne: int | None = None
    ) -> tuple[bytes, int]:
        """Like `send`, but return the final status word instead of raising."""
        if ne is None:
            ne = EXTENDED_MAX_LE if self.extended else SHORT_MAX_LE
        if self.extended or len(data) <= SHORT_MAX_DATA:
            chunks = [data]
        else:
            chunks = [data[i : i + SHORT_MAX_DATA] for i in range(0, len(data), SHORT_MAX_DATA)]
        for chunk in chunks[:-1]:
            _, sw = self._exchange(CommandApdu(cla | CLA_CHAINING, ins, p1, p2, chunk).to_bytes())
            if sw != SW.OK:
                return b"", sw
        command = CommandApdu(cla, ins, p1, p2, chunks[-1], ne, self.extended)
        response, sw = self._exchange(command.to_bytes())
        if sw >> 8 == 0x6C:
            command = CommandApdu(cla, ins, p1, p2, chunks[-1], (sw & 0xFF) or 256)
            response, sw = self._exchange(command.to_bytes())
        buffer = bytearray(response)
        rounds = 0
        while sw >> 8 == 0x61:
            rounds += 1
            if rounds > MAX_GET_RESPONSE:
                raise BadResponseError("the card keeps answering 61xx (more data) without end")
            get_response = CommandApdu(0x00, INS_GET_RESPONSE, 0, 0, b"", (sw & 0xFF) or 256)
            response, sw = self._exchange(get_response.to_bytes())
            buffer += response
        return bytes(buffer), sw
