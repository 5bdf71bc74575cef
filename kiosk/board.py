"""The kiosk's board driver: the ``BoardDriver`` interface every board protocol implements
(docs/interfaces.md) and the driver for the onecard-v1 protocol
(firmware_protocols/PROTOCOL.md).

The driver talks to an abstract ``Link`` (``write(bytes)``, ``read(timeout) -> bytes``);
``kiosk.serial_link.SerialLink`` is the real one, and ``open_board`` puts the two together::

    with open_board("/dev/ttyUSB0") as board:          # protocol="onecard-v1" by default
        result = board.dispense(slot=1, txn_id=42)     # blocks until the drop sensor decides
        if result.outcome is DispenseOutcome.OK: ...   # anything else: void at the server

The rules it keeps (PROTOCOL.md section 6):

* a request that gets no reply is retransmitted with the same sequence number, so the board
  answers a repeat from its cache instead of acting twice;
* when DISPENSE is never acknowledged, the driver asks QUERY before it decides: only a board
  that has no record of the transaction is sent DISPENSE again (the board records a
  transaction before its motor turns, so "unknown" means the motor never turned);
* a started transaction is resolved by the DISPENSE_RESULT event or, when that is lost or the
  board restarted (POWER_UP), by QUERY; the driver never re-sends DISPENSE for it;
* one lock serialises all exchanges, so threads may share a driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from types import TracebackType
from typing import Protocol, Self, TypeVar

from firmware_protocols import modbus_rtu as mb
from firmware_protocols import onecard_v1 as p

log = logging.getLogger(__name__)
TRAFFIC = 5  # log level of the wire trace (hex), below DEBUG
logging.addLevelName(TRAFFIC, "TRAFFIC")

DEFAULT_PROTOCOL = "onecard-v1"
PROTOCOLS = ("onecard-v1", "modbus-rtu")


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


# --------------------------------------------------------------------------- errors


class BoardError(Exception):
    """Base of the board driver's errors."""


class BoardLinkError(BoardError):
    """The serial line itself failed (device gone, cannot be opened)."""


class BoardTimeoutError(BoardError):
    """No usable answer within the deadline, retries included.

    For a dispense, ``txn_id`` is set and the transaction is *unresolved*: the item may or
    may not have fallen. Keep it in the journal and ``query`` it later; never void it blindly.
    """

    def __init__(self, command: str, txn_id: int | None = None) -> None:
        what = f"{command} (txn {txn_id})" if txn_id is not None else command
        super().__init__(f"board did not answer {what}")
        self.command = command
        self.txn_id = txn_id


class BoardProtocolError(BoardError):
    """The board answered something the protocol does not allow here."""


class BoardRejectedError(BoardError):
    """The board refused a request with an ERROR reply (PROTOCOL.md 4.10)."""

    def __init__(self, command: str, error: str, detail: int = 0) -> None:
        super().__init__(f"board refused {command}: {error} (detail {detail})")
        self.command = command
        self.error = error
        self.detail = detail


class BoardBusyError(BoardRejectedError):
    """Another dispense is running on the board."""


# --------------------------------------------------------------------------- interfaces


