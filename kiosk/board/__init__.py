"""The kiosk's board drivers (docs/interfaces.md, firmware_protocols/PROTOCOL.md).

Layout, imports running downward only:

- ``errors``: the ``BoardError`` hierarchy;
- ``base``: the values (``DispenseResult``, ``BoardInfo``, ...), the ``BoardDriver`` interface
  and the links a driver talks through (``Link``, ``RegisterLink``);
- ``onecard_v1``, ``modbus_rtu``: one driver per protocol, each over an abstract link;
- ``serial_link``: the serial edge (the only pyserial and pymodbus importer);
- ``factory``: ``open_board(device, protocol)``, the configuration made into a driver.

The names callers use are re-exported here (``from kiosk.board import open_board, ...``).
"""

from __future__ import annotations

from kiosk.board.base import (
    TRAFFIC,
    BoardDriver,
    BoardInfo,
    BoardStatus,
    DispenseOutcome,
    DispenseResult,
    Link,
    RegisterLink,
    SlotTestResult,
)
from kiosk.board.errors import (
    BoardBusyError,
    BoardError,
    BoardLinkError,
    BoardProtocolError,
    BoardRejectedError,
    BoardTimeoutError,
    ModbusRefusedError,
    TxnIdReusedError,
)
from kiosk.board.factory import DEFAULT_PROTOCOL, PROTOCOLS, open_board
from kiosk.board.modbus_rtu import ModbusRtuDriver
from kiosk.board.onecard_v1 import OneCardV1Driver

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "TRAFFIC",
    "BoardBusyError",
    "BoardDriver",
    "BoardError",
    "BoardInfo",
    "BoardLinkError",
    "BoardProtocolError",
    "BoardRejectedError",
    "BoardStatus",
    "BoardTimeoutError",
    "DispenseOutcome",
    "DispenseResult",
    "Link",
    "ModbusRefusedError",
    "ModbusRtuDriver",
    "OneCardV1Driver",
    "RegisterLink",
    "SlotTestResult",
    "TxnIdReusedError",
    "open_board",
]
