"""The simulated board's firmware logic: what a onecard-v1 board does (spec: PROTOCOL.md 4-7).

Pure apart from the ``persist`` callback it is given: frames and the time go in, frames come
out; the simulator (simulator.py) owns the line, the clock and the files. Physical things the
firmware cannot see (how many items really are in a slot, whether a motor is really jammed)
live here too, in ``BoardState.physical`` and ``Faults``, so tests can compare the board's
reports with what happened.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_protocols import onecard_v1 as p

TXN_MEMORY = 1024  # outcomes kept in non-volatile memory (the spec asks for at least 256)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SlotConfig:
    slot: int
    product: str = "item"
    capacity: int = 50
    count: int = 10


@dataclass(frozen=True)
class Timings:
    """Motor and sensor timings in milliseconds (real boards: run ~1500, window ~1000)."""

    run_ms: float = 60.0  # motor on until the spiral's home switch stops it
    drop_delay_ms: float = 20.0  # from motor off until the item crosses the drop sensor
    drop_window_ms: float = 120.0  # how long after motor off the board waits for a drop
    max_run_ms: float = 400.0  # motor cut-off when the home switch never comes (spec: 6 s)
    boot_ms: float = 60.0  # dark time of a power cycle or RESET (spec: at most 2 s)


@dataclass(frozen=True)
class BoardConfig:
    model: str = "OC-SIM-1"
    firmware: str = "1.0.0"
    serial: str = "SIM-0001"
    slots: tuple[SlotConfig, ...] = (SlotConfig(1), SlotConfig(2))
    timings: Timings = Timings()
    temperature_dc: int = 180
    temperature_limits_dc: tuple[int, int] = (20, 300)  # 2.0 .. 30.0 °C until TEMP_LIMITS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoardConfig:
        slots = tuple(
            SlotConfig(
                slot=int(s["slot"]),
                product=str(s.get("product", "item")),
                capacity=int(s.get("capacity", max(50, int(s.get("count", 10))))),
                count=int(s.get("count", 10)),
            )
            for s in data.get("slots", [{"slot": 1}, {"slot": 2}])
        )
        timings = Timings(**{k: float(v) for k, v in data.get("timings", {}).items()})
        temp = data.get("temperature_c", 18.0)
        low, high = data.get("temperature_limits_c", (2.0, 30.0))
        return cls(
            model=str(data.get("model", cls.model)),
            firmware=str(data.get("firmware", cls.firmware)),
            serial=str(data.get("serial", cls.serial)),
            slots=slots,
            timings=timings,
            temperature_dc=round(float(temp) * 10),
            temperature_limits_dc=(round(float(low) * 10), round(float(high) * 10)),
        )

    @staticmethod
    def parse_slots(text: str) -> tuple[SlotConfig, ...]:
        """``"1=10,2=10"`` -> slots 1 and 2 with 10 items each."""
        slots = []
        for part in text.split(","):
            number, _, count = part.partition("=")
            n, c = int(number), int(count or 10)
            slots.append(SlotConfig(slot=n, count=c, capacity=max(50, c)))
        return tuple(slots)


@dataclass
class Faults:
    """Injected faults. The board-level ones are read here; the line-level ones by the
    simulator's endpoint."""

    jammed: set[int] = field(default_factory=set)  # motor stalls half way
    motor_open: set[int] = field(default_factory=set)  # motor draws no current
    runaway: set[int] = field(default_factory=set)  # home switch never comes
    dead_sensor: bool = False  # drop-sensor beam check fails
    blind_sensor: bool = False  # beam check passes but drops are missed
    power_cycle_at: str | None = None  # "motor" | "after_drop": cut power in the next dispense
    corrupt_rate: float = 0.0  # per byte, both directions
    loss_rate: float = 0.0  # per byte, both directions
    reply_delay_ms: float = 0.0
    no_reply: bool = False
    progress_events: bool = True

    def update(self, values: dict[str, Any]) -> None:
        """Set the named faults; ``ValueError`` (nothing changed) for an unknown name or a
        value of the wrong kind, so a bad control line never breaks the running board."""
        checked = {key: self._checked(key, value) for key, value in values.items()}
        for key, value in checked.items():
            setattr(self, key, value)

    def _checked(self, key: str, value: Any) -> Any:
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise ValueError(f"unknown fault {key!r}")
        current = getattr(self, key)
        if isinstance(current, set):
            slots = value if isinstance(value, list) else None
            if slots is None or not all(_is_int(v) and 1 <= v <= 255 for v in slots):
                raise ValueError(f"{key} must be a list of slot numbers 1..255")
            return set(slots)
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            return value
        if isinstance(current, float):
            ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
            top = 1.0 if key.endswith("_rate") else 60_000.0
            if not ok or not 0.0 <= value <= top:
                raise ValueError(f"{key} must be a number in 0..{top:g}")
            return float(value)
        if value not in (None, "motor", "after_drop"):  # power_cycle_at
            raise ValueError(f"{key} must be null, motor or after_drop, not {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}


# --------------------------------------------------------------------------- persistent state


@dataclass
class TxnRecord:
    slot: int
    outcome: p.Outcome
    remaining: int


@dataclass
class BoardState:
    """What the board keeps in non-volatile memory, plus the physical world."""

    counts: dict[int, int]
    physical: dict[int, int]
    txns: OrderedDict[int, TxnRecord] = field(default_factory=OrderedDict)
    inflight: dict[str, int] | None = None  # {"txn", "slot", "dropped"}
    boot_count: int = 0
    last_txn: int = 0  # the highest txn_id ever recorded (PROTOCOL.md 6.2), never decreases
    temp_limits_dc: tuple[int, int] | None = None  # set by TEMP_LIMITS; None: the config's
    motor_runs: dict[int, int] = field(default_factory=dict)
    double_drives: int = 0
    drops: int = 0

    @classmethod
    def fresh(cls, config: BoardConfig) -> BoardState:
        return cls(
            counts={s.slot: s.count for s in config.slots},
            physical={s.slot: s.count for s in config.slots},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "counts": {str(k): v for k, v in self.counts.items()},
            "physical": {str(k): v for k, v in self.physical.items()},
            "txns": [
                [t, r.slot, r.outcome.name.lower(), r.remaining] for t, r in self.txns.items()
            ],
            "inflight": self.inflight,
            "boot_count": self.boot_count,
            "last_txn": self.last_txn,
            "temp_limits_dc": None if self.temp_limits_dc is None else list(self.temp_limits_dc),
            "motor_runs": {str(k): v for k, v in self.motor_runs.items()},
            "double_drives": self.double_drives,
            "drops": self.drops,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoardState:
        txns: OrderedDict[int, TxnRecord] = OrderedDict()
        for t, slot, outcome, remaining in data.get("txns", []):
            txns[int(t)] = TxnRecord(int(slot), p.Outcome[outcome.upper()], int(remaining))
        limits = data.get("temp_limits_dc")
        inflight = data.get("inflight")
        known = [*txns, *([int(inflight["txn"])] if inflight else [])]
        return cls(
            counts={int(k): int(v) for k, v in data["counts"].items()},
            physical={int(k): int(v) for k, v in data["physical"].items()},
            txns=txns,
            inflight=inflight,
            boot_count=int(data.get("boot_count", 0)),
            last_txn=int(data.get("last_txn", max(known, default=0))),
            temp_limits_dc=None if limits is None else (int(limits[0]), int(limits[1])),
            motor_runs={int(k): int(v) for k, v in data.get("motor_runs", {}).items()},
            double_drives=int(data.get("double_drives", 0)),
            drops=int(data.get("drops", 0)),
        )


# --------------------------------------------------------------------------- the firmware


@dataclass
class _Dispense:
    txn: int
    slot: int
    started: float
    steps: list[tuple[float, str]]  # (due time, action), in order


class Board:
    """A onecard-v1 board. ``handle`` answers a frame, ``tick`` runs what is due."""

    def __init__(
        self,
        config: BoardConfig,
        state: BoardState,
        faults: Faults | None = None,
        persist: Callable[[BoardState], None] = lambda state: None,
    ) -> None:
        self.config = config
        self.state = state
        self.faults = faults or Faults()
        self._persist = persist
        self._slots = {s.slot: s for s in config.slots}
        for s in config.slots:  # slots added to the config after the state was made
            state.counts.setdefault(s.slot, s.count)
            state.physical.setdefault(s.slot, s.count)
        self.door_open = False
        self.temperature_dc = config.temperature_dc
        self._reported_temperature_dc = config.temperature_dc  # at the last TEMPERATURE event
        self.fault_bits = p.Fault.NONE
        self.booted_at = 0.0
        self.off_until: float | None = None
        self._boot_reason = p.PowerUpReason.POWER_ON
        self._event_seq = 0
        self._active: _Dispense | None = None
        self._last_request: tuple[int, int, bytes] | None = None
        self._last_reply: list[p.Frame] = []
        self._pending_reset: float | None = None

    # ----------------------------------------------------------------- power

    def power_off(self, now: float, reason: p.PowerUpReason = p.PowerUpReason.POWER_ON) -> None:
        """Lose power now: volatile state is gone, the board is dark for ``boot_ms``."""
        self._active = None
        self._last_request = None
        self._last_reply = []
        self._pending_reset = None
        self._boot_reason = reason
        self.off_until = now + self.config.timings.boot_ms / 1000

    def is_off(self, now: float) -> bool:
        """Dark: powered off, or booting and POWER_UP not sent yet (``tick`` boots the board
        once ``boot_ms`` has passed). A dark board hears nothing and answers nothing
        (PROTOCOL.md 5.7)."""
        return self.off_until is not None

    def boot(self, now: float) -> list[p.Frame]:
        """Start up: settle an interrupted dispense from NVM, announce POWER_UP, then FAULT
        when a fault bit is set from the start (POWER_LOSS, TEMPERATURE: PROTOCOL.md 6.4)."""
        self.off_until = None
        self.booted_at = now
        self._event_seq = 0
        self.fault_bits = p.Fault.NONE  # fault bits live until a restart (PROTOCOL.md 4.2)
        st = self.state
        st.boot_count += 1
        fault_slot = 0
        if st.inflight is not None:
            txn, fault_slot = st.inflight["txn"], st.inflight["slot"]
            outcome = p.Outcome.OK if st.inflight.get("dropped") else p.Outcome.NO_DROP
            st.txns[txn] = TxnRecord(fault_slot, outcome, st.counts[fault_slot])
            st.inflight = None
            self.fault_bits |= p.Fault.POWER_LOSS
            self._trim()
        if not self._temperature_ok(self.temperature_dc):
            self.fault_bits |= p.Fault.TEMPERATURE
        self._reported_temperature_dc = self.temperature_dc
        self._persist(st)
        reason, self._boot_reason = self._boot_reason, p.PowerUpReason.POWER_ON
        out = [self._event(p.PowerUp(st.boot_count & 0xFFFF, reason))]
        if self.fault_bits:
            out.append(self._event(p.FaultEvent(self.fault_bits, fault_slot)))
        return out

    # ----------------------------------------------------------------- time

    def next_deadline(self) -> float | None:
        times = []
        if self.off_until is not None:
            times.append(self.off_until)
        if self._pending_reset is not None:
            times.append(self._pending_reset)
        if self._active is not None and self._active.steps:
            times.append(self._active.steps[0][0])
        return min(times) if times else None

    def tick(self, now: float) -> list[p.Frame]:
        out: list[p.Frame] = []
        if self.off_until is not None:
            return self.boot(now) if now >= self.off_until else []
        if self._pending_reset is not None and now >= self._pending_reset:
            self.power_off(now, p.PowerUpReason.RESET_COMMAND)
            return []
        while self._active is not None and self._active.steps and self._active.steps[0][0] <= now:
            _, action = self._active.steps.pop(0)
            out.extend(self._step(action, now))
            if self.off_until is not None:
                return []  # power was cut; nothing more goes out
        return out

    # ----------------------------------------------------------------- requests

    def handle(self, frame: p.Frame, now: float) -> list[p.Frame]:
        if self.is_off(now):
            return []
        msg = frame.message
        if isinstance(msg, p.Sync) and frame.version == p.VERSION:
            # A new host session: never answered from the repeat cache, and it empties it, so
            # a host that numbers its requests from 1 again gets no old reply (PROTOCOL.md 6.1).
            self._last_request, self._last_reply = None, []
            return [p.Frame(frame.seq, self._sync(msg))]
        key = (frame.seq, msg.code, msg.payload())
        if key == self._last_request:
            return list(self._last_reply)  # a retransmission: same answer, nothing redone
        reply, extra = self._answer(frame, now)
        replies = [p.Frame(frame.seq, reply)]
        self._last_request, self._last_reply = key, replies
        return replies + extra

    def _answer(self, frame: p.Frame, now: float) -> tuple[p.Message, list[p.Frame]]:
        msg = frame.message
        if frame.version != p.VERSION:
            return p.Error(msg.code & 0xFF, p.ErrorCode.BAD_VERSION, p.VERSION), []
        if isinstance(msg, p.MalformedMessage):
            return p.Error(msg.code, p.ErrorCode.MALFORMED), []
        if isinstance(msg, p.Hello):
            return self.info(), []
        if isinstance(msg, p.Status):
            return self.status(now), []
        if isinstance(msg, p.Dispense):
            return self._dispense(msg, now)
        if isinstance(msg, p.Query):
            return self._query(msg), []
        if isinstance(msg, p.SlotTest):
            return self._slot_test(msg), []
        if isinstance(msg, p.Reset):
            if self._active is not None:
                return p.Error(msg.code, p.ErrorCode.BUSY), []
            self._pending_reset = now + 0.005
            return p.ResetAck(), []
        if isinstance(msg, p.Stock):
            return p.StockReply(self._counts()), []
        if isinstance(msg, p.SetStock):
            return self._set_stock(msg)
        if isinstance(msg, p.TempLimits):
            return self._temp_limits(msg)
        return p.Error(msg.code & 0xFF, p.ErrorCode.UNKNOWN_COMMAND), []

    def _sync(self, msg: p.Sync) -> p.Message:
        if msg.nonce == 0:
            return p.Error(msg.code, p.ErrorCode.BAD_VALUE)
        return p.SyncReply(msg.nonce, self.state.last_txn, self.state.boot_count & 0xFFFF)

    @property
    def temperature_limits_dc(self) -> tuple[int, int]:
        return self.state.temp_limits_dc or self.config.temperature_limits_dc

    def _temperature_ok(self, temperature_dc: int) -> bool:
        low, high = self.temperature_limits_dc
        return low <= temperature_dc <= high

    def _temp_limits(self, msg: p.TempLimits) -> tuple[p.Message, list[p.Frame]]:
        none = p.NO_TEMPERATURE
        if (msg.low_dc, msg.high_dc) != (none, none):
            if none in (msg.low_dc, msg.high_dc) or msg.low_dc >= msg.high_dc:
                return p.Error(msg.code, p.ErrorCode.BAD_VALUE), []
            self.state.temp_limits_dc = (msg.low_dc, msg.high_dc)
            self._persist(self.state)
        low, high = self.temperature_limits_dc
        return p.TempLimitsReply(low, high), self._check_temperature()

    def _check_temperature(self) -> list[p.Frame]:
        """FAULT TEMPERATURE once the temperature is out of the limits (the bit stays set)."""
        if self._temperature_ok(self.temperature_dc) or p.Fault.TEMPERATURE in self.fault_bits:
            return []
        return self._raise_fault(p.Fault.TEMPERATURE, 0)

    def info(self) -> p.Info:
        caps = (
            p.Capability.DROP_SENSOR
            | p.Capability.DOOR_SENSOR
            | p.Capability.TEMPERATURE
            | p.Capability.SLOT_TEST
            | p.Capability.STOCK_COUNT
        )
        slots = tuple((s.slot, s.capacity) for s in self.config.slots)
        c = self.config
        return p.Info(p.VERSION, c.model, c.firmware, c.serial, caps, slots)

    def status(self, now: float) -> p.StatusReply:
        return p.StatusReply(
            door_open=self.door_open,
            temperature_dc=self.temperature_dc,
            faults=self.fault_bits,
            busy_txn=self._active.txn if self._active else 0,
            boot_count=self.state.boot_count & 0xFFFF,
            uptime_s=int(max(0.0, now - self.booted_at)),
        )

    def _counts(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self.state.counts.items()))

    def _report(self, cls: type[p.TxnReport], txn: int) -> p.TxnReport:
        rec = self.state.txns.get(txn)
        if rec is not None:
            return cls(txn, p.TxnState.DONE, rec.slot, rec.outcome, rec.remaining)
        if self._active is not None and self._active.txn == txn:
            return cls(txn, p.TxnState.IN_PROGRESS, self._active.slot)
        return cls(txn, p.TxnState.UNKNOWN)

    def _query(self, msg: p.Query) -> p.Message:
        if msg.txn_id == 0:
            return p.Error(msg.code, p.ErrorCode.BAD_TXN)
        return self._report(p.QueryReply, msg.txn_id)

    def _slot_test(self, msg: p.SlotTest) -> p.Message:
        if msg.slot not in self._slots:
            return p.Error(msg.code, p.ErrorCode.BAD_SLOT, msg.slot)
        if self._active is not None:
            return p.Error(msg.code, p.ErrorCode.BUSY)
        f = self.faults
        motor = p.MotorCheck.OK
        if msg.slot in f.motor_open:
            motor = p.MotorCheck.OPEN_CIRCUIT
        elif msg.slot in f.jammed:
            motor = p.MotorCheck.STALLED
        sensor = p.SensorCheck.FAULT if f.dead_sensor else p.SensorCheck.OK
        return p.SlotTestReply(msg.slot, motor, sensor)

    def _set_stock(self, msg: p.SetStock) -> tuple[p.Message, list[p.Frame]]:
        slot = self._slots.get(msg.slot)
        if slot is None:
            return p.Error(msg.code, p.ErrorCode.BAD_SLOT, msg.slot), []
        if msg.count > slot.capacity:
            return p.Error(msg.code, p.ErrorCode.BAD_VALUE, msg.slot), []
        if self._active is not None and self._active.slot == msg.slot:
            return p.Error(msg.code, p.ErrorCode.BUSY), []
        self.state.counts[msg.slot] = msg.count
        self.state.physical[msg.slot] = msg.count  # the technician filled it to that count
        self._persist(self.state)
        return p.SetStockReply(self._counts()), []

    def _dispense(self, msg: p.Dispense, now: float) -> tuple[p.Message, list[p.Frame]]:
        txn, slot = msg.txn_id, msg.slot
        if txn == 0:
            return p.Error(msg.code, p.ErrorCode.BAD_TXN), []
        rec = self.state.txns.get(txn)
        if rec is not None:  # repeated: report the first outcome, never drive again
            if rec.slot != slot:
                return p.Error(msg.code, p.ErrorCode.TXN_CONFLICT, rec.slot), []
            return self._report(p.DispenseAck, txn), []
        if self._active is not None:
            if self._active.txn != txn:
                return p.Error(msg.code, p.ErrorCode.BUSY), []
            if self._active.slot != slot:
                return p.Error(msg.code, p.ErrorCode.TXN_CONFLICT, self._active.slot), []
            return self._report(p.DispenseAck, txn), []
        if slot not in self._slots:
            return p.Error(msg.code, p.ErrorCode.BAD_SLOT, slot), []
        if self.door_open:
            return p.Error(msg.code, p.ErrorCode.DOOR_OPEN), []
        st = self.state
        if st.counts[slot] == 0:
            return self._finish_now(txn, slot, p.Outcome.EMPTY), []
        if self.faults.dead_sensor:  # beam check before the motor: nothing may leave unseen
            extra = self._raise_fault(p.Fault.DROP_SENSOR, 0)
            return self._finish_now(txn, slot, p.Outcome.NO_DROP), extra
        # Record the attempt in NVM before the motor turns (spec 6.3).
        st.inflight = {"txn": txn, "slot": slot, "dropped": 0}
        st.last_txn = max(st.last_txn, txn)
        runs = st.motor_runs.get(txn, 0)
        if runs:
            st.double_drives += 1
        st.motor_runs[txn] = runs + 1
        if len(st.motor_runs) > 4 * TXN_MEMORY:
            st.motor_runs.pop(next(iter(st.motor_runs)))
        self._persist(st)
        self._active = _Dispense(txn, slot, now, self._plan(slot, now))
        extra = [self._progress(p.Phase.MOTOR_ON)] if self.faults.progress_events else []
        return p.DispenseAck(txn, p.TxnState.STARTED, slot), extra

    def _plan(self, slot: int, now: float) -> list[tuple[float, str]]:
        t = self.config.timings
        f = self.faults
        ms = 1 / 1000
        steps: list[tuple[float, str]] = []
        if f.power_cycle_at == "motor":
            return [(now + t.run_ms * ms / 2, "power_cycle")]
        if slot in f.motor_open:
            return [(now + 0.005, "motor_fault")]
        if slot in f.jammed:
            return [(now + t.run_ms * ms / 2, "jammed")]
        has_item = self.state.physical[slot] > 0
        if slot in f.runaway:
            # No home switch: the motor runs until a drop is seen or the cut-off, then the
            # sensor is watched for the drop window (PROTOCOL.md 7).
            if has_item:
                steps.append((now + (t.run_ms + t.drop_delay_ms) * ms, "drop"))
            steps.append((now + t.max_run_ms * ms, "cut_off"))
            steps.append((now + (t.max_run_ms + t.drop_window_ms) * ms, "runaway_end"))
            return steps
        steps.append((now + t.run_ms * ms, "motor_off"))
        if has_item:
            steps.append((now + (t.run_ms + t.drop_delay_ms) * ms, "drop"))
        else:
            steps.append((now + (t.run_ms + t.drop_window_ms) * ms, "no_drop"))
        return steps

    def _step(self, action: str, now: float) -> list[p.Frame]:
        active = self._active
        assert active is not None
        st = self.state
        progress = self.faults.progress_events
        if action == "power_cycle":
            self.faults.power_cycle_at = None
            self.power_off(now)
            return []
        if action == "motor_off":
            return [self._progress(p.Phase.MOTOR_OFF)] if progress else []
        if action == "drop":
            st.physical[active.slot] -= 1
            st.drops += 1
            if self.faults.blind_sensor:
                if active.slot not in self.faults.runaway:  # a runaway runs on to its cut-off
                    t = self.config.timings
                    rest = t.drop_window_ms - t.drop_delay_ms
                    active.steps.insert(0, (now + rest / 1000, "no_drop"))
                return []
            st.counts[active.slot] = max(0, st.counts[active.slot] - 1)
            assert st.inflight is not None
            st.inflight["dropped"] = 1
            self._persist(st)
            out = [self._progress(p.Phase.DROP_SEEN)] if progress else []
            if active.slot in self.faults.runaway:  # cut at the seen drop: OK, fault MOTOR
                out += self._raise_fault(p.Fault.MOTOR, active.slot)
            if self.faults.power_cycle_at == "after_drop":
                self.faults.power_cycle_at = None
                self.power_off(now)
                return []
            return out + self._finish(p.Outcome.OK)
        if action == "no_drop":
            return self._finish(p.Outcome.NO_DROP)
        if action == "jammed":
            return self._raise_fault(p.Fault.JAM, active.slot) + self._finish(p.Outcome.JAMMED)
        if action == "motor_fault":
            fault = self._raise_fault(p.Fault.MOTOR, active.slot)
            return fault + self._finish(p.Outcome.MOTOR_FAULT)
        if action == "cut_off":  # the home switch never came: motor off, fault MOTOR
            return self._raise_fault(p.Fault.MOTOR, active.slot)
        if action == "runaway_end":  # cut off and no drop seen in the window after it
            return self._finish(p.Outcome.MOTOR_FAULT)
        raise AssertionError(action)

    def _finish(self, outcome: p.Outcome) -> list[p.Frame]:
        active = self._active
        assert active is not None
        self._active = None
        self.state.inflight = None
        report = self._finish_now(active.txn, active.slot, outcome)
        return [self._event(p.DispenseResult(**_fields(report)))]

    def _finish_now(self, txn: int, slot: int, outcome: p.Outcome) -> p.DispenseAck:
        st = self.state
        st.txns[txn] = TxnRecord(slot, outcome, st.counts[slot])
        st.last_txn = max(st.last_txn, txn)
        self._trim()
        self._persist(st)
        return p.DispenseAck(txn, p.TxnState.DONE, slot, outcome, st.counts[slot])

    def _trim(self) -> None:
        while len(self.state.txns) > TXN_MEMORY:
            self.state.txns.popitem(last=False)

    # ----------------------------------------------------------------- events

    def _event(self, msg: p.Message) -> p.Frame:
        self._event_seq = self._event_seq % 255 + 1
        return p.Frame(self._event_seq, msg)

    def _progress(self, phase: p.Phase) -> p.Frame:
        assert self._active is not None
        return self._event(p.DispenseProgress(self._active.txn, self._active.slot, phase))

    def _raise_fault(self, bit: p.Fault, slot: int) -> list[p.Frame]:
        self.fault_bits |= bit
        return [self._event(p.FaultEvent(self.fault_bits, slot))]

    def set_door(self, door_open: bool) -> list[p.Frame]:
        if door_open == self.door_open:
            return []
        self.door_open = door_open
        return [self._event(p.DoorEvent(door_open))]

    def set_temperature(self, temperature_dc: int) -> list[p.Frame]:
        """The sensor reads a new value: TEMPERATURE when it moved 1 °C or more from the last
        reported value or crossed a limit, then FAULT when it left the limits (PROTOCOL.md 8)."""
        before, self.temperature_dc = self._reported_temperature_dc, temperature_dc
        crossed = self._temperature_ok(before) != self._temperature_ok(temperature_dc)
        out = []
        if crossed or abs(temperature_dc - before) >= 10:
            self._reported_temperature_dc = temperature_dc
            out.append(self._event(p.TemperatureEvent(temperature_dc)))
        return out + self._check_temperature()

    def clear_faults(self) -> None:
        self.fault_bits = p.Fault.NONE


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields(report: p.TxnReport) -> dict[str, Any]:
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
