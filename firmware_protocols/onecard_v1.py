"""Codec of the onecard-v1 board protocol: frames, messages, CRC (spec: PROTOCOL.md).

Pure: bytes in, values out. No I/O, no clocks, no threads; the kiosk driver and the board
simulator both build on it.

Frame (all multi-byte fields big-endian)::

    +------+------+-----+-----+------+-----+-------------------+----------+
    | 0xA5 | 0x5A | VER | SEQ | CODE | LEN | PAYLOAD (LEN)     | CRC16    |
    +------+------+-----+-----+------+-----+-------------------+----------+
      0      1      2     3     4      5     6 .. 6+LEN-1        6+LEN, +1
    VER = 0x01, LEN <= 240, CRC-16/CCITT-FALSE over VER..PAYLOAD, sent high byte first.
    Maximum frame: 6 + 240 + 2 = 248 bytes.

``decode(buffer) -> (used, item)``:

* ``(0, None)``: the buffer holds no complete item yet; call again with more bytes.
* ``(n, Frame)``: a frame with a good CRC; its message is a known message, an
  ``UnknownMessage`` (code not in the table) or a ``MalformedMessage`` (known code, payload
  that does not parse). Decoding never raises on wire input.
* ``(n, Garbage)``: bytes before the next start-of-frame, or a header whose LEN is over the
  maximum; they are dropped and the decoder resynchronises on the next 0xA5 0x5A.
* ``(n, BadCrc)``: a complete candidate frame whose CRC does not match. Only the bytes up to
  the next 0xA5 0x5A inside it are consumed, so a real frame hidden behind a corrupted
  length byte is still found.

``encode(frame) -> bytes`` raises ``EncodeError`` for a field out of range.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag, unique
from types import MappingProxyType
from typing import ClassVar, Self, TypeVar

from firmware_protocols.crc import crc16_ccitt_false

SOF = b"\xa5\x5a"
_SOF0, _SOF1 = SOF
VERSION = 0x01
HEADER_SIZE = 6
CRC_SIZE = 2
MAX_PAYLOAD = 240
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_SLOTS = 60
MAX_TEXT = 16
NO_TEMPERATURE = -32768
UNKNOWN_REMAINING = 0xFFFF
TXN_MAX = 0xFFFFFFFF

_E = TypeVar("_E", bound="IntEnum")


# --------------------------------------------------------------------------- wire constants


@unique
class Code(IntEnum):
    """Message codes. A reply's code is its request's code | 0x80; events are 0xC0..0xDF."""

    HELLO = 0x01
    STATUS = 0x02
    DISPENSE = 0x03
    QUERY = 0x04
    SLOT_TEST = 0x05
    RESET = 0x06
    STOCK = 0x07
    SET_STOCK = 0x08
    SYNC = 0x09
    TEMP_LIMITS = 0x0A
    INFO = 0x81
    STATUS_REPLY = 0x82
    DISPENSE_ACK = 0x83
    QUERY_REPLY = 0x84
    SLOT_TEST_REPLY = 0x85
    RESET_ACK = 0x86
    STOCK_REPLY = 0x87
    SET_STOCK_REPLY = 0x88
    SYNC_REPLY = 0x89
    TEMP_LIMITS_REPLY = 0x8A
    POWER_UP = 0xC0
    DOOR = 0xC1
    TEMPERATURE = 0xC2
    FAULT = 0xC3
    DISPENSE_PROGRESS = 0xC4
    DISPENSE_RESULT = 0xC5
    ERROR = 0xFF


@unique
class Outcome(IntEnum):
    """What became of a dispense. Only OK means the drop sensor saw the item fall."""

    NONE = 0
    OK = 1
    EMPTY = 2
    JAMMED = 3
    MOTOR_FAULT = 4
    NO_DROP = 5


@unique
class TxnState(IntEnum):
    UNKNOWN = 0
    STARTED = 1
    IN_PROGRESS = 2
    DONE = 3


@unique
class Phase(IntEnum):
    MOTOR_ON = 1
    MOTOR_OFF = 2
    DROP_SEEN = 3


@unique
class ErrorCode(IntEnum):
    MALFORMED = 1
    UNKNOWN_COMMAND = 2
    BAD_VERSION = 3
    BAD_SLOT = 4
    BUSY = 5
    TXN_CONFLICT = 6
    BAD_TXN = 7
    DOOR_OPEN = 8
    BAD_VALUE = 9


@unique
class PowerUpReason(IntEnum):
    POWER_ON = 0
    RESET_COMMAND = 1
    WATCHDOG = 2
    BROWN_OUT = 3


@unique
class MotorCheck(IntEnum):
    OK = 0
    OPEN_CIRCUIT = 1
    STALLED = 2


@unique
class SensorCheck(IntEnum):
    OK = 0
    FAULT = 1


class Fault(IntFlag):
    """Fault bits in STATUS_REPLY and FAULT events; unknown bits are kept as they are."""

    NONE = 0
    MOTOR = 0x0001
    JAM = 0x0002
    DROP_SENSOR = 0x0004
    TEMPERATURE = 0x0008
    NVM = 0x0010
    POWER_LOSS = 0x0020


class Capability(IntFlag):
    NONE = 0
    DROP_SENSOR = 0x0001
    DOOR_SENSOR = 0x0002
    TEMPERATURE = 0x0004
    SLOT_TEST = 0x0008
    STOCK_COUNT = 0x0010


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """Base of the codec's errors."""


