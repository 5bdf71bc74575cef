"""``open_board``: the kiosk's configuration (a serial device and a protocol name) turned into a
``BoardDriver`` on a real serial line."""

from __future__ import annotations

from firmware_protocols import modbus_rtu as mb
from kiosk.board import modbus_rtu, onecard_v1
from kiosk.board.base import BoardDriver
from kiosk.board.serial_link import ModbusRtuLink, SerialLink

DEFAULT_PROTOCOL = onecard_v1.PROTOCOL
PROTOCOLS = (onecard_v1.PROTOCOL, modbus_rtu.PROTOCOL)


def open_board(
    device: str,
    protocol: str = DEFAULT_PROTOCOL,
    *,
    baudrate: int = 9600,
    reply_timeout: float | None = None,
    retries: int = 3,
    poll_interval: float | None = None,
    dispense_timeout: float = 20.0,
    unit: int = mb.UNIT,
    half_duplex: bool = False,
) -> BoardDriver:
    """Open the board on serial ``device`` with the driver for ``protocol``
    ("onecard-v1" or "modbus-rtu", from the kiosk's configuration).

    The keyword options tune the driver; the defaults follow PROTOCOL.md section 5 (and 11 for
    Modbus, where ``unit`` is the board's address); ``half_duplex`` is for an RS-485 line
    (onecard-v1, 5.4; Modbus is half duplex by design). Raises ``BoardLinkError`` when the device
    cannot be opened and ``ValueError`` for an unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown board protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    if protocol == modbus_rtu.PROTOCOL:
        timeout = reply_timeout
        if timeout is None:  # request + largest reply (125 registers) + turnaround
            timeout = (16 + 5 + 2 * mb.MAX_READ) * 10 / baudrate + onecard_v1.BOARD_TURNAROUND
        registers = ModbusRtuLink(
            device, baudrate=baudrate, unit=unit, timeout=timeout, retries=retries
        )
        return modbus_rtu.ModbusRtuDriver(
            registers,
            poll_interval=modbus_rtu.POLL_INTERVAL if poll_interval is None else poll_interval,
            dispense_timeout=dispense_timeout,
        )
    link = SerialLink(device, baudrate=baudrate)
    return onecard_v1.OneCardV1Driver(
        link,
        baudrate=baudrate,
        reply_timeout=reply_timeout,
        retries=retries,
        poll_interval=1.0 if poll_interval is None else poll_interval,
        dispense_timeout=dispense_timeout,
        half_duplex=half_duplex,
    )
