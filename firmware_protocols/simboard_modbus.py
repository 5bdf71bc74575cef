"""The simulated board's Modbus RTU face (PROTOCOL.md section 11): ``ModbusBoard`` serves the
register map on top of the same firmware logic as onecard-v1 (``simboard.Board``), so both
protocols keep the same transaction rules; the register map and the RTU framing are the pure
codec ``firmware_protocols.modbus_rtu``.
"""

from __future__ import annotations

import struct

from firmware_protocols import onecard_v1 as p
from firmware_protocols.modbus_rtu import (
    EXCEPTION_FOR_ERROR,
    MAP_VERSION,
    MAX_READ,
    TEXT_REGS,
    UNIT,
    WRITE_ONLY_VALUE,
    Exc,
    Function,
    ReadHolding,
    Reg,
    Request,
    UnknownFunction,
    exception_response,
    text_registers,
    with_crc,
)
from firmware_protocols.simboard import Board


class _Refused(Exception):
    def __init__(self, code: Exc) -> None:
        self.code = code


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
            raise _Refused(EXCEPTION_FOR_ERROR.get(reply.error, Exc.DEVICE_FAILURE))
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
            return WRITE_ONLY_VALUE
        low, high = b.temperature_limits_dc
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
            Reg.LAST_TXN_HI: b.state.last_txn >> 16,
            Reg.LAST_TXN_LO: b.state.last_txn & 0xFFFF,
            Reg.TEMP_LOW: low & 0xFFFF,
            Reg.TEMP_HIGH: high & 0xFFFF,
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
        if address == Reg.TEMP_LOW and len(values) == 2:
            low, high = (v - 0x10000 if v & 0x8000 else v for v in values)
            self._ask(p.TempLimits(low, high), now)
            return
        if address >= Reg.STOCK and end <= Reg.STOCK + 0x100:
            for i, value in enumerate(values):
                self._ask(p.SetStock((address + i - Reg.STOCK) & 0xFF, value), now)
            return
        raise _Refused(Exc.ILLEGAL_ADDRESS)  # read-only, or a block written in part
