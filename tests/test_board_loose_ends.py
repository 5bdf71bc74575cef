"""The board protocol's loose ends (issue 13, section 5): each point where PROTOCOL.md and the
simulator disagreed or said nothing, now decided in the spec, kept by the simulator and the
kiosk's drivers, and checked here: in process on the firmware logic where that is enough, else
through the simulator on a pty."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from firmware_protocols import modbus_rtu as mb
from firmware_protocols import onecard_v1 as p
from firmware_protocols.simboard import BoardState, Faults
from kiosk.board import (
    BoardDriver,
    DispenseOutcome,
    DispenseResult,
    ModbusRtuDriver,
    OneCardV1Driver,
    TxnIdReusedError,
    open_board,
)
from kiosk.board.modbus_rtu import POLL_INTERVAL
from kiosk.board.serial_link import SerialLink
from kiosk.journal import Journal, TxnState
from tests.fixtures.board import FAST_TIMINGS, BoardSim
from tests.fixtures.firmware import Bench, Unit

OC, S = p.Outcome, p.TxnState
SPEC = Path(__file__).resolve().parent.parent / "firmware_protocols" / "PROTOCOL.md"
Start = Callable[..., BoardSim]


def raw_exchange(link: SerialLink, frame: p.Frame, wait: float = 0.5) -> list[p.Frame]:
    """Send one frame as a bare host would and collect what comes back within ``wait``."""
    reader = p.FrameReader()
    link.write(p.encode(frame))
    frames: list[p.Frame] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        frames += reader.feed(link.read(deadline - time.monotonic()))
        if any(f.seq == frame.seq and not p.is_event(f.message.code) for f in frames):
            frames += reader.feed(link.read(0.05))  # events right behind the reply
            break
    return frames


def reply_to(frames: list[p.Frame], seq: int) -> p.Message:
    (reply,) = [f.message for f in frames if f.seq == seq and not p.is_event(f.message.code)]
    return reply


# --------------------------------------------------------------------------- 1. host restart


def test_sync_empties_the_repeat_cache_so_a_restarted_host_gets_no_stale_reply() -> None:
    bench = Bench()
    assert bench.send(p.Dispense(1, 5), seq=1) == p.DispenseAck(5, S.STARTED, 1)
    assert bench.send(p.Query(5), seq=2) == p.QueryReply(5, S.IN_PROGRESS, 1)
    bench.wait()  # the dispense ends; the old host is gone
    # Without SYNC a request equal to the cached one (same SEQ, CODE, PAYLOAD) is a
    # retransmission: the hazard the issue saw.
    assert bench.send(p.Query(5), seq=2) == p.QueryReply(5, S.IN_PROGRESS, 1)
    # A new host begins with SYNC, and then the same bytes are a new request.
    reply = bench.send(p.Sync(0xC0FFEE), seq=1)
    assert reply == p.SyncReply(0xC0FFEE, 5, 1)
    assert bench.send(p.Query(5), seq=2) == p.QueryReply(5, S.DONE, 1, OC.OK, 2)


def test_sync_itself_is_never_answered_from_the_cache() -> None:
    bench = Bench()
    assert bench.send(p.Sync(7), seq=1) == p.SyncReply(7, 0, 1)
    bench.dispense(1, 40)
    assert bench.send(p.Sync(7), seq=1) == p.SyncReply(7, 40, 1)  # asked again, answered anew
    assert bench.send(p.Sync(0), seq=2) == p.Error(p.Code.SYNC, p.ErrorCode.BAD_VALUE)


def test_restarted_kiosk_driver_gets_the_outcome_not_the_old_in_progress(
    board_sim_factory: Start,
) -> None:
    sim = board_sim_factory(timings={**FAST_TIMINGS, "run_ms": 300})
    # The old host: its last request, (SEQ 2, QUERY 77), was answered IN_PROGRESS.
    with SerialLink(sim.device) as link:
        assert reply_to(raw_exchange(link, p.Frame(1, p.Dispense(1, 77))), 1).state is S.STARTED  # type: ignore[attr-defined]
        assert reply_to(raw_exchange(link, p.Frame(2, p.Query(77))), 2).state is S.IN_PROGRESS  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while "77" not in sim.stats()["outcomes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    # The restarted host numbers from 1 again: SYNC is its SEQ 1, its QUERY 77 is SEQ 2,
    # byte for byte the old host's last request. It must be answered, not repeated.
    with closing(open_board(sim.device, reply_timeout=0.1, poll_interval=5.0)) as b:
        assert isinstance(b, OneCardV1Driver)
        assert b.query(77) == DispenseResult(77, 1, DispenseOutcome.OK, 9)
        assert b.counters()["queries"] == 1  # DONE at once: no stale IN_PROGRESS to wait out


# --------------------------------------------------------------------------- 2. txn id reuse


@pytest.mark.parametrize("protocol", ["onecard-v1", "modbus-rtu"])
def test_a_restored_journal_does_not_reuse_the_boards_txn_ids(
    board_sim_factory: Start, tmp_path: Path, protocol: str
) -> None:
    """The journal is lost and an older copy comes back (or a new one starts at the same
    point): its next ids are ones the board recorded. The driver refuses to send them (the
    board would answer an old OK: a charge with no item) and the journal, told the board's
    last id at start-up, moves above it."""
    sim = board_sim_factory(args=["--protocol", protocol])
    path = tmp_path / "journal.sqlite3"
    backup = tmp_path / "journal-backup.sqlite3"

    def tap(journal: Journal, board: BoardDriver, key: str) -> int:
        txn = journal.begin(1, key, {"slot": 1})
        journal.advance(txn.id, TxnState.AUTHORIZED, authorization_id=f"auth-{key}")
        journal.advance(txn.id, TxnState.DISPENSING)
        result = board.dispense(1, txn.id)
        journal.advance(txn.id, TxnState.DISPENSED, outcome=str(result.outcome))
        return txn.id

    with Journal(path) as journal:
        journal.checkpoint()
        shutil.copy(path, backup)
        with closing(open_board(sim.device, protocol, reply_timeout=0.2, poll_interval=0.02)) as b:
            old_ids = [tap(journal, b, "old-1"), tap(journal, b, "old-2")]
    assert sim.stats()["physical"]["1"] == 8
    shutil.copy(backup, path)  # the journal is reset to its older copy
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    with (
        Journal(path) as journal,
        closing(open_board(sim.device, protocol, reply_timeout=0.2, poll_interval=0.02)) as b,
    ):
        board_last = b.last_txn_id()
        assert board_last == old_ids[-1]
        reused = journal.begin(1, "new-1", {"slot": 1})
        assert reused.id == old_ids[0]
        journal.advance(reused.id, TxnState.AUTHORIZED, authorization_id="auth-new-1")
        journal.advance(reused.id, TxnState.DISPENSING)
        with pytest.raises(TxnIdReusedError) as refused:
            b.dispense(1, reused.id)
        assert (refused.value.txn_id, refused.value.board_last) == (reused.id, board_last)
        # Nothing was sent for it; and the board's record for that id (the old resident's OK)
        # is not this transaction's: the session will not settle it from a QUERY either.
        assert sim.stats()["outcomes"][str(reused.id)] == "ok"
        with pytest.raises(TxnIdReusedError):
            b.query(reused.id)
        assert sim.stats()["motor_runs"] == {str(i): 1 for i in old_ids}
        journal.advance(reused.id, TxnState.NOT_DISPENSED, outcome="txn_id_reused")

        # Start-up done right: the journal continues above the board's last id.
        assert journal.continue_txn_ids_above(board_last) == board_last + 1
        new_id = tap(journal, b, "new-2")
        assert new_id == board_last + 1
        assert journal.get(new_id).outcome == "ok"
    stats = sim.stats()
    assert stats["motor_runs"][str(new_id)] == 1 and stats["physical"]["1"] == 7


def test_continue_txn_ids_above_never_goes_back(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        first = journal.begin(1, "k1", {}).id
        assert journal.continue_txn_ids_above(0) == first + 1  # below: nothing changes
        assert journal.begin(1, "k2", {}).id == first + 1
        assert journal.continue_txn_ids_above(first + 1000) == first + 1001
        assert journal.begin(1, "k3", {}).id == first + 1001


# --------------------------------------------------------------------------- 3. runaway motor


# In test_board_firmware: test_runaway_motor_is_stopped_by_the_drop_and_flagged (a drop seen
# cuts the motor: OK and fault MOTOR) and test_runaway_motor_with_a_blind_sensor_is_cut_off_
# as_motor_fault (no drop seen: the cut-off, then MOTOR_FAULT, not NO_DROP).


# --------------------------------------------------------------------------- 4. POWER_LOSS


def test_power_loss_raises_a_fault_event_after_power_up(board_sim: BoardSim) -> None:
    events: list[p.Message] = []
    board_sim.faults(power_cycle_at="motor")
    link = SerialLink(board_sim.device)
    with OneCardV1Driver(link, reply_timeout=0.1, poll_interval=0.2, on_event=events.append) as b:
        assert b.dispense(1, 12).outcome is DispenseOutcome.NO_DROP
        assert "power_loss" in b.status().faults
    boot = [m for m in events if isinstance(m, p.PowerUp | p.FaultEvent)]
    assert boot == [p.PowerUp(2, p.PowerUpReason.POWER_ON), p.FaultEvent(p.Fault.POWER_LOSS, 1)]


# --------------------------------------------------------------------------- 5. temperature


def test_temperature_limits_are_set_reported_and_kept() -> None:
    bench = Bench()
    assert bench.send(p.TempLimits(p.NO_TEMPERATURE, p.NO_TEMPERATURE)) == p.TempLimitsReply(
        20, 300
    )
    assert bench.send(p.TempLimits(50, 200)) == p.TempLimitsReply(50, 200)  # 18.0 °C: inside

    def events(temperature_dc: int) -> list[p.Message]:
        return [f.message for f in bench.board.set_temperature(temperature_dc)]

    assert events(175) == []  # under 1 °C from the last reported 18.0 °C
    assert events(165) == [p.TemperatureEvent(165)]
    assert events(201) == [p.TemperatureEvent(201), p.FaultEvent(p.Fault.TEMPERATURE, 0)]
    assert events(199) == [p.TemperatureEvent(199)]  # back across the limit, however small
    assert p.Fault.TEMPERATURE in bench.send(p.Status()).faults  # type: ignore[attr-defined]
    for low, high in [(80, 50), (50, 50), (p.NO_TEMPERATURE, 40)]:
        assert bench.send(p.TempLimits(low, high)) == p.Error(
            p.Code.TEMP_LIMITS, p.ErrorCode.BAD_VALUE
        )
    kept = BoardState.from_json(json.loads(json.dumps(bench.saved[-1])))
    assert kept.temp_limits_dc == (50, 200)
    # Limits that leave the present temperature outside raise the fault at once.
    other = Bench()
    assert other.send(p.TempLimits(50, 80)) == p.TempLimitsReply(50, 80)
    assert other.events[-1] == p.FaultEvent(p.Fault.TEMPERATURE, 0)


def test_temperature_limits_through_both_drivers(board_sim_factory: Start) -> None:
    sim = board_sim_factory()
    with OneCardV1Driver(SerialLink(sim.device), reply_timeout=0.1) as b:
        assert b.temperature_limits() == (2.0, 30.0)
        assert b.temperature_limits(4.5, 8.0) == (4.5, 8.0)
        sim.command("temperature", celsius=9.0)
        assert "temperature" in b.status().faults
    unit = Unit()
    unit.write(mb.Reg.TEMP_LOW, (-50) & 0xFFFF, 250)
    assert unit.read(mb.Reg.TEMP_LOW, 2) == [(-50) & 0xFFFF, 250]
    assert unit.board.temperature_limits_dc == (-50, 250)


# --------------------------------------------------------------------------- 6. boot


def test_a_booting_board_is_dark_until_it_has_sent_power_up() -> None:
    bench = Bench()
    bench.board.power_off(bench.now)
    bench.now += 1.0  # well past boot_ms, but the firmware has not run its boot yet
    assert bench.board.handle(p.Frame(1, p.Status()), bench.now) == []
    assert [f.message for f in bench.board.tick(bench.now)] == [
        p.PowerUp(2, p.PowerUpReason.POWER_ON)
    ]
    assert isinstance(bench.send(p.Status()), p.StatusReply)


def test_driver_waits_out_the_boot_time(board_sim_factory: Start) -> None:
    """A board dark for 1 s after a power cycle, a driver whose retries alone give up after
    0.2 s: the session's SYNC is asked again for the whole boot time (5.7), so it succeeds."""
    sim = board_sim_factory(timings={**FAST_TIMINGS, "boot_ms": 1000})
    sim.command("power_cycle")
    with OneCardV1Driver(SerialLink(sim.device), reply_timeout=0.05, retries=3) as b:
        assert b.stock() == {1: 10, 2: 10}
        assert b.counters()["timeouts"] >= 1  # it really was dark at first
    assert sim.stats()["boot_count"] == 2


