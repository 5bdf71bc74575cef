"""The kiosk's driver for the onecard-v1 framed protocol (firmware_protocols/PROTOCOL.md).

The driver talks to an abstract ``Link`` (``write(bytes)``, ``read(timeout) -> bytes``);
``kiosk.board.serial_link.SerialLink`` is the real one, and ``kiosk.board.open_board`` puts the
two together::

    with open_board("/dev/ttyUSB0") as board:          # protocol="onecard-v1" by default
        result = board.dispense(slot=1, txn_id=42)     # blocks until the drop sensor decides
        if result.outcome is DispenseOutcome.OK: ...   # anything else: void at the server

The rules it keeps (PROTOCOL.md sections 5 and 6):

* the first request of a session is SYNC (6.1): it empties the board's repeat cache, so a host
  that restarted and numbers its requests from 1 again never gets an old reply, and it tells the
  driver the board's last recorded transaction id: DISPENSE goes only to ids above it (6.2);
  SYNC is retried for the board's whole boot time (5.7), so a board still starting is waited for;
* a request that gets no reply is retransmitted with the same sequence number, so the board
  answers a repeat from its cache instead of acting twice;
* when DISPENSE is never acknowledged, the driver asks QUERY before it decides: only a board
  that has no record of the transaction is sent DISPENSE again (the board records a
  transaction before its motor turns, so "unknown" means the motor never turned);
* a started transaction is resolved by the DISPENSE_RESULT event or, when that is lost or the
  board restarted (POWER_UP), by QUERY; the driver never re-sends DISPENSE for it;
* on a half-duplex line (``half_duplex=True``, RS-485) it sends a request only after the line
  has been quiet for ``LINE_QUIET``: the board's events follow its reply (5.4);
* one lock serialises all exchanges, so threads may share a driver.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from firmware_protocols import onecard_v1 as p
from kiosk.board.base import (
    TRAFFIC,
    BoardInfo,
    BoardStatus,
    ClosingDriver,
    DispenseResult,
    Link,
    ReusedIdGuard,
    SlotTestResult,
    check_slot,
    check_txn,
    flag_names,
    result_of,
)
from kiosk.board.errors import (
    BoardBusyError,
    BoardLinkError,
    BoardProtocolError,
    BoardRejectedError,
    BoardTimeoutError,
)

log = logging.getLogger(__name__)
logging.addLevelName(TRAFFIC, "TRAFFIC")

PROTOCOL = "onecard-v1"

_M = TypeVar("_M", bound=p.Message)

BOARD_TURNAROUND = 0.050  # the board starts its reply within this (PROTOCOL.md 5.3)
SCHEDULING_MARGIN = 0.030  # our own process and the OS
SMALL_REPLY = 32  # bytes: every reply but INFO and the stock lists fits
EVENT_ALLOWANCE = 40  # bytes of events the board may push before its reply
INTER_FRAME_GAP = 0.050  # a partial frame idle this long is dropped (PROTOCOL.md 5.2)
BOOT_TIME = 2.0  # a board answers within this of power-on or RESET (PROTOCOL.md 5.7)
LINE_QUIET = 0.010  # half duplex: silence before a request (PROTOCOL.md 5.4)


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


class OneCardV1Driver(ClosingDriver):
    """``BoardDriver`` for the onecard-v1 framed protocol over any ``Link``.

    ``reply_timeout`` (seconds) overrides the deadline computed from ``baudrate``;
    ``poll_interval`` is how long a started dispense waits for its result event before it
    asks QUERY; ``dispense_timeout`` bounds a whole dispense; ``boot_time`` is how long the
    session's SYNC is asked again for a board that may be starting; ``half_duplex`` keeps the
    RS-485 rule of 5.4. ``on_event`` sees every event the board pushes (called with the lock
    held: it must not call the driver).
    """

    protocol = PROTOCOL

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
        boot_time: float = BOOT_TIME,
        half_duplex: bool = False,
        on_event: Callable[[p.Message], None] | None = None,
    ) -> None:
        self._link = link
        self._byte_time = 10 / baudrate
        self._reply_timeout = reply_timeout
        self._retries = retries
        self._poll_interval = poll_interval
        self._dispense_timeout = dispense_timeout
        self._reset_timeout = reset_timeout
        self._boot_time = boot_time
        self._half_duplex = half_duplex
        self._on_event = on_event
        self._lock = threading.RLock()
        self._reader = p.FrameReader(on_skip=self._trace_skip)
        self._backlog: deque[p.Frame] = deque()
        self._seq = 0
        self._counters = _Counters()
        self._seen = _Observed()
        self._last_rx = time.monotonic()
        self._closed = False
        self._reused = ReusedIdGuard()
        self._board_last: int | None = None  # from SYNC: None until the session began

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
        caps = flag_names(p.Capability, reply.capabilities)
        return BoardInfo(
            protocol=self.protocol,
            model=reply.model,
            firmware=reply.firmware,
            serial=reply.serial,
            slots=dict(reply.slots),
            capabilities=caps,
        )

    def dispense(self, slot: int, txn_id: int) -> DispenseResult:
        check_slot(slot)
        check_txn(txn_id)
        with self._lock:
            self._reused.check_dispense(txn_id, self.last_txn_id())
            deadline = time.monotonic() + self._dispense_timeout
            report = self._start_dispense(slot, txn_id, deadline)
            if report.state is not p.TxnState.DONE:
                report = self._await_result(txn_id, deadline)
            if report.slot != slot:
                raise BoardProtocolError(f"txn {txn_id} reported for slot {report.slot}")
            return result_of(report)

    def query(self, txn_id: int) -> DispenseResult | None:
        check_txn(txn_id)
        with self._lock:
            self._reused.check_query(txn_id, self._board_last or 0)
            report = self._query(txn_id)
            if report.state is p.TxnState.UNKNOWN:
                return None
            if report.state is not p.TxnState.DONE:
                report = self._await_result(txn_id, time.monotonic() + self._dispense_timeout)
            return result_of(report)

    def stock(self) -> dict[int, int]:
        with self._lock:
            reply = self._exchange(p.Stock(), p.StockReply, reply_size=p.MAX_FRAME)
        return dict(reply.counts)

    def last_txn_id(self) -> int:
        """The highest transaction id the board had recorded when this session began (its
        SYNC): a new transaction's id must be above it (PROTOCOL.md 6.2)."""
        with self._lock:
            if self._board_last is None:
                self._sync()
            assert self._board_last is not None
            return self._board_last

    # ----------------------------------------------------------------- more of the board

    def status(self) -> BoardStatus:
        with self._lock:
            r = self._exchange(p.Status(), p.StatusReply)
        return BoardStatus(
            door_open=r.door_open,
            temperature_c=None if r.temperature_dc is None else r.temperature_dc / 10,
            faults=flag_names(p.Fault, r.faults),
            busy_txn=r.busy_txn or None,
            boot_count=r.boot_count,
            uptime_s=r.uptime_s,
        )

    def slot_test(self, slot: int) -> SlotTestResult:
        check_slot(slot)
        with self._lock:
            r = self._exchange(p.SlotTest(slot), p.SlotTestReply)
        return SlotTestResult(r.slot, r.motor.name.lower(), r.sensor.name.lower())

    def temperature_limits(
        self, low_c: float | None = None, high_c: float | None = None
    ) -> tuple[float, float]:
        """Set the board's temperature limits (both given), or only read them (PROTOCOL.md
        4.10); returns the limits in force, in °C."""
        if (low_c is None) != (high_c is None):
            raise ValueError("give both limits, or neither")
        low = p.NO_TEMPERATURE if low_c is None else round(low_c * 10)
        high = p.NO_TEMPERATURE if high_c is None else round(high_c * 10)
        with self._lock:
            r = self._exchange(p.TempLimits(low, high), p.TempLimitsReply)
        return r.low_dc / 10, r.high_dc / 10

    def set_stock(self, slot: int, count: int) -> dict[int, int]:
        check_slot(slot)
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

    def _sync(self) -> None:
        """Begin the session (PROTOCOL.md 6.1): SYNC with a new nonce, asked again until the
        board's boot time has passed, so a board that is still starting is waited for."""
        nonce = secrets.randbits(32) or 1
        deadline = time.monotonic() + self._boot_time
        while True:
            try:
                reply = self._exchange(p.Sync(nonce), p.SyncReply)
            except BoardTimeoutError:
                if time.monotonic() >= deadline:
                    raise
                continue
            if reply.nonce == nonce:
                break
            self._counters.stale_frames += 1  # another session's SYNC reply: ask again
        self._board_last = reply.last_txn
        log.info("board session: last txn %d, boot %d", reply.last_txn, reply.boot_count)

    def _exchange(self, request: p.Message, expect: type[_M], reply_size: int = SMALL_REPLY) -> _M:
        if self._closed:
            raise BoardLinkError("driver is closed")
        if self._board_last is None and not isinstance(request, p.Sync):
            self._sync()
        if self._half_duplex:
            self._await_quiet()
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

    def _await_quiet(self) -> None:
        """Half duplex: listen until the line has been silent for ``LINE_QUIET`` (the board's
        events behind its last reply), bounded so a babbling line cannot stall us."""
        limit = time.monotonic() + BOARD_TURNAROUND + INTER_FRAME_GAP
        while True:
            now = time.monotonic()
            quiet_at = self._last_rx + LINE_QUIET
            if now >= quiet_at or now >= limit:
                return
            self._dispatch(self._receive(min(quiet_at, limit)))

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
