"""Modbus RTU mode of the dispensing board: the register map of PROTOCOL.md section 11, the
RTU framing of the requests a board serves (functions 03, 06, 16), and ``ModbusBoard``, which
maps register reads and writes onto the same firmware logic as onecard-v1 (simboard.Board), so
both protocols keep the same transaction rules.

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
from typing import TYPE_CHECKING

from firmware_protocols import onecard_v1 as p
from firmware_protocols.crc import crc16_modbus

if TYPE_CHECKING:  # the kiosk imports the register map without the simulated firmware
    from firmware_protocols.simboard import Board

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
    STOCK = 0x100  # + slot number: count (write: SET_STOCK)
    CAPACITY = 0x200  # + slot number
    SLOT_LIST = 0x300  # + index: slot number of the index-th slot


MAP_VERSION = 1
TEXT_REGS = 8


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


# --------------------------------------------------------------------------- the board


class _Refused(Exception):
    def __init__(self, code: Exc) -> None:
        self.code = code


_ERROR_TO_EXC = {
    p.ErrorCode.BUSY: Exc.DEVICE_BUSY,
    p.ErrorCode.BAD_SLOT: Exc.ILLEGAL_VALUE,
    p.ErrorCode.BAD_TXN: Exc.ILLEGAL_VALUE,
    p.ErrorCode.BAD_VALUE: Exc.ILLEGAL_VALUE,
    p.ErrorCode.TXN_CONFLICT: Exc.ILLEGAL_VALUE,
    p.ErrorCode.DOOR_OPEN: Exc.DEVICE_FAILURE,
}


class ModbusBoard:
    """Serves the register map on top of a ``Board``: every write becomes the onecard-v1
    request it stands for, so retries and repeats follow the same rules (PROTOCOL.md 6)."""

    def __init__(self, board: Board, unit: int = UNIT) -> None:
        self.board = board
        self.unit = unit
        self.last_error = 0
        self.selected_txn = 0
        self._seq = 0
        self._report: p.TxnReport | None = None  # one QUERY per read request

    def _ask(self, msg: p.Message, now: float) -> p.Message:
        self._seq = self._seq % 255 + 1  # a fresh SEQ: never answered from the repeat cache
        replies = self.board.handle(p.Frame(self._seq, msg), now)
        if not replies:
            raise _Refused(Exc.DEVICE_FAILURE)  # the board is dark (never sent: no reply)
        reply = replies[0].message
        if isinstance(reply, p.Error):
            self.last_error = int(reply.error)
            raise _Refused(_ERROR_TO_EXC.get(reply.error, Exc.DEVICE_FAILURE))
        self.last_error = 0
        return reply

    def handle(self, req: Request, now: float) -> bytes | None:
        """The response to ``req``; None for another unit or a broadcast, or a dark board."""
        if req.unit != self.unit or self.board.is_off(now):
            return None
        if isinstance(req, UnknownFunction):
            code = Exc.ILLEGAL_VALUE if req.function < 0 else Exc.ILLEGAL_FUNCTION
            return exception_response(req.unit, abs(req.function), code)
        try:
            if isinstance(req, ReadHolding):
                if not 1 <= req.count <= MAX_READ:
                    raise _Refused(Exc.ILLEGAL_VALUE)
                self._report = None
                regs = [self._read(a, now) for a in range(req.address, req.address + req.count)]
                body = struct.pack(
                    f">BBB{len(regs)}H", req.unit, Function.READ_HOLDING, 2 * len(regs), *regs
                )
                return with_crc(body)
            self._write(req.address, list(req.values), now)
        except _Refused as refused:
            function = Function.READ_HOLDING if isinstance(req, ReadHolding) else req.function
            return exception_response(req.unit, function, refused.code)
        if req.function == Function.WRITE_SINGLE:
            return with_crc(
                struct.pack(">BBHH", req.unit, req.function, req.address, req.values[0])
            )
        return with_crc(struct.pack(">BBHH", req.unit, req.function, req.address, len(req.values)))

    # ----------------------------------------------------------------- registers

    def _read(self, address: int, now: float) -> int:
        b = self.board
        cfg = b.config
        slots = [s.slot for s in cfg.slots]
        if address >= Reg.SLOT_LIST:
            i = address - Reg.SLOT_LIST
            if i >= len(slots):
                raise _Refused(Exc.ILLEGAL_ADDRESS)
            return slots[i]
        if address >= Reg.CAPACITY:
            slot = address - Reg.CAPACITY
            for s in cfg.slots:
                if s.slot == slot:
                    return s.capacity
            raise _Refused(Exc.ILLEGAL_ADDRESS)
        if address >= Reg.STOCK:
            slot = address - Reg.STOCK
            if slot not in b.state.counts:
                raise _Refused(Exc.ILLEGAL_ADDRESS)
            return b.state.counts[slot]
        if Reg.MODEL <= address < Reg.MODEL + 3 * TEXT_REGS:
            i = address - Reg.MODEL
            text = (cfg.model, cfg.firmware, cfg.serial)[i // TEXT_REGS]
            return text_registers(text)[i % TEXT_REGS]
        if Reg.TXN_HI <= address <= Reg.TXN_REMAINING:
            return self._txn_register(address, now)
        if Reg.DISPENSE_SLOT <= address <= Reg.DISPENSE_TXN_LO:
            return 0
        status = b.status(now)  # the same values STATUS would report
        simple = {
            Reg.MAP_VERSION: MAP_VERSION,
            Reg.SLOT_COUNT: len(slots),
            Reg.STATUS: int(status.door_open) | (2 if status.busy_txn else 0),
            Reg.FAULTS: int(status.faults),
            Reg.TEMPERATURE: (
                status.temperature_dc if status.temperature_dc is not None else -32768
            )
            & 0xFFFF,
            Reg.BOOT_COUNT: status.boot_count,
            Reg.LAST_ERROR: self.last_error,
            Reg.CAPABILITIES: int(b.info().capabilities),
        }
        if address in simple:
            return simple[address]  # type: ignore[index]
        raise _Refused(Exc.ILLEGAL_ADDRESS)

    def _txn_register(self, address: int, now: float) -> int:
        txn = self.selected_txn
        if address == Reg.TXN_HI:
            return txn >> 16
        if address == Reg.TXN_LO:
            return txn & 0xFFFF
        if txn == 0:
            return 0
        report = self._report
        if report is None:
            asked = self._ask(p.Query(txn), now)
            assert isinstance(asked, p.TxnReport)
            report = self._report = asked
        rem = 0xFFFF if report.remaining is None else report.remaining
        return {
            Reg.TXN_STATE: int(report.state),
            Reg.TXN_SLOT: report.slot,
            Reg.TXN_OUTCOME: int(report.outcome),
            Reg.TXN_REMAINING: rem,
        }[address]  # type: ignore[index]

    def _write(self, address: int, values: list[int], now: float) -> None:
        end = address + len(values)
        if address == Reg.DISPENSE_SLOT and len(values) == 3:
            slot, hi, lo = values
            txn = (hi << 16) | lo
            self._ask(p.Dispense(slot if slot <= 0xFF else 0, txn), now)
            self.selected_txn = txn
            return
        if address == Reg.TXN_HI and len(values) == 2:
            self.selected_txn = (values[0] << 16) | values[1]
            return
        if address >= Reg.STOCK and end <= Reg.STOCK + 0x100:
            for i, value in enumerate(values):
                self._ask(p.SetStock((address + i - Reg.STOCK) & 0xFF, value), now)
            return
        raise _Refused(Exc.ILLEGAL_ADDRESS)  # read-only, or a block written in part