# --------------------------------------------------------------------------- 7. RS-485


def test_half_duplex_board_speaks_only_behind_its_reply(board_sim_factory: Start) -> None:
    sim = board_sim_factory(args=["--half-duplex"])
    with SerialLink(sim.device) as link:
        assert isinstance(reply_to(raw_exchange(link, p.Frame(1, p.Sync(1))), 1), p.SyncReply)
        sim.command("door", open=True)
        assert link.read(0.3) == b""  # held: the host may be talking
        frames = raw_exchange(link, p.Frame(2, p.Status()))
    assert [type(f.message) for f in frames] == [p.StatusReply, p.DoorEvent]
    # A full-duplex board sends the same event at once.
    full = board_sim_factory(name="full")
    with SerialLink(full.device) as link:
        full.command("door", open=True)
        reader, got = p.FrameReader(), []
        deadline = time.monotonic() + 2
        while p.DoorEvent(True) not in got and time.monotonic() < deadline:
            got += [f.message for f in reader.feed(link.read(0.2))]
    assert p.DoorEvent(True) in got  # no request was sent


def test_half_duplex_driver_dispenses_through_queries(board_sim_factory: Start) -> None:
    sim = board_sim_factory(args=["--half-duplex"])
    events: list[p.Message] = []
    link = SerialLink(sim.device)
    with OneCardV1Driver(
        link, reply_timeout=0.1, poll_interval=0.05, half_duplex=True, on_event=events.append
    ) as b:
        assert b.dispense(1, 3) == DispenseResult(3, 1, DispenseOutcome.OK, 9)
        assert b.counters()["queries"] >= 1
    assert p.DispenseProgress(3, 1, p.Phase.MOTOR_ON) in events  # it came behind a reply


