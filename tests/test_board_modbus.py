"""The Modbus RTU mode of the board (PROTOCOL.md 11): RTU framing from hex literals, resync,
and the register map served on top of the same firmware logic as onecard-v1."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocols import modbus_rtu as mb
from firmware_protocols import onecard_v1 as p
from firmware_protocols.crc import crc16_modbus
from tests.fixtures.firmware import Unit

REQUESTS = [
    ("01 03 00 00 00 0a c5 cd", mb.ReadHolding(1, 0, 10)),  # the Modbus spec's own example
    ("01 10 00 20 00 03 06 00 01 00 00 00 2a 5b f5", mb.WriteRegisters(1, 16, 32, (1, 0, 42))),
    ("01 06 01 01 00 19 18 3c", mb.WriteRegisters(1, 6, 0x101, (25,))),
]


def test_crc_check_value() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37


@pytest.mark.parametrize(("hexa", "request_"), REQUESTS)
def test_request_round_trip(hexa: str, request_: mb.Request) -> None:
    raw = bytes.fromhex(hexa)
    assert mb.encode_request(request_) == raw
    reader = mb.RtuReader()
    assert [r for b in raw for r in reader.feed(bytes([b]))] == [request_]
    reader = mb.RtuReader()
    assert reader.feed(b"\x07\x00" + raw + raw[:3]) + reader.feed(raw[3:]) == [request_, request_]
    assert reader.crc_errors + reader.garbage_bytes > 0


@pytest.mark.parametrize(("hexa", "request_"), REQUESTS)
def test_bad_crc_is_skipped(hexa: str, request_: mb.Request) -> None:
    raw = bytearray.fromhex(hexa)
    raw[-1] ^= 0x55
    reader = mb.RtuReader()
    assert reader.feed(bytes(raw) + bytes.fromhex(hexa)) == [request_]
    assert reader.crc_errors >= 1


def test_unknown_function_is_found_on_an_idle_line() -> None:
    raw = mb.with_crc(b"\x01\x2b\x0e\x01\x00")
    reader = mb.RtuReader()
    assert reader.feed(raw) == []
    assert reader.flush() == [mb.UnknownFunction(1, 0x2B)]
    assert reader.feed(b"\x01\x2b\x99") == [] and reader.flush() == []
    assert reader.garbage_bytes == 3


@given(st.binary(max_size=300))
def test_reader_never_raises(data: bytes) -> None:
    reader = mb.RtuReader()
    reader.feed(data)
    reader.flush()
    assert reader.pending == 0


def test_register_map_identity_and_stock() -> None:
    unit = Unit()
    head = unit.read(0, 32)
    assert head[mb.Reg.MAP_VERSION] == 1 and head[mb.Reg.SLOT_COUNT] == 2
    assert mb.registers_text(head[8:16]) == "OC-SIM-1"
    assert unit.read(mb.Reg.SLOT_LIST, 2) == [1, 4]
    assert unit.read(mb.Reg.STOCK + 1, 1) == [2]
    assert unit.read(mb.Reg.CAPACITY + 4, 1) == [9]


def test_dispense_block_follows_the_transaction_rules() -> None:
    unit = Unit()
    assert unit.write(mb.Reg.DISPENSE_SLOT, 1, 0, 42) == mb.with_crc(bytes.fromhex("0110002000 03"))
    # A read is a query: the running dispense is IN_PROGRESS, never STARTED (PROTOCOL.md 4.3).
    assert unit.read(mb.Reg.TXN_HI, 6) == [0, 42, p.TxnState.IN_PROGRESS, 1, 0, 0xFFFF]
    unit.run(1.0)
    done = [0, 42, p.TxnState.DONE, 1, p.Outcome.OK, 1]
    assert unit.read(mb.Reg.TXN_HI, 6) == done
    unit.write(mb.Reg.DISPENSE_SLOT, 1, 0, 42)  # a retry of the same block: nothing moves
    unit.run(1.0)
    assert unit.read(mb.Reg.STOCK + 1, 1) == [1]
    assert unit.board.state.motor_runs == {42: 1}
    unit.write(mb.Reg.TXN_HI, 0, 7)
    assert unit.read(mb.Reg.TXN_HI, 6) == [0, 7, p.TxnState.UNKNOWN, 0, 0, 0xFFFF]


@pytest.mark.parametrize(
    ("values", "exc", "error"),
    [
        ((9, 0, 1), mb.Exc.ILLEGAL_VALUE, p.ErrorCode.BAD_SLOT),
        ((1, 0, 0), mb.Exc.ILLEGAL_VALUE, p.ErrorCode.BAD_TXN),
    ],
)
def test_refused_writes_are_exceptions_with_the_reason_in_last_error(
    values: tuple[int, int, int], exc: mb.Exc, error: p.ErrorCode
) -> None:
    unit = Unit()
    assert unit.write(mb.Reg.DISPENSE_SLOT, *values) == mb.exception_response(1, 16, exc)
    assert unit.read(mb.Reg.LAST_ERROR, 1) == [error]


def test_busy_and_bad_addresses() -> None:
    unit = Unit()
    unit.write(mb.Reg.DISPENSE_SLOT, 1, 0, 1)
    assert unit.write(mb.Reg.DISPENSE_SLOT, 1, 0, 2) == mb.exception_response(
        1, 16, mb.Exc.DEVICE_BUSY
    )
    assert unit.ask(mb.ReadHolding(1, 0x0500, 1)) == mb.exception_response(
        1, 3, mb.Exc.ILLEGAL_ADDRESS
    )
    assert unit.ask(mb.ReadHolding(1, 0, 200)) == mb.exception_response(1, 3, mb.Exc.ILLEGAL_VALUE)
    assert unit.write(mb.Reg.MAP_VERSION, 9) == mb.exception_response(1, 16, mb.Exc.ILLEGAL_ADDRESS)
    assert unit.ask(mb.ReadHolding(2, 0, 1)) is None  # another unit's request: silence
    assert unit.ask(mb.UnknownFunction(1, 0x2B)) == mb.exception_response(
        1, 0x2B, mb.Exc.ILLEGAL_FUNCTION
    )


def test_set_stock_through_a_register() -> None:
    unit = Unit()
    raw = unit.ask(mb.WriteRegisters(1, 6, mb.Reg.STOCK + 4, (7,)))
    assert raw == mb.encode_request(mb.WriteRegisters(1, 6, mb.Reg.STOCK + 4, (7,)))  # echo
    assert unit.read(mb.Reg.STOCK + 4, 1) == [7]
    assert unit.write(mb.Reg.STOCK + 4, 10) == mb.exception_response(1, 16, mb.Exc.ILLEGAL_VALUE)
