"""The board drivers' interface and values (docs/interfaces.md, PROTOCOL.md): what every
driver returns (``DispenseResult``, ``BoardInfo``, ...), the ``BoardDriver`` protocol the kiosk
drives, the links a driver talks through (``Link`` for a byte pipe, ``RegisterLink`` for Modbus
holding registers) and the small checks both drivers share.

Nothing here touches a device: the drivers are in ``onecard_v1`` and ``modbus_rtu``, the serial
edge in ``serial_link``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag, StrEnum
from types import TracebackType
from typing import Protocol, Self

from firmware_protocols import onecard_v1 as p
from kiosk.board.errors import TxnIdReusedError

TRAFFIC = 5  # log level of the wire trace (hex), below DEBUG

# --------------------------------------------------------------------------- values


class DispenseOutcome(StrEnum):
    """What became of a dispense. Only OK means the drop sensor saw the item fall."""

    OK = "ok"
    EMPTY = "empty"
    JAMMED = "jammed"
    MOTOR_FAULT = "motor_fault"
    NO_DROP = "no_drop"


@dataclass(frozen=True)
class DispenseResult:
    txn_id: int
    slot: int
    outcome: DispenseOutcome
    remaining: int | None  # items the board counts in the slot afterwards; None: unknown

    @property
    def dispensed(self) -> bool:
        return self.outcome is DispenseOutcome.OK


@dataclass(frozen=True)
class BoardInfo:
    protocol: str
    model: str
    firmware: str
    serial: str
    slots: Mapping[int, int]  # slot number -> capacity
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BoardStatus:
    door_open: bool
    temperature_c: float | None
    faults: frozenset[str]
    busy_txn: int | None
    boot_count: int
    uptime_s: int


@dataclass(frozen=True)
class SlotTestResult:
    slot: int
    motor: str  # "ok" | "open_circuit" | "stalled"
    sensor: str  # "ok" | "fault"


# --------------------------------------------------------------------------- interfaces


class Link(Protocol):
    """A byte pipe to the board. ``read`` returns what arrived within ``timeout`` seconds
    (possibly b"") and raises ``BoardLinkError`` when the line is gone."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes: ...

    def close(self) -> None: ...


class RegisterLink(Protocol):
    """Holding registers of a Modbus unit (``kiosk.board.serial_link.ModbusRtuLink``). Raises
    ``BoardTimeoutError`` when the unit does not answer, ``ModbusRefusedError`` on an exception
    response."""

    def read_registers(self, address: int, count: int) -> list[int]: ...

    def write_registers(self, address: int, values: Sequence[int]) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class BoardDriver(Protocol):
    def info(self) -> BoardInfo: ...

    def dispense(self, slot: int, txn_id: int) -> DispenseResult: ...  # txn_id: u32, new only

    def query(self, txn_id: int) -> DispenseResult | None: ...

    def stock(self) -> dict[int, int]: ...

    def last_txn_id(self) -> int: ...  # the board's highest recorded txn id (PROTOCOL.md 6.2)

    def close(self) -> None: ...


class ClosingDriver:
    """What both drivers share: each is a context manager that closes its link on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- shared checks


def check_slot(slot: int) -> None:
    if not 1 <= slot <= 255:
        raise ValueError(f"slot {slot} out of range 1..255")


def check_txn(txn_id: int) -> None:
    if not 1 <= txn_id <= p.TXN_MAX:
        raise ValueError(f"txn_id {txn_id} out of range 1..{p.TXN_MAX}")


class ReusedIdGuard:
    """PROTOCOL.md 6.2 on the host's side, for one driver session: DISPENSE only for ids above
    ``board_last`` (the board's highest recorded id when the session began). An id refused as
    reused is not queried either: the board's record for it is another transaction's, and
    settling this one from it would charge (or void) the wrong tap."""

    def __init__(self) -> None:
        self._refused: set[int] = set()

    def check_dispense(self, txn_id: int, board_last: int) -> None:
        check_txn(txn_id)
        if txn_id <= board_last:
            self._refused.add(txn_id)
            raise TxnIdReusedError(txn_id, board_last)

    def check_query(self, txn_id: int, board_last: int) -> None:
        check_txn(txn_id)
        if txn_id in self._refused:
            raise TxnIdReusedError(txn_id, board_last)


def flag_names(kind: type[IntFlag], value: int) -> frozenset[str]:
    return frozenset((f.name or "").lower() for f in kind if f and f & value == f)


def result_of(report: p.TxnReport) -> DispenseResult:
    return DispenseResult(
        txn_id=report.txn_id,
        slot=report.slot,
        outcome=DispenseOutcome(report.outcome.name.lower()),
        remaining=report.remaining,
    )