# --------------------------------------------------------------------------- 8. Modbus polling


def line_share(requests: Sequence[int], responses: Sequence[int], pause_s: float) -> float:
    """Share of a 9600 baud line a poll takes: its frames, a 3.5-character silence before
    each, against the poll plus the pause before the next."""
    char = 10 / 9600
    busy = (sum(requests) + sum(responses) + 3.5 * (len(requests) + len(responses))) * char
    return busy / (busy + pause_s)


def test_modbus_poll_interval_leaves_the_line_mostly_free() -> None:
    read = len(mb.encode_request(mb.ReadHolding(1, mb.Reg.TXN_HI, 6)))
    read_reply = 5 + 2 * 6
    select_ = len(mb.encode_request(mb.WriteRegisters(1, 16, mb.Reg.TXN_HI, (0, 1))))
    assert (read, read_reply, select_) == (8, 17, 13)  # the figures of PROTOCOL.md 11.4
    now = line_share([read], [read_reply], POLL_INTERVAL)
    before = line_share([select_, read], [8, read_reply], 0.05)  # select + read every 50 ms
    assert now < 0.15 < 0.5 < before
    spec = SPEC.read_text()
    assert f"{POLL_INTERVAL * 1000:.0f} ms" in spec.split("### 11.4")[1].split("##")[0]