class Link(Protocol):
    """A byte pipe to the board. ``read`` returns what arrived within ``timeout`` seconds
    (possibly b"") and raises ``BoardLinkError`` when the line is gone."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes: ...

    def close(self) -> None: ...


class ModbusRefusedError(BoardError):
    """A Modbus exception response (raised by a ``RegisterLink``)."""

    def __init__(self, exception_code: int) -> None:
        super().__init__(f"Modbus exception {exception_code}")
        self.exception_code = exception_code


class RegisterLink(Protocol):
    """Holding registers of a Modbus unit (``kiosk.serial_link.ModbusRtuLink``). Raises
    ``BoardTimeoutError`` when the unit does not answer, ``ModbusRefusedError`` on an exception
    response."""

    def read_registers(self, address: int, count: int) -> list[int]: ...

    def write_registers(self, address: int, values: Sequence[int]) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class BoardDriver(Protocol):
    def info(self) -> BoardInfo: ...

    def dispense(self, slot: int, txn_id: int) -> DispenseResult: ...  # txn_id: u32

    def query(self, txn_id: int) -> DispenseResult | None: ...

    def stock(self) -> dict[int, int]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- onecard-v1


_M = TypeVar("_M", bound=p.Message)

BOARD_TURNAROUND = 0.050  # the board starts its reply within this (PROTOCOL.md 5.3)
SCHEDULING_MARGIN = 0.030  # our own process and the OS
SMALL_REPLY = 32  # bytes: every reply but INFO and the stock lists fits
EVENT_ALLOWANCE = 40  # bytes of events the board may push before its reply
INTER_FRAME_GAP = 0.050  # a partial frame idle this long is dropped (PROTOCOL.md 5.2)


@dataclass
class _Counters:
    frames_in: int = 0
    frames_out: int = 0
    retries: int = 0
    timeouts: int = 0
    stale_frames: int = 0
    bad_replies: int = 0
    events: int = 0
    events_missed: int = 0
    board_resets: int = 0
    queries: int = 0
    redispatches: int = 0


@dataclass
class _Observed:
    door_open: bool | None = None
    temperature_dc: int | None = None
    faults: p.Fault = p.Fault.NONE
    power_ups: int = 0
    event_seq: int | None = None
    results: OrderedDict[int, p.TxnReport] = field(default_factory=OrderedDict)


class _ClosingDriver:
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


class OneCardV1Driver(_ClosingDriver):
    """``BoardDriver`` for the onecard-v1 framed protocol over any ``Link``.

    ``reply_timeout`` (seconds) overrides the deadline computed from ``baudrate``;
    ``poll_interval`` is how long a started dispense waits for its result event before it
    asks QUERY; ``dispense_timeout`` bounds a whole dispense. ``on_event`` sees every
    event the board pushes (called with the lock held: it must not call the driver).
    """

    protocol = DEFAULT_PROTOCOL

    def __init__(
        self,
        link: Link,
        *,
        baudrate: int = 9600,
        reply_timeout: float | None = None,
        retries: int = 3,
        poll_interval: float = 1.0,
        dispense_timeout: float = 20.0,
        reset_timeout: float = 5.0,
        on_event: Callable[[p.Message], None] | None = None,
    ) -> None:
        self._link = link
        self._byte_time = 10 / baudrate
        self._reply_timeout = reply_timeout
        self._retries = retries
        self._poll_interval = poll_interval
        self._dispense_timeout = dispense_timeout
        self._reset_timeout = reset_timeout
        self._on_event = on_event
        self._lock = threading.RLock()
        self._reader = p.FrameReader(on_skip=self._trace_skip)
        self._backlog: deque[p.Frame] = deque()
        self._seq = 0
        self._counters = _Counters()
        self._seen = _Observed()
        self._last_rx = time.monotonic()
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._link.close()

    # ----------------------------------------------------------------- BoardDriver

    def info(self) -> BoardInfo:
        with self._lock:
            reply = self._exchange(p.Hello(), p.Info, reply_size=p.MAX_FRAME)
        caps = _flag_names(p.Capability, reply.capabilities)
        return BoardInfo(
            protocol=self.protocol,
            model=reply.model,
            firmware=reply.firmware,
            serial=reply.serial,
            slots=dict(reply.slots),
            capabilities=caps,
        )

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        _check_slot(slot)
        _check_txn(txn_id)
        with self._lock:
            deadline = time.monotonic() + self._dispense_timeout
            report = self._start_dispense(slot, txn_id, deadline)
            if report.state is not p.TxnState.DONE:
                report = self._await_result(txn_id, deadline)
            if report.slot != slot:
                raise BoardProtocolError(f"txn {txn_id} reported for slot {report.slot}")
            return _result(report)

    def query(self, txn_id: int) -> DispenseResult | None:
        _check_txn(txn_id)
        with self._lock:
            report = self._query(txn_id)
            if report.state is p.TxnState.UNKNOWN:
                return None
            if report.state is not p.TxnState.DONE:
                report = self._await_result(txn_id, time.monotonic() + self._dispense_timeout)
            return _result(report)

    def stock(self) -> dict[int, int]:
        with self._lock:
            reply = self._exchange(p.Stock(), p.StockReply, reply_size=p.MAX_FRAME)
        return dict(reply.counts)

    # ----------------------------------------------------------------- more of the board

    def status(self) -> BoardStatus:
        with self._lock:
            r = self._exchange(p.Status(), p.StatusReply)
        return BoardStatus(
            door_open=r.door_open,
            temperature_c=None if r.temperature_dc is None else r.temperature_dc / 10,
            faults=_flag_names(p.Fault, r.faults),
            busy_txn=r.busy_txn or None,
            boot_count=r.boot_count,
            uptime_s=r.uptime_s,
        )

    def slot_test(self, slot: int) -> SlotTestResult:
        _check_slot(slot)
        with self._lock:
            r = self._exchange(p.SlotTest(slot), p.SlotTestReply)
        return SlotTestResult(r.slot, r.motor.name.lower(), r.sensor.name.lower())

    def set_stock(self, slot: int, count: int) -> dict[int, int]:
        _check_slot(slot)
        if not 0 <= count <= 0xFFFF:
            raise ValueError(f"count {count} out of range")
        with self._lock:
            r = self._exchange(p.SetStock(slot, count), p.SetStockReply, reply_size=p.MAX_FRAME)
        return dict(r.counts)

    def reset(self) -> None:
        """Reboot the board and wait for its POWER_UP."""
        with self._lock:
            before = self._seen.power_ups
            self._exchange(p.Reset(), p.ResetAck)
            deadline = time.monotonic() + self._reset_timeout
            while self._seen.power_ups == before:
                if time.monotonic() >= deadline:
                    raise BoardTimeoutError("RESET (power-up)")
                self._dispatch(self._receive(deadline))

    def counters(self) -> dict[str, int]:
        """Telemetry: line and protocol counters since the driver was opened.

        Lock-free on purpose: a telemetry thread must not wait for a dispense to end."""
        return {**self._reader.counters(), **self._counters.__dict__}

    # ----------------------------------------------------------------- dispense logic

    def _start_dispense(self, slot: int, txn_id: int, deadline: float) -> p.TxnReport:
        while True:
            try:
                ack = self._exchange(p.Dispense(slot, txn_id), p.DispenseAck)
                if ack.txn_id != txn_id:
                    raise BoardProtocolError(f"DISPENSE {txn_id} answered for txn {ack.txn_id}")
                return ack
            except BoardTimeoutError:
                if time.monotonic() >= deadline:
                    raise BoardTimeoutError("DISPENSE", txn_id) from None
            # No acknowledgement: ask before deciding (PROTOCOL.md 6.5).
            try:
                report = self._query(txn_id)
            except BoardTimeoutError:
                if time.monotonic() >= deadline:
                    raise BoardTimeoutError("DISPENSE", txn_id) from None
                continue
            if report.state is not p.TxnState.UNKNOWN:
                return report
            self._counters.redispatches += 1  # the board never started it: safe to send again

    def _await_result(self, txn_id: int, deadline: float) -> p.TxnReport:
        resets = self._seen.power_ups
        poll_at = time.monotonic() + self._poll_interval
        while True:
            report = self._seen.results.pop(txn_id, None)
            if report is not None:
                return report
            now = time.monotonic()
            if now >= deadline:
                raise BoardTimeoutError("DISPENSE result", txn_id)
            if now >= poll_at or self._seen.power_ups != resets:
                resets = self._seen.power_ups
                poll_at = now + self._poll_interval
                try:
                    report = self._query(txn_id)
                except BoardTimeoutError:
                    continue
                if report.state is p.TxnState.DONE:
                    return report
                if report.state is p.TxnState.UNKNOWN:
                    # It acknowledged the start, so it recorded it; forgetting it means its
                    # memory is gone. Sending DISPENSE again could drop a second item.
                    raise BoardProtocolError(f"board forgot started txn {txn_id}")
                continue
            self._dispatch(self._receive(min(poll_at, deadline)))

    def _query(self, txn_id: int) -> p.TxnReport:
        self._counters.queries += 1
        report = self._exchange(p.Query(txn_id), p.QueryReply)
        if report.txn_id != txn_id:
            raise BoardProtocolError(f"QUERY {txn_id} answered for txn {report.txn_id}")
        return report

    # ----------------------------------------------------------------- exchange

    def _exchange(self, request: p.Message, expect: type[_M], reply_size: int = SMALL_REPLY) -> _M:
        if self._closed:
            raise BoardLinkError("driver is closed")
        self._seq = self._seq % 255 + 1
        seq = self._seq
        raw = p.encode(p.Frame(seq, request))
        timeout = self._reply_timeout
        if timeout is None:
            wire = (len(raw) + reply_size + EVENT_ALLOWANCE) * self._byte_time
            timeout = wire + BOARD_TURNAROUND + SCHEDULING_MARGIN
        name = p.Code(request.code).name
        for attempt in range(self._retries + 1):
            if attempt:
                self._counters.retries += 1
            self._write(raw)
            deadline = time.monotonic() + timeout
            while True:
                frames = self._receive(deadline)
                for frame in frames:
                    reply = self._match(frame, seq, expect, name)
                    if reply is not None:
                        return reply
                if not frames and time.monotonic() >= deadline:
                    break
        self._counters.timeouts += 1
        raise BoardTimeoutError(name)

    def _match(self, frame: p.Frame, seq: int, expect: type[_M], name: str) -> _M | None:
        msg = frame.message
        if p.is_event(msg.code):
            self._event(msg, frame.seq)
            return None
        if frame.seq != seq:
            self._counters.stale_frames += 1
            return None
        if isinstance(msg, expect):
            return msg
        if isinstance(msg, p.Error):
            error = msg.error.name.lower()
            if msg.error is p.ErrorCode.BUSY:
                raise BoardBusyError(name, error, msg.detail)
            raise BoardRejectedError(name, error, msg.detail)
        # Right sequence number, wrong kind (a malformed or unknown reply): not an answer.
        self._counters.bad_replies += 1
        log.warning("board sent %r to %s", msg, name)
        return None

    def _dispatch(self, frames: list[p.Frame]) -> None:
        for frame in frames:
            if p.is_event(frame.message.code):
                self._event(frame.message, frame.seq)
            else:
                self._counters.stale_frames += 1

    def _event(self, msg: p.Message, seq: int) -> None:
        self._counters.events += 1
        seen = self._seen
        # Events are numbered 1..255 by the board (1 again after power-up): a gap is a loss.
        if seen.event_seq is not None and not isinstance(msg, p.PowerUp):
            self._counters.events_missed += (seq - seen.event_seq - 1) % 255
        seen.event_seq = seq
        if isinstance(msg, p.DispenseResult):
            if msg.state is p.TxnState.DONE:
                seen.results[msg.txn_id] = msg
                while len(seen.results) > 64:
                    seen.results.popitem(last=False)
        elif isinstance(msg, p.PowerUp):
            seen.power_ups += 1
            self._counters.board_resets += 1
            log.info("board powered up (boot %d, %s)", msg.boot_count, msg.reason.name)
        elif isinstance(msg, p.DoorEvent):
            seen.door_open = msg.door_open
        elif isinstance(msg, p.TemperatureEvent):
            seen.temperature_dc = msg.temperature_dc
        elif isinstance(msg, p.FaultEvent):
            seen.faults = msg.faults
            log.warning("board fault %s on slot %d", msg.faults, msg.slot)
        if self._on_event is not None:
            self._on_event(msg)

    def _write(self, raw: bytes) -> None:
        log.log(TRAFFIC, "tx %s", raw.hex())
        self._counters.frames_out += 1
        self._link.write(raw)

    def _receive(self, deadline: float) -> list[p.Frame]:
        """The next frame, as a one-item list, or [] at ``deadline``.

        One at a time: frames that arrived together with a reply (an event right behind it)
        wait in the backlog for the next call instead of being lost with the batch."""
        if self._backlog:
            return [self._backlog.popleft()]
        while True:
            now = time.monotonic()
            wait = deadline - now
            if wait <= 0:
                return []
            if self._reader.pending:
                wait = min(wait, max(0.0, self._last_rx + INTER_FRAME_GAP - now))
            data = self._link.read(wait)
            now = time.monotonic()
            if not data:
                if self._reader.pending and now - self._last_rx >= INTER_FRAME_GAP:
                    frames = self._reader.flush()
                    if frames:
                        self._counters.frames_in += len(frames)
                        self._backlog.extend(frames[1:])
                        return frames[:1]
                continue
            self._last_rx = now
            log.log(TRAFFIC, "rx %s", data.hex())
            frames = self._reader.feed(data)
            if frames:
                self._counters.frames_in += len(frames)
                self._backlog.extend(frames[1:])
                return frames[:1]

    @staticmethod
    def _trace_skip(item: p.Garbage | p.BadCrc) -> None:
        log.debug("skipped %s: %s", type(item).__name__, item.data.hex())


# --------------------------------------------------------------------------- Modbus RTU


class ModbusRtuDriver(_ClosingDriver):
    """``BoardDriver`` for the Modbus RTU register map (PROTOCOL.md section 11).

    Modbus has no sequence numbers and no events, so the transaction id carries the whole
    safety rule: the DISPENSE block names the transaction, a repeated write of it (pymodbus's
    own retries, or ours after asking) is answered from the board's record, and the outcome is
    polled from the TXN block. ``poll_interval`` is the pause between two polls.
    """

    protocol = "modbus-rtu"

    def __init__(
        self,
        link: RegisterLink,
        *,
        poll_interval: float = 0.05,
        dispense_timeout: float = 20.0,
    ) -> None:
        self._link = link
        self._poll_interval = poll_interval
        self._dispense_timeout = dispense_timeout
        self._lock = threading.RLock()
        self._counters = {"queries": 0, "redispatches": 0, "polls": 0, "refusals": 0}
        self._closed = False

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
            capabilities=_flag_names(p.Capability, head[mb.Reg.CAPABILITIES]),
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
            faults=_flag_names(p.Fault, r[1]),
            busy_txn=None,  # the map says busy, not which; QUERY names it
            boot_count=r[3],
            uptime_s=0,
        )

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        _check_slot(slot)
        _check_txn(txn_id)
        with self._lock:
            deadline = time.monotonic() + self._dispense_timeout
            block = [slot, txn_id >> 16, txn_id & 0xFFFF]
            while True:
                try:
                    self._write("DISPENSE", mb.Reg.DISPENSE_SLOT, block)
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
            return _result(report)

    def query(self, txn_id: int) -> DispenseResult | None:
        _check_txn(txn_id)
        with self._lock:
            report = self._txn(txn_id)
            if report.state is p.TxnState.UNKNOWN:
                return None
            if report.state is not p.TxnState.DONE:
                report = self._await(txn_id, time.monotonic() + self._dispense_timeout)
            return _result(report)

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
        """Select the transaction and read its report (the TXN block)."""
        self._counters["queries"] += 1
        for _ in range(3):
            self._write("QUERY", mb.Reg.TXN_HI, [txn_id >> 16, txn_id & 0xFFFF])
            regs = self._read("QUERY", mb.Reg.TXN_HI, 6)
            if (regs[0] << 16) | regs[1] == txn_id:
                break  # else the board restarted between the two requests: ask again
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


# --------------------------------------------------------------------------- helpers


def _check_slot(slot: int) -> None:
    if not 1 <= slot <= 255:
        raise ValueError(f"slot {slot} out of range 1..255")


def _check_txn(txn_id: int) -> None:
    if not 1 <= txn_id <= p.TXN_MAX:
        raise ValueError(f"txn_id {txn_id} out of range 1..{p.TXN_MAX}")


def _flag_names(kind: type[IntFlag], value: int) -> frozenset[str]:
    return frozenset((f.name or "").lower() for f in kind if f and f & value == f)


def _result(report: p.TxnReport) -> DispenseResult:
    return DispenseResult(
        txn_id=report.txn_id,
        slot=report.slot,
        outcome=DispenseOutcome(report.outcome.name.lower()),
        remaining=report.remaining,
    )


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
) -> BoardDriver:
    """Open the board on serial ``device`` with the driver for ``protocol``
    ("onecard-v1" or "modbus-rtu", from the kiosk's configuration).

    The keyword options tune the driver; the defaults follow PROTOCOL.md section 5 (and 11 for
    Modbus, where ``unit`` is the board's address). Raises ``BoardLinkError`` when the device
    cannot be opened and ``ValueError`` for an unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown board protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    from kiosk import serial_link  # the serial edge: pyserial (and pymodbus) live there

    if protocol == "modbus-rtu":
        timeout = reply_timeout
        if timeout is None:  # request + largest reply (125 registers) + turnaround
            timeout = (16 + 5 + 2 * mb.MAX_READ) * 10 / baudrate + BOARD_TURNAROUND
        registers = serial_link.ModbusRtuLink(
            device, baudrate=baudrate, unit=unit, timeout=timeout, retries=retries
        )
        return ModbusRtuDriver(
            registers,
            poll_interval=0.05 if poll_interval is None else poll_interval,
            dispense_timeout=dispense_timeout,
        )
    link = serial_link.SerialLink(device, baudrate=baudrate)
    return OneCardV1Driver(
        link,
        baudrate=baudrate,
        reply_timeout=reply_timeout,
        retries=retries,
        poll_interval=1.0 if poll_interval is None else poll_interval,
        dispense_timeout=dispense_timeout,
    )