class PayloadError(ProtocolError):
    """A payload that does not match its message's layout."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"code 0x{code:02X}: {reason}")
        self.code = code
        self.reason = reason


class EncodeError(ProtocolError, ValueError):
    """A message field that cannot be put on the wire (out of range, too long)."""


# --------------------------------------------------------------------------- payload helpers


_STRUCTS: dict[str, struct.Struct] = {}


def _struct(fmt: str) -> struct.Struct:
    st = _STRUCTS.get(fmt)
    if st is None:
        st = _STRUCTS[fmt] = struct.Struct(fmt)
    return st


class _Reader:
    def __init__(self, code: int, payload: bytes) -> None:
        self.code = code
        self.data = payload
        self.pos = 0

    def many(self, fmt: str) -> tuple[int, ...]:
        st = _struct(fmt)
        if self.pos + st.size > len(self.data):
            raise PayloadError(self.code, f"short payload ({len(self.data)} bytes)")
        values = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return values

    def take(self, fmt: str) -> int:
        return int(self.many(fmt)[0])

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise PayloadError(self.code, f"short payload ({len(self.data)} bytes)")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.take(">H")

    def i16(self) -> int:
        return self.take(">h")

    def u32(self) -> int:
        return self.take(">I")

    def text(self) -> str:
        n = self.u8()
        if n > MAX_TEXT or self.pos + n > len(self.data):
            raise PayloadError(self.code, "bad text length")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(self.code, "text is not UTF-8") from exc

    def enum(self, kind: type[_E], value: int) -> _E:
        member = kind._value2member_map_.get(value)  # a dict look-up: kind(value) is slow
        if member is None:
            raise PayloadError(self.code, f"bad {kind.__name__} {value}")
        return member  # type: ignore[return-value]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise PayloadError(self.code, f"{len(self.data) - self.pos} extra bytes")


def _pack(fmt: str, *values: int) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise EncodeError(f"field out of range for {fmt}: {values}") from exc


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_TEXT:
        raise EncodeError(f"text over {MAX_TEXT} bytes: {value!r}")
    return bytes([len(raw)]) + raw


def _pairs(code: int, r: _Reader) -> tuple[tuple[int, int], ...]:
    n = r.u8()
    if n > MAX_SLOTS:
        raise PayloadError(code, f"{n} slots (max {MAX_SLOTS})")
    return tuple((r.u8(), r.u16()) for _ in range(n))


def _pack_pairs(pairs: tuple[tuple[int, int], ...]) -> bytes:
    if len(pairs) > MAX_SLOTS:
        raise EncodeError(f"{len(pairs)} slots (max {MAX_SLOTS})")
    return _pack(">B", len(pairs)) + b"".join(_pack(">BH", s, c) for s, c in pairs)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of all messages: ``CODE`` on the class, ``payload()`` and ``parse()``."""

    CODE: ClassVar[int]

    @property
    def code(self) -> int:
        return self.CODE

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        r = _Reader(cls.CODE, payload)
        msg = cls._read(r)
        r.end()
        return msg

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls()


@dataclass(frozen=True)
class Hello(Message):
    CODE: ClassVar[int] = Code.HELLO


