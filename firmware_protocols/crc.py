"""CRC-16/CCITT-FALSE, the check used by the onecard-v1 board protocol (PROTOCOL.md section 2).

Parameters (Rocksoft model): width 16, poly 0x1021, init 0xFFFF, refin false, refout false,
xorout 0x0000, check ``crc16_ccitt_false(b"123456789") == 0x29B1``.

The stdlib's ``binascii.crc_hqx`` is exactly this polynomial, unreflected, with the initial
value as a parameter; it runs in C, so the decoder is limited by the serial line, never by the
CRC (see bench/bench_board.py). A firmware writer's bitwise version is in PROTOCOL.md.
"""

from __future__ import annotations

import binascii

INIT = 0xFFFF
CHECK = 0x29B1


def crc16_ccitt_false(data: bytes | bytearray | memoryview, crc: int = INIT) -> int:
    """Return the CRC-16/CCITT-FALSE of ``data``; pass ``crc`` to continue a running CRC."""
    return binascii.crc_hqx(data, crc)


def crc16_modbus(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0x8005 reflected = 0xA001, init 0xFFFF, refin/refout true, xorout 0,
    check 0x4B37); sent low byte first. Used by the Modbus RTU mode (PROTOCOL.md section 11)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc
