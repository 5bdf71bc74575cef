"""Modbus RTU mode of the dispensing board, as a pure codec: the register map of PROTOCOL.md
section 11, the RTU framing of the requests a board serves (functions 03, 06, 16) and of its
exception responses, and which exception answers which onecard-v1 refusal. The simulated board
that serves the map is ``firmware_protocols.simboard_modbus``.

Pure and stdlib only (the kiosk side uses pymodbus; this side is written from the Modbus
specification, which also makes it an independent check of the kiosk's pymodbus traffic).

RTU frame: ``unit u8 | function u8 | data | CRC-16/MODBUS (low byte first)``; frames are
delimited by 3.5 character times of silence, but every frame this board accepts has a length
known from its first bytes, so the reader does not depend on timing except to drop a partial
frame after an idle line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, unique

from firmware_protocols import onecard_v1 as p
from firmware_protocols.crc import crc16_modbus

UNIT = 1
MAX_RTU = 256
MAX_READ = 125


@unique
class Function(IntEnum):
    READ_HOLDING = 0x03
    WRITE_SINGLE = 0x06
    WRITE_MULTIPLE = 0x10


@unique
class Exc(IntEnum):
    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_ADDRESS = 0x02
    ILLEGAL_VALUE = 0x03
    DEVICE_FAILURE = 0x04
    DEVICE_BUSY = 0x06


class Reg(IntEnum):
    """Holding registers (PROTOCOL.md 11.2)."""

    MAP_VERSION = 0
    SLOT_COUNT = 1
    STATUS = 2  # bit 0 door open, bit 1 dispensing
    FAULTS = 3
    TEMPERATURE = 4  # int16, tenths of a degree; 0x8000 none
    BOOT_COUNT = 5
    LAST_ERROR = 6  # onecard-v1 ErrorCode of the last refused write, 0 none
    CAPABILITIES = 7
    MODEL = 8  # 8 registers, ASCII, 2 characters each, NUL padded
    FIRMWARE = 16  # 8 registers
    SERIAL = 24  # 8 registers
    DISPENSE_SLOT = 32  # write 32..34 in one function 16: slot, txn high, txn low
    DISPENSE_TXN_HI = 33
    DISPENSE_TXN_LO = 34
    TXN_HI = 40  # write 40..41 to select a transaction; read 40..45
    TXN_LO = 41
    TXN_STATE = 42
    TXN_SLOT = 43
    TXN_OUTCOME = 44
    TXN_REMAINING = 45
    LAST_TXN_HI = 46  # read 46..47: the highest txn_id the board ever recorded (6.2)
    LAST_TXN_LO = 47
    TEMP_LOW = 48  # int16 tenths of a degree; write 48..49 together = TEMP_LIMITS (4.10)
    TEMP_HIGH = 49
    STOCK = 0x100  # + slot number: count (write: SET_STOCK)
    CAPACITY = 0x200  # + slot number
    SLOT_LIST = 0x300  # + index: slot number of the index-th slot


MAP_VERSION = 1
TEXT_REGS = 8
WRITE_ONLY_VALUE = 0  # what a write-only register (DISPENSE, 32..34) reads back (11.2)


def text_registers(text: str) -> list[int]:
    raw = text.encode("utf-8")[: 2 * TEXT_REGS].ljust(2 * TEXT_REGS, b"\0")
    return list(struct.unpack(f">{TEXT_REGS}H", raw))


def registers_text(regs: list[int]) -> str:
    return struct.pack(f">{len(regs)}H", *regs).rstrip(b"\0").decode("utf-8", "replace")


# --------------------------------------------------------------------------- RTU framing


@dataclass(frozen=True)
class ReadHolding:
    unit: int
    address: int
    count: int


@dataclass(frozen=True)
class WriteRegisters:
    """Function 06 (one register) or 16 (several)."""

    unit: int
    function: int
    address: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class UnknownFunction:
    unit: int
    function: int


Request = ReadHolding | WriteRegisters | UnknownFunction


def with_crc(body: bytes) -> bytes:
    return body + crc16_modbus(body).to_bytes(2, "little")


def encode_request(req: Request) -> bytes:
    """The bytes of a request (for tests and tools; the kiosk uses pymodbus)."""
    if isinstance(req, ReadHolding):
        return with_crc(
            struct.pack(">BBHH", req.unit, Function.READ_HOLDING, req.address, req.count)
        )
    if isinstance(req, WriteRegisters):
        if req.function == Function.WRITE_SINGLE:
            body = struct.pack(">BBHH", req.unit, req.function, req.address, req.values[0])
        else:
            n = len(req.values)
            body = struct.pack(
                f">BBHHB{n}H", req.unit, req.function, req.address, n, 2 * n, *req.values
            )
        return with_crc(body)
    return with_crc(bytes([req.unit, req.function]))


def _request_length(buf: bytearray) -> int | None:
    """Total length of the request at the start of ``buf``; None: not known (yet)."""
    if len(buf) < 2:
        return None
    function = buf[1]
    if function in (Function.READ_HOLDING, Function.WRITE_SINGLE):
        return 8
    if function == Function.WRITE_MULTIPLE:
        return 9 + buf[6] if len(buf) >= 7 else None
    return None


class RtuReader:
    """Requests out of a byte stream, resynchronising one byte at a time after a bad CRC."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.crc_errors = 0
        self.garbage_bytes = 0
        self.resyncs = 0
        self._skipping = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self.garbage_bytes += n
        if not self._skipping:
            self.resyncs += 1
            self._skipping = True

    def feed(self, data: bytes) -> list[Request]:
        buf = self._buf
        buf += data
        out: list[Request] = []
        while len(buf) >= 2:
            length = _request_length(buf)
            if length is None or length > len(buf):
                # Not (yet) a whole request we know. If a good one starts further on, what is
                # before it is garbage; otherwise wait for more, or for the idle gap (flush).
                skip = _next_request(buf)
                if skip:
                    self._drop(skip)
                    continue
                if len(buf) > MAX_RTU:
                    self._drop(1)
                    continue
                break
            if length > MAX_RTU:
                self._drop(1)
                continue
            frame = bytes(buf[:length])
            if crc16_modbus(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                self.crc_errors += 1
                self._drop(1)
                continue
            del buf[:length]
            self.frames += 1
            self._skipping = False
            out.append(_parse(frame))
        return out

    def flush(self) -> list[Request]:
        """The line went idle: what is held is one whole frame or garbage."""
        buf = bytes(self._buf)
        self._buf.clear()
        if len(buf) >= 4 and crc16_modbus(buf[:-2]) == int.from_bytes(buf[-2:], "little"):
            self.frames += 1
            self._skipping = False
            return [UnknownFunction(buf[0], buf[1])]
        if buf:
            self._buf += buf
            self._drop(len(buf))
        self._skipping = False
        return []

    def counters(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "crc_errors": self.crc_errors,
            "garbage_bytes": self.garbage_bytes,
            "resyncs": self.resyncs,
        }


def _next_request(buf: bytearray) -> int:
    """Offset of the first complete request with a good CRC after offset 0, else 0."""
    for k in range(1, len(buf) - 3):
        length = _request_length(buf[k : k + 7])
        if length is not None and k + length <= len(buf):
            frame = buf[k : k + length]
            if crc16_modbus(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
                return k
    return 0


def _parse(frame: bytes) -> Request:
    unit, function = frame[0], frame[1]
    if function == Function.READ_HOLDING:
        address, count = struct.unpack_from(">HH", frame, 2)
        return ReadHolding(unit, address, count)
    if function == Function.WRITE_SINGLE:
        address, value = struct.unpack_from(">HH", frame, 2)
        return WriteRegisters(unit, function, address, (value,))
    address, count, nbytes = struct.unpack_from(">HHB", frame, 2)
    if nbytes != 2 * count or nbytes != len(frame) - 9:
        return UnknownFunction(unit, -function)  # inconsistent: answered ILLEGAL_VALUE
    values = struct.unpack_from(f">{count}H", frame, 7)
    return WriteRegisters(unit, function, address, tuple(values))


def exception_response(unit: int, function: int, code: Exc) -> bytes:
    return with_crc(bytes([unit, (function & 0x7F) | 0x80, code]))


# Which exception answers a refused write, by the onecard-v1 error (PROTOCOL.md 11.2); the
# reason itself goes to LAST_ERROR. Any other refusal: DEVICE_FAILURE.
EXCEPTION_FOR_ERROR = {
    p.ErrorCode.BUSY: Exc.DEVICE_BUSY,
    p.ErrorCode.BAD_SLOT: Exc.ILLEGAL_VALUE,
    p.ErrorCode.BAD_TXN: Exc.ILLEGAL_VALUE,
    p.ErrorCode.BAD_VALUE: Exc.ILLEGAL_VALUE,
    p.ErrorCode.TXN_CONFLICT: Exc.ILLEGAL_VALUE,
    p.ErrorCode.DOOR_OPEN: Exc.DEVICE_FAILURE,
}