@dataclass(frozen=True)
class Info(Message):
    CODE: ClassVar[int] = Code.INFO
    protocol_version: int
    model: str
    firmware: str
    serial: str
    capabilities: Capability
    slots: tuple[tuple[int, int], ...]  # (slot number, capacity)

    def payload(self) -> bytes:
        return (
            _pack(">B", self.protocol_version)
            + _text(self.model)
            + _text(self.firmware)
            + _text(self.serial)
            + _pack(">H", int(self.capabilities))
            + _pack_pairs(self.slots)
        )

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u8(), r.text(), r.text(), r.text(), Capability(r.u16()), _pairs(cls.CODE, r))


@dataclass(frozen=True)
class Status(Message):
    CODE: ClassVar[int] = Code.STATUS


@dataclass(frozen=True)
class StatusReply(Message):
    CODE: ClassVar[int] = Code.STATUS_REPLY
    door_open: bool
    temperature_dc: int | None  # tenths of a degree Celsius; None: no sensor
    faults: Fault
    busy_txn: int  # 0: idle
    boot_count: int
    uptime_s: int

    def payload(self) -> bytes:
        temp = NO_TEMPERATURE if self.temperature_dc is None else self.temperature_dc
        return _pack(
            ">BhHIHI",
            int(self.door_open),
            temp,
            int(self.faults),
            self.busy_txn,
            self.boot_count,
            self.uptime_s,
        )

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        door = r.u8()
        if door > 1:
            raise PayloadError(cls.CODE, f"bad door state {door}")
        temp = r.i16()
        return cls(
            door_open=bool(door),
            temperature_dc=None if temp == NO_TEMPERATURE else temp,
            faults=Fault(r.u16()),
            busy_txn=r.u32(),
            boot_count=r.u16(),
            uptime_s=r.u32(),
        )


@dataclass(frozen=True)
class Dispense(Message):
    CODE: ClassVar[int] = Code.DISPENSE
    slot: int
    txn_id: int

    def payload(self) -> bytes:
        return _pack(">BI", self.slot, self.txn_id)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        slot, txn = r.many(">BI")
        return cls(slot, txn)


@dataclass(frozen=True)
class TxnReport(Message):
    """Shared layout of DISPENSE_ACK, QUERY_REPLY and the DISPENSE_RESULT event."""

    txn_id: int
    state: TxnState
    slot: int = 0
    outcome: Outcome = Outcome.NONE
    remaining: int | None = None

    def payload(self) -> bytes:
        rem = UNKNOWN_REMAINING if self.remaining is None else self.remaining
        return _pack(">IBBBH", self.txn_id, int(self.state), self.slot, int(self.outcome), rem)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        txn, raw_state, slot, raw_outcome, rem = r.many(">IBBBH")
        state = r.enum(TxnState, raw_state)
        outcome = r.enum(Outcome, raw_outcome)
        if (state is TxnState.DONE) != (outcome is not Outcome.NONE):
            raise PayloadError(cls.CODE, "outcome must be set exactly when the state is DONE")
        return cls(txn, state, slot, outcome, None if rem == UNKNOWN_REMAINING else rem)


@dataclass(frozen=True)
class DispenseAck(TxnReport):
    CODE: ClassVar[int] = Code.DISPENSE_ACK


@dataclass(frozen=True)
class Query(Message):
    CODE: ClassVar[int] = Code.QUERY
    txn_id: int

    def payload(self) -> bytes:
        return _pack(">I", self.txn_id)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u32())


@dataclass(frozen=True)
class QueryReply(TxnReport):
    CODE: ClassVar[int] = Code.QUERY_REPLY


@dataclass(frozen=True)
class SlotTest(Message):
    CODE: ClassVar[int] = Code.SLOT_TEST
    slot: int

    def payload(self) -> bytes:
        return _pack(">B", self.slot)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u8())


@dataclass(frozen=True)
class SlotTestReply(Message):
    CODE: ClassVar[int] = Code.SLOT_TEST_REPLY
    slot: int
    motor: MotorCheck
    sensor: SensorCheck

    def payload(self) -> bytes:
        return _pack(">BBB", self.slot, int(self.motor), int(self.sensor))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u8(), r.enum(MotorCheck, r.u8()), r.enum(SensorCheck, r.u8()))


