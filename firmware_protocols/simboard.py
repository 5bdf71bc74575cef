"""The simulated board's firmware logic: what a onecard-v1 board does (spec: PROTOCOL.md 4-7).

Pure apart from the ``persist`` callback it is given: frames and the time go in, frames come
out; the simulator (simulator.py) owns the line, the clock and the files. Physical things the
firmware cannot see (how many items really are in a slot, whether a motor is really jammed)
live here too, in ``BoardState.physical`` and ``Faults``, so tests can compare the board's
reports with what happened.
"""

from __future__ import annotations

import dataclasses
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
    max_run_ms: float = 400.0  # motor cut-off when the home switch never comes
    boot_ms: float = 60.0  # dark time of a power cycle or RESET


@dataclass(frozen=True)
class BoardConfig:
    model: str = "OC-SIM-1"
    firmware: str = "1.0.0"
    serial: str = "SIM-0001"
    slots: tuple[SlotConfig, ...] = (SlotConfig(1), SlotConfig(2))
    timings: Timings = Timings()
    temperature_dc: int = 180

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
        return cls(
            model=str(data.get("model", cls.model)),
            firmware=str(data.get("firmware", cls.firmware)),
            serial=str(data.get("serial", cls.serial)),
            slots=slots,
            timings=timings,
            temperature_dc=round(float(temp) * 10),
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
        for key, value in values.items():
            if key not in {f.name for f in dataclasses.fields(self)}:
                raise KeyError(key)
            if key == "power_cycle_at" and value not in (None, "motor", "after_drop"):
                raise ValueError(f"power_cycle_at must be motor or after_drop, not {value!r}")
            current = getattr(self, key)
            setattr(self, key, set(value) if isinstance(current, set) else value)

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
            "motor_runs": {str(k): v for k, v in self.motor_runs.items()},
            "double_drives": self.double_drives,
            "drops": self.drops,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoardState:
        txns: OrderedDict[int, TxnRecord] = OrderedDict()
        for t, slot, outcome, remaining in data.get("txns", []):
            txns[int(t)] = TxnRecord(int(slot), p.Outcome[outcome.upper()], int(remaining))
        return cls(
            counts={int(k): int(v) for k, v in data["counts"].items()},
            physical={int(k): int(v) for k, v in data["physical"].items()},
            txns=txns,
            inflight=data.get("inflight"),
            boot_count=int(data.get("boot_count", 0)),
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
        return self.off_until is not None and now < self.off_until

    def boot(self, now: float) -> list[p.Frame]:
        """Start up: settle an interrupted dispense from NVM, announce POWER_UP."""
        self.off_until = None
        self.booted_at = now
        self._event_seq = 0
        self.fault_bits = p.Fault.NONE  # fault bits live until a restart (PROTOCOL.md 4.2)
        st = self.state
        st.boot_count += 1
        if st.inflight is not None:
            txn, slot = st.inflight["txn"], st.inflight["slot"]
            outcome = p.Outcome.OK if st.inflight.get("dropped") else p.Outcome.NO_DROP
            st.txns[txn] = TxnRecord(slot, outcome, st.counts[slot])
            st.inflight = None
            self.fault_bits |= p.Fault.POWER_LOSS
            self._trim()
        self._persist(st)
        reason, self._boot_reason = self._boot_reason, p.PowerUpReason.POWER_ON
        return [self._event(p.PowerUp(st.boot_count & 0xFFFF, reason))]

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
        return p.Error(msg.code & 0xFF, p.ErrorCode.UNKNOWN_COMMAND), []

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
            if has_item:
                steps.append((now + (t.run_ms + t.drop_delay_ms) * ms, "drop"))
            else:
                steps.append((now + t.max_run_ms * ms, "motor_fault"))
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
                t = self.config.timings
                rest = t.drop_window_ms - t.drop_delay_ms
                active.steps.insert(0, (now + rest / 1000, "no_drop"))
                return []
            st.counts[active.slot] = max(0, st.counts[active.slot] - 1)
            assert st.inflight is not None
            st.inflight["dropped"] = 1
            self._persist(st)
            out = [self._progress(p.Phase.DROP_SEEN)] if progress else []
            if active.slot in self.faults.runaway:
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
        self.temperature_dc = temperature_dc
        return [self._event(p.TemperatureEvent(temperature_dc))]

    def clear_faults(self) -> None:
        self.fault_bits = p.Fault.NONE


def _fields(report: p.TxnReport) -> dict[str, Any]:
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
