"""The kiosk's driver for a board speaking Modbus RTU (the register map of PROTOCOL.md section
11), over a ``RegisterLink`` (``kiosk.board.serial_link.ModbusRtuLink``, through pymodbus).

Modbus has no sequence numbers and no events, so the transaction id carries the whole safety
rule (11.3): the DISPENSE block names the transaction, a repeated write of it is answered from
the board's record, and the outcome is polled from the TXN block, every ``POLL_INTERVAL``
(chosen in 11.4 so polling takes a small share of a 9600 baud line). As over onecard-v1,
DISPENSE goes only to ids above the board's LAST_TXN read when the session began (6.2).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from firmware_protocols import modbus_rtu as mb
from firmware_protocols import onecard_v1 as p
from kiosk.board.base import (
    BoardInfo,
    BoardStatus,
    ClosingDriver,
    DispenseResult,
    RegisterLink,
    ReusedIdGuard,
    check_slot,
    check_txn,
    flag_names,
    result_of,
)
from kiosk.board.errors import (
    BoardBusyError,
    BoardError,
    BoardLinkError,
    BoardProtocolError,
    BoardRejectedError,
    BoardTimeoutError,
    ModbusRefusedError,
)

PROTOCOL = "modbus-rtu"
POLL_INTERVAL = 0.25  # seconds between two polls of a started dispense (PROTOCOL.md 11.4)


class ModbusRtuDriver(ClosingDriver):
    """``BoardDriver`` for the Modbus RTU register map (PROTOCOL.md section 11);
    ``poll_interval`` is the pause between two polls of a started dispense."""

    protocol = PROTOCOL

    def __init__(
        self,
        link: RegisterLink,
        *,
        poll_interval: float = POLL_INTERVAL,
        dispense_timeout: float = 20.0,
    ) -> None:
        self._link = link
        self._poll_interval = poll_interval
        self._dispense_timeout = dispense_timeout
        self._lock = threading.RLock()
        self._counters = {"queries": 0, "redispatches": 0, "polls": 0, "refusals": 0}
        self._closed = False
        self._reused = ReusedIdGuard()
        self._board_last: int | None = None  # LAST_TXN when the session began
        self._selected: int | None = None  # the transaction we selected in the TXN block

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._link.close()

    def counters(self) -> dict[str, int]:
        """Telemetry (lock-free, like ``OneCardV1Driver.counters``)."""
        return {**self._link.counters(), **self._counters}

    # ----------------------------------------------------------------- BoardDriver

    def info(self) -> BoardInfo:
        with self._lock:
            head = self._read("INFO", 0, mb.Reg.SERIAL + mb.TEXT_REGS)
            if head[mb.Reg.MAP_VERSION] != mb.MAP_VERSION:
                raise BoardProtocolError(f"register map version {head[0]}")
            slots = self._slots(head[mb.Reg.SLOT_COUNT])
            capacity = {s: self._read("INFO", mb.Reg.CAPACITY + s, 1)[0] for s in slots}

        def text(reg: int) -> str:
            return mb.registers_text(head[reg : reg + mb.TEXT_REGS])

        return BoardInfo(
            protocol=self.protocol,
            model=text(mb.Reg.MODEL),
            firmware=text(mb.Reg.FIRMWARE),
            serial=text(mb.Reg.SERIAL),
            slots=capacity,
            capabilities=flag_names(p.Capability, head[mb.Reg.CAPABILITIES]),
        )

    def stock(self) -> dict[int, int]:
        with self._lock:
            count = self._read("STOCK", mb.Reg.SLOT_COUNT, 1)[0]
            return {s: self._read("STOCK", mb.Reg.STOCK + s, 1)[0] for s in self._slots(count)}

    def status(self) -> BoardStatus:
        with self._lock:
            r = self._read("STATUS", mb.Reg.STATUS, 4)
        temp = r[2] - 0x10000 if r[2] & 0x8000 else r[2]
        return BoardStatus(
            door_open=bool(r[0] & 1),
            temperature_c=None if temp == p.NO_TEMPERATURE else temp / 10,
            faults=flag_names(p.Fault, r[1]),
            busy_txn=None,  # the map says busy, not which; QUERY names it
            boot_count=r[3],
            uptime_s=0,
        )

    def last_txn_id(self) -> int:
        """The board's LAST_TXN when this session began (PROTOCOL.md 6.2, 11.2)."""
        with self._lock:
            if self._board_last is None:
                hi, lo = self._read("LAST_TXN", mb.Reg.LAST_TXN_HI, 2)
                self._board_last = (hi << 16) | lo
            return self._board_last

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        check_slot(slot)
        check_txn(txn_id)
        with self._lock:
            self._reused.check_dispense(txn_id, self.last_txn_id())
            deadline = time.monotonic() + self._dispense_timeout
            block = [slot, txn_id >> 16, txn_id & 0xFFFF]
            while True:
                try:
                    self._write("DISPENSE", mb.Reg.DISPENSE_SLOT, block)
                    self._selected = txn_id  # the DISPENSE block also selects it (11.2)
                    break
                except BoardTimeoutError:
                    if time.monotonic() >= deadline:
                        raise BoardTimeoutError("DISPENSE", txn_id) from None
                try:  # no answer: ask before deciding (PROTOCOL.md 6.5)
                    report = self._txn(txn_id)
                except BoardTimeoutError:
                    continue
                if report.state is not p.TxnState.UNKNOWN:
                    break
                self._counters["redispatches"] += 1
            report = self._await(txn_id, deadline)
            if report.slot != slot:
                raise BoardProtocolError(f"txn {txn_id} reported for slot {report.slot}")
            return result_of(report)

    def query(self, txn_id: int) -> DispenseResult | None:
        check_txn(txn_id)
        with self._lock:
            self._reused.check_query(txn_id, self._board_last or 0)
            report = self._txn(txn_id)
            if report.state is p.TxnState.UNKNOWN:
                return None
            if report.state is not p.TxnState.DONE:
                report = self._await(txn_id, time.monotonic() + self._dispense_timeout)
            return result_of(report)

    # ----------------------------------------------------------------- internals

    def _await(self, txn_id: int, deadline: float) -> p.TxnReport:
        while True:
            try:
                report = self._txn(txn_id)
            except BoardTimeoutError:
                report = None
            if report is not None:
                if report.state is p.TxnState.DONE:
                    return report
                if report.state is p.TxnState.UNKNOWN:
                    raise BoardProtocolError(f"board forgot started txn {txn_id}")
            if time.monotonic() >= deadline:
                raise BoardTimeoutError("DISPENSE result", txn_id)
            self._counters["polls"] += 1
            time.sleep(self._poll_interval)

    def _txn(self, txn_id: int) -> p.TxnReport:
        """The transaction's report (the TXN block): one read when it is still selected, else
        select it first (a board that restarted forgets the selection; 11.3)."""
        self._counters["queries"] += 1
        for _ in range(3):
            if self._selected != txn_id:
                self._write("QUERY", mb.Reg.TXN_HI, [txn_id >> 16, txn_id & 0xFFFF])
                self._selected = txn_id
            regs = self._read("QUERY", mb.Reg.TXN_HI, 6)
            if (regs[0] << 16) | regs[1] == txn_id:
                break
            self._selected = None
        else:
            raise BoardProtocolError(f"board does not keep txn {txn_id} selected")
        try:
            state, outcome = p.TxnState(regs[2]), p.Outcome(regs[4])
        except ValueError as exc:
            raise BoardProtocolError(f"bad TXN block {regs}") from exc
        if (state is p.TxnState.DONE) != (outcome is not p.Outcome.NONE):
            raise BoardProtocolError(f"inconsistent TXN block {regs}")
        remaining = None if regs[5] == p.UNKNOWN_REMAINING else regs[5]
        return p.QueryReply(txn_id, state, regs[3], outcome, remaining)

    def _slots(self, count: int) -> list[int]:
        return self._read("SLOTS", mb.Reg.SLOT_LIST, count) if count else []

    def _read(self, command: str, address: int, count: int) -> list[int]:
        if self._closed:
            raise BoardLinkError("driver is closed")
        try:
            return self._link.read_registers(address, count)
        except ModbusRefusedError as exc:
            raise self._refusal(command, exc) from None

    def _write(self, command: str, address: int, values: Sequence[int]) -> None:
        if self._closed:
            raise BoardLinkError("driver is closed")
        try:
            self._link.write_registers(address, values)
        except ModbusRefusedError as exc:
            raise self._refusal(command, exc) from None

    def _refusal(self, command: str, exc: ModbusRefusedError) -> BoardRejectedError:
        """Turn an exception response into the typed error the board recorded."""
        self._counters["refusals"] += 1
        try:
            code = self._link.read_registers(mb.Reg.LAST_ERROR, 1)[0]
            error = p.ErrorCode(code).name.lower()
        except (BoardError, ValueError):
            code, error = 0, f"modbus_exception_{exc.exception_code}"
        if code == p.ErrorCode.BUSY or exc.exception_code == mb.Exc.DEVICE_BUSY:
            return BoardBusyError(command, "busy")
        return BoardRejectedError(command, error, exc.exception_code)