@dataclass(frozen=True)
class Reset(Message):
    CODE: ClassVar[int] = Code.RESET


@dataclass(frozen=True)
class ResetAck(Message):
    CODE: ClassVar[int] = Code.RESET_ACK


@dataclass(frozen=True)
class Stock(Message):
    CODE: ClassVar[int] = Code.STOCK


@dataclass(frozen=True)
class StockReply(Message):
    CODE: ClassVar[int] = Code.STOCK_REPLY
    counts: tuple[tuple[int, int], ...]  # (slot number, items the board counts in it)

    def payload(self) -> bytes:
        return _pack_pairs(self.counts)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(_pairs(cls.CODE, r))


@dataclass(frozen=True)
class SetStock(Message):
    CODE: ClassVar[int] = Code.SET_STOCK
    slot: int
    count: int

    def payload(self) -> bytes:
        return _pack(">BH", self.slot, self.count)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u8(), r.u16())


@dataclass(frozen=True)
class SetStockReply(StockReply):
    CODE: ClassVar[int] = Code.SET_STOCK_REPLY


@dataclass(frozen=True)
class Sync(Message):
    """The first request of a host session (PROTOCOL.md 4.9): never answered from the repeat
    cache, and it empties it."""

    CODE: ClassVar[int] = Code.SYNC
    nonce: int  # u32 != 0, new for each host session

    def payload(self) -> bytes:
        return _pack(">I", self.nonce)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u32())


@dataclass(frozen=True)
class SyncReply(Message):
    CODE: ClassVar[int] = Code.SYNC_REPLY
    nonce: int  # the request's, echoed
    last_txn: int  # the highest txn_id the board ever recorded; 0: none
    boot_count: int

    def payload(self) -> bytes:
        return _pack(">IIH", self.nonce, self.last_txn, self.boot_count)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        nonce, last, boots = r.many(">IIH")
        return cls(nonce, last, boots)


@dataclass(frozen=True)
class TempLimits(Message):
    """Set the temperature limits (PROTOCOL.md 4.10); both ``NO_TEMPERATURE``: only report."""

    CODE: ClassVar[int] = Code.TEMP_LIMITS
    low_dc: int  # tenths of a degree Celsius
    high_dc: int

    def payload(self) -> bytes:
        return _pack(">hh", self.low_dc, self.high_dc)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        low, high = r.many(">hh")
        return cls(low, high)


@dataclass(frozen=True)
class TempLimitsReply(TempLimits):
    CODE: ClassVar[int] = Code.TEMP_LIMITS_REPLY


@dataclass(frozen=True)
class PowerUp(Message):
    CODE: ClassVar[int] = Code.POWER_UP
    boot_count: int
    reason: PowerUpReason

    def payload(self) -> bytes:
        return _pack(">HB", self.boot_count, int(self.reason))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u16(), r.enum(PowerUpReason, r.u8()))


@dataclass(frozen=True)
class DoorEvent(Message):
    CODE: ClassVar[int] = Code.DOOR
    door_open: bool

    def payload(self) -> bytes:
        return _pack(">B", int(self.door_open))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        value = r.u8()
        if value > 1:
            raise PayloadError(cls.CODE, f"bad door state {value}")
        return cls(bool(value))


@dataclass(frozen=True)
class TemperatureEvent(Message):
    CODE: ClassVar[int] = Code.TEMPERATURE
    temperature_dc: int

    def payload(self) -> bytes:
        return _pack(">h", self.temperature_dc)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.i16())


@dataclass(frozen=True)
class FaultEvent(Message):
    CODE: ClassVar[int] = Code.FAULT
    faults: Fault  # the full set now active
    slot: int  # 0: the board as a whole

    def payload(self) -> bytes:
        return _pack(">HB", int(self.faults), self.slot)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(Fault(r.u16()), r.u8())


@dataclass(frozen=True)
class DispenseProgress(Message):
    CODE: ClassVar[int] = Code.DISPENSE_PROGRESS
    txn_id: int
    slot: int
    phase: Phase

    def payload(self) -> bytes:
        return _pack(">IBB", self.txn_id, self.slot, int(self.phase))

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        txn, slot, phase = r.many(">IBB")
        return cls(txn, slot, r.enum(Phase, phase))