class CountingRegisters:
    """A ``RegisterLink`` over the simulated board's register server, counting requests."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.writes: list[int] = []
        self.reads: list[int] = []

    def read_registers(self, address: int, count: int) -> list[int]:
        self.reads.append(address)
        self.unit.run(0.004)  # time passes on the board between two polls
        return self.unit.read(address, count)

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        self.writes.append(address)
        self.unit.write(address, *values)

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def test_modbus_driver_polls_with_one_read_each() -> None:
    registers = CountingRegisters(Unit())
    driver = ModbusRtuDriver(registers, poll_interval=0.0)
    assert driver.dispense(1, 9) == DispenseResult(9, 1, DispenseOutcome.OK, 1)
    assert registers.writes == [mb.Reg.DISPENSE_SLOT]  # the DISPENSE block selected it
    polls = [a for a in registers.reads if a == mb.Reg.TXN_HI]
    assert len(polls) >= 2 and registers.reads[-len(polls) :] == polls


# --------------------------------------------------------------------------- 9, 10. Modbus map


def test_write_only_registers_read_back_as_zero() -> None:
    unit = Unit()
    unit.write(mb.Reg.DISPENSE_SLOT, 1, 0, 42)
    assert unit.read(mb.Reg.DISPENSE_SLOT, 3) == [mb.WRITE_ONLY_VALUE] * 3 == [0, 0, 0]


def test_txn_state_reads_in_progress_never_started() -> None:
    """STARTED answers only the DISPENSE that started it (4.3); a read is a query."""
    unit = Unit()
    unit.write(mb.Reg.DISPENSE_SLOT, 1, 0, 42)
    seen = []
    for _ in range(6):
        seen.append(unit.read(mb.Reg.TXN_STATE, 1)[0])
        unit.run(0.01)
    assert S.STARTED not in seen
    assert seen[0] == S.IN_PROGRESS and seen[-1] == S.DONE
    bench = Bench()
    assert bench.send(p.Dispense(1, 3)).state is S.STARTED  # type: ignore[attr-defined]
    assert bench.send(p.Query(3)).state is S.IN_PROGRESS  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- 11. control socket


def control_lines(sim: BoardSim, payload: bytes, lines: int) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sim.control_path))
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < lines:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


BAD_LINES = [
    b"{not json",  # invalid JSON
    b"\xff\xfe",  # not UTF-8
    b"",  # an empty line
    b'"stats"',  # valid JSON, not an object
    b"[1, 2]",
    b"null",
    b"5",
    b"{}",  # no command
    b'{"cmd": 5}',
    b'{"cmd": "nope"}',  # unknown command
    b'{"cmd": "door"}',  # a field missing
    b'{"cmd": "door", "open": "yes"}',  # wrong types from here on
    b'{"cmd": "temperature", "celsius": "hot"}',
    b'{"cmd": "temperature", "celsius": 1e999}',
    b'{"cmd": "temperature", "celsius": true}',
    b'{"cmd": "temperature", "celsius": 99999}',
    b'{"cmd": "garbage", "hex": "zz"}',
    b'{"cmd": "garbage", "hex": 12}',
    b'{"cmd": "restock", "slot": 99, "count": 1}',
    b'{"cmd": "restock", "slot": "1", "count": 1}',
    b'{"cmd": "restock", "slot": 1, "count": -1}',
    b'{"cmd": "faults", "loss_rate": "x"}',
    b'{"cmd": "faults", "loss_rate": 2}',
    b'{"cmd": "faults", "jammed": 5}',
    b'{"cmd": "faults", "jammed": [0]}',
    b'{"cmd": "faults", "no_reply": 1}',
    b'{"cmd": "faults", "power_cycle_at": "later"}',
    b'{"cmd": "faults", "nonsense": 1}',
]


@pytest.mark.parametrize("line", BAD_LINES, ids=[repr(x)[2:-1][:32] for x in BAD_LINES])
def test_every_bad_control_line_gets_an_error_reply(board_sim: BoardSim, line: bytes) -> None:
    (answer,) = control_lines(board_sim, line + b"\n", 1)
    assert answer["ok"] is False and isinstance(answer["error"], str) and answer["error"]
    assert board_sim.running
    stats = board_sim.stats()
    assert stats["faults"] == Faults().to_dict()  # a refused line changed nothing
    assert stats["physical"] == {"1": 10, "2": 10}


def test_bad_lines_in_a_row_then_the_board_still_works(board_sim: BoardSim) -> None:
    payload = b"\n".join([*BAD_LINES, b'{"cmd": "stats"}']) + b"\n"
    answers = control_lines(board_sim, payload, len(BAD_LINES) + 1)
    assert [a["ok"] for a in answers] == [False] * len(BAD_LINES) + [True]
    (too_long,) = control_lines(board_sim, b"x" * (70 * 1024), 1)
    assert too_long["ok"] is False
    with board_sim_driver(board_sim) as b:
        assert b.dispense(1, 1).outcome is DispenseOutcome.OK


def test_a_client_that_leaves_without_reading_does_not_stop_the_simulator(
    board_sim: BoardSim,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(board_sim.control_path))
        s.sendall(b'{"cmd": "stats"}\n' * 50)
    assert board_sim.stats()["ok"] is True


def test_every_control_command_is_in_the_spec_appendix() -> None:
    appendix = SPEC.read_text().split("## Appendix A")[1]
    documented = set(re.findall(r'\{"cmd": "(\w+)"', appendix))
    source = (SPEC.parent / "simulator.py").read_text()
    handled = set(re.findall(r'if name == "(\w+)":', source))
    assert handled and documented == handled


def board_sim_driver(sim: BoardSim) -> OneCardV1Driver:
    return OneCardV1Driver(SerialLink(sim.device), reply_timeout=0.1, poll_interval=0.05)
