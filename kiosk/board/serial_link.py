"""The serial line to the vending-machine board: the one kiosk module that imports pyserial
(and pymodbus, which brings its own serial client).

``SerialLink`` implements ``kiosk.board.base.Link`` (``write(bytes)``, ``read(timeout)``) on
a serial device at 8N1 (PROTOCOL.md 5.1); ``ModbusRtuLink`` implements
``kiosk.board.base.RegisterLink`` (PROTOCOL.md 11). Library errors become ``BoardLinkError`` / ``BoardTimeoutError``.
"""

from __future__ import annotations

import select
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import serial
from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException

from firmware_protocols.crc import crc16_modbus
from kiosk.board.errors import BoardLinkError, BoardTimeoutError, ModbusRefusedError


class SerialLink:
    def __init__(self, device: str, baudrate: int = 9600) -> None:
        try:
            self._port = serial.Serial(
                device,
                baudrate=baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise BoardLinkError(f"cannot open {device}: {exc}") from exc
        self.device = device
        try:
            self._port.reset_input_buffer()  # whatever the board said while nobody listened
        except (serial.SerialException, OSError) as exc:
            self._port.close()
            raise BoardLinkError(f"cannot use {device}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise BoardLinkError(f"write to {self.device} failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        """What arrives within ``timeout`` seconds: returns as soon as any byte is there."""
        try:
            waiting = self._port.in_waiting
            if not waiting:
                ready, _, _ = select.select([self._port.fileno()], [], [], max(0.0, timeout))
                if not ready:
                    return b""
                waiting = self._port.in_waiting or 1
            return bytes(self._port.read(waiting))
        except (serial.SerialException, OSError) as exc:
            raise BoardLinkError(f"read from {self.device} failed: {exc}") from exc

    def close(self) -> None:
        self._port.close()


class ModbusRtuLink:
    """Holding registers of a Modbus RTU unit on a serial device, through pymodbus
    (implements ``kiosk.board.base.RegisterLink``; register map: PROTOCOL.md section 11).

    pymodbus retransmits a request that gets no answer ``retries`` times; the packets it
    receives are checked here as well, to count CRC errors for telemetry.
    """

    def __init__(
        self,
        device: str,
        baudrate: int = 9600,
        *,
        unit: int = 1,
        timeout: float = 0.3,
        retries: int = 3,
    ) -> None:
        self.device = device
        self._unit = unit
        self._counts = {
            "requests": 0,
            "timeouts": 0,
            "exceptions": 0,
            "crc_errors": 0,
            "reconnects": 0,
        }
        self._client = ModbusSerialClient(
            device,
            framer=FramerType.RTU,
            baudrate=baudrate,
            bytesize=8,
            parity="N",
            stopbits=1,
            timeout=timeout,
            retries=retries,
            trace_packet=self._trace,
        )
        if not self._client.connect():
            self._client.close()
            raise BoardLinkError(f"cannot open {device}")

    def _trace(self, sending: bool, data: bytes) -> bytes:
        received = not sending and len(data) >= 4
        if received and crc16_modbus(data[:-2]) != int.from_bytes(data[-2:], "little"):
            self._counts["crc_errors"] += 1
        return data

    def _call(self, name: str, *args: object, **kwargs: object) -> object:
        self._counts["requests"] += 1
        try:
            reply = getattr(self._client, name)(*args, device_id=self._unit, **kwargs)
        except ConnectionException as exc:
            # pyserial takes a read that finds the port ready but empty for a lost device, and
            # pymodbus then closes the port. When it opens again at once, the request simply
            # got no answer (a timeout, whose rules the driver keeps); else the line is gone.
            if self._client.connect():
                self._counts["reconnects"] += 1
                raise BoardTimeoutError(name) from exc
            raise BoardLinkError(f"{self.device}: {exc}") from exc
        except ModbusException as exc:  # no (valid) answer after pymodbus's retries
            self._counts["timeouts"] += 1
            raise BoardTimeoutError(name) from exc
        if reply.isError():
            self._counts["exceptions"] += 1
            raise ModbusRefusedError(int(getattr(reply, "exception_code", 0)))
        return reply

    def read_registers(self, address: int, count: int) -> list[int]:
        reply = self._call("read_holding_registers", address, count=count)
        registers = list(reply.registers)  # type: ignore[attr-defined]
        if len(registers) != count:
            raise BoardTimeoutError("read_holding_registers")
        return registers

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        self._call("write_registers", address, list(values))

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def close(self) -> None:
        self._client.close()