@dataclass(frozen=True)
class DispenseResult(TxnReport):
    CODE: ClassVar[int] = Code.DISPENSE_RESULT


@dataclass(frozen=True)
class Error(Message):
    CODE: ClassVar[int] = Code.ERROR
    request_code: int
    error: ErrorCode
    detail: int = 0

    def payload(self) -> bytes:
        return _pack(">BBB", self.request_code, int(self.error), self.detail)

    @classmethod
    def _read(cls, r: _Reader) -> Self:
        return cls(r.u8(), r.enum(ErrorCode, r.u8()), r.u8())


@dataclass(frozen=True)
class UnknownMessage(Message):
    """A frame with a good CRC and a code this codec does not know (or another VER)."""

    CODE: ClassVar[int] = -1
    unknown_code: int
    data: bytes = b""

    @property
    def code(self) -> int:
        return self.unknown_code

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class MalformedMessage(Message):
    """A frame with a good CRC and a known code whose payload does not parse."""

    CODE: ClassVar[int] = -2
    bad_code: int
    data: bytes
    reason: str = ""

    @property
    def code(self) -> int:
        return self.bad_code

    def payload(self) -> bytes:
        return self.data


MESSAGES: Mapping[int, type[Message]] = MappingProxyType(
    {
        cls.CODE: cls
        for cls in (
            Hello, Info, Status, StatusReply, Dispense, DispenseAck, Query, QueryReply,
            SlotTest, SlotTestReply, Reset, ResetAck, Stock, StockReply, SetStock,
            SetStockReply, Sync, SyncReply, TempLimits, TempLimitsReply, PowerUp, DoorEvent,
            TemperatureEvent, FaultEvent,
            DispenseProgress, DispenseResult, Error,
        )
    }
)  # fmt: skip
"""Read-only table: wire code -> message class."""

REQUEST_CODES = frozenset(c for c in MESSAGES if c < 0x80)
EVENT_CODES = frozenset(c for c in MESSAGES if 0xC0 <= c <= 0xDF)


def is_event(code: int) -> bool:
    return 0xC0 <= code <= 0xDF


def reply_code(request_code: int) -> int:
    return request_code | 0x80


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    seq: int
    message: Message
    version: int = VERSION


@dataclass(frozen=True)
class Garbage:
    """Bytes dropped while looking for a start of frame."""

    data: bytes


@dataclass(frozen=True)
class BadCrc:
    """A complete candidate frame whose CRC failed; ``data`` is what was consumed of it."""

    data: bytes


Decoded = Frame | Garbage | BadCrc


def encode(frame: Frame) -> bytes:
    """Return the bytes of ``frame`` on the wire."""
    msg = frame.message
    payload = msg.payload()
    if len(payload) > MAX_PAYLOAD:
        raise EncodeError(f"payload of {len(payload)} bytes (max {MAX_PAYLOAD})")
    if not 0 <= msg.code <= 0xFF:
        raise EncodeError(f"code {msg.code} out of range")
    body = _pack(">BBBB", frame.version, frame.seq, msg.code, len(payload)) + payload
    return SOF + body + crc16_ccitt_false(body).to_bytes(2, "big")


def parse_message(code: int, payload: bytes | bytearray, version: int = VERSION) -> Message:
    """Turn a code and payload from a good frame into a message; never raises."""
    cls = MESSAGES.get(code)
    if cls is None or version != VERSION:
        return UnknownMessage(code, bytes(payload))
    try:
        return cls.parse(payload if isinstance(payload, bytes) else bytes(payload))
    except PayloadError as exc:
        return MalformedMessage(code, bytes(payload), exc.reason)


def _resync(buf: bytes | bytearray, start: int, end: int) -> int:
    """Index of the next possible start of frame in buf[start:end], else end (or end-1 when
    the last byte could be the first half of a SOF)."""
    i = buf.find(SOF, start, end)
    if i >= 0:
        return i
    if end > start and buf[end - 1] == SOF[0] and end == len(buf):
        return end - 1
    return end


def decode_at(buf: bytes | bytearray, pos: int = 0) -> tuple[int, Decoded | None]:
    """``decode`` from ``buf[pos:]`` without copying; see the module docstring."""
    n = len(buf)
    if pos >= n:
        return 0, None
    if buf[pos] != _SOF0 or (pos + 1 < n and buf[pos + 1] != _SOF1):
        skip = _resync(buf, pos + 1, n)
        return skip - pos, Garbage(bytes(buf[pos:skip]))
    if n - pos < HEADER_SIZE:
        return 0, None
    length = buf[pos + 5]
    if length > MAX_PAYLOAD:
        skip = _resync(buf, pos + 1, n)
        return skip - pos, Garbage(bytes(buf[pos:skip]))
    total = HEADER_SIZE + length + CRC_SIZE
    if n - pos < total:
        return 0, None
    end = pos + total
    body_end = end - CRC_SIZE
    if crc16_ccitt_false(buf[pos + 2 : body_end]) != (buf[body_end] << 8 | buf[body_end + 1]):
        # Consume only up to a SOF inside the candidate: its LEN may be what was corrupted.
        i = buf.find(SOF, pos + 1, end + 1)
        if i < 0:
            i = end - 1 if buf[end - 1] == SOF[0] else end
        skip = i
        return skip - pos, BadCrc(bytes(buf[pos:skip]))
    version, seq, code = buf[pos + 2], buf[pos + 3], buf[pos + 4]
    message = parse_message(code, buf[pos + HEADER_SIZE : body_end], version)
    return total, Frame(seq, message, version)


def _needed(buf: bytes | bytearray, pos: int) -> int:
    """Buffer length at which ``decode_at(buf, pos)``, now (0, None), can say more."""
    if len(buf) - pos >= HEADER_SIZE:
        return pos + HEADER_SIZE + buf[pos + 5] + CRC_SIZE
    return len(buf) + 1


def decode(buffer: bytes | bytearray) -> tuple[int, Decoded | None]:
    """Decode one item from the start of ``buffer``: ``(used, item)``; ``used == 0``: need more."""
    return decode_at(buffer, 0)


# --------------------------------------------------------------------------- stream reader


@dataclass
class FrameReader:
    """Accumulates bytes from a link and yields frames, counting what it had to skip.

    ``on_skip`` (optional) sees every ``Garbage`` and ``BadCrc``, for wire tracing.
    """

    on_skip: Callable[[Garbage | BadCrc], None] | None = None
    frames: int = 0
    crc_errors: int = 0
    garbage_bytes: int = 0
    resyncs: int = 0
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _skipping: bool = field(default=False, repr=False)
    _need: int = field(default=0, repr=False)

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []  # the frame in progress is still short: no need to look again
        out: list[Frame] = []
        pos = 0
        while True:
            used, item = decode_at(buf, pos)
            if used == 0:
                self._need = _needed(buf, pos) - pos
                break
            pos += used
            if isinstance(item, Frame):
                self.frames += 1
                self._skipping = False
                out.append(item)
            else:
                assert item is not None
                self._skip(item)
        if pos:
            del buf[:pos]
        return out

    def clear(self) -> None:
        """Forget what is held without counting it (the receiver lost power)."""
        self._buf.clear()
        self._need = 0
        self._skipping = False

    def _skip(self, item: Garbage | BadCrc) -> None:
        if isinstance(item, BadCrc):
            self.crc_errors += 1
        else:
            self.garbage_bytes += len(item.data)
        if not self._skipping:
            self.resyncs += 1
            self._skipping = True
        if self.on_skip is not None:
            self.on_skip(item)

    @property
    def pending(self) -> int:
        """Bytes held that do not make a complete item yet."""
        return len(self._buf)

    def flush(self) -> list[Frame]:
        """The line went idle (PROTOCOL.md 5.2): no more bytes will complete what is held.

        The incomplete candidate at the head is dropped as garbage (its LEN was probably
        corrupted) and the rest is decoded again, so frames inside it are not lost.
        """
        out: list[Frame] = []
        buf = self._buf
        self._need = 0
        while buf:
            skip = _resync(buf, 1, len(buf))
            if skip == len(buf) - 1 and buf[-1] == SOF[0]:
                skip = len(buf)  # a lone 0xA5 at the end: nothing will follow it
            dropped = bytes(buf[:skip])
            del buf[:skip]
            self._skip(Garbage(dropped))
            out.extend(self.feed(b""))
        return out

    def counters(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "crc_errors": self.crc_errors,
            "garbage_bytes": self.garbage_bytes,
            "resyncs": self.resyncs,
        }
