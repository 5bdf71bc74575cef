"""The simulated board's firmware logic (firmware_protocols/simboard.py) against PROTOCOL.md
sections 4 and 6, in process with a made-up clock: every command, every outcome, the
repeated-transaction rule and power loss in the middle of a dispense."""

from __future__ import annotations

import json

import pytest

from firmware_protocols import onecard_v1 as p
from firmware_protocols.simboard import Board, BoardState, Faults
from tests.fixtures.firmware import Bench

OC, S = p.Outcome, p.TxnState


def test_power_up_event_on_boot() -> None:
    bench = Bench()
    assert bench.events == [p.PowerUp(1, p.PowerUpReason.POWER_ON)]


def test_dispense_ok_reports_progress_and_decreases_stock() -> None:
    bench = Bench()
    ack = bench.send(p.Dispense(1, 100))
    assert ack == p.DispenseAck(100, S.STARTED, 1)
    events = bench.wait()
    phases = [m.phase for m in bench.events if isinstance(m, p.DispenseProgress)]
    assert phases == [p.Phase.MOTOR_ON, p.Phase.MOTOR_OFF, p.Phase.DROP_SEEN]
    assert events[-1] == p.DispenseResult(100, S.DONE, 1, OC.OK, 2)
    assert bench.board.state.counts[1] == 2
    assert bench.board.state.physical[1] == 2
    assert bench.send(p.Stock()) == p.StockReply(((1, 2), (2, 0)))


def test_repeated_txn_reports_the_first_outcome_and_never_drives_again() -> None:
    bench = Bench()
    first = bench.dispense(1, 7)
    again = bench.send(p.Dispense(1, 7))
    assert again == p.DispenseAck(7, S.DONE, 1, first.outcome, first.remaining)
    assert bench.board.state.motor_runs == {7: 1}
    assert bench.board.state.counts[1] == 2
    assert bench.send(p.Query(7)) == p.QueryReply(7, S.DONE, 1, OC.OK, 2)


def test_repeat_while_running_is_in_progress_and_another_txn_is_busy() -> None:
    bench = Bench()
    bench.send(p.Dispense(1, 7))
    assert bench.send(p.Dispense(1, 7)) == p.DispenseAck(7, S.IN_PROGRESS, 1)
    assert bench.send(p.Query(7)) == p.QueryReply(7, S.IN_PROGRESS, 1)
    assert bench.send(p.Dispense(1, 8)) == p.Error(p.Code.DISPENSE, p.ErrorCode.BUSY)
    assert bench.send(p.Dispense(2, 7)) == p.Error(p.Code.DISPENSE, p.ErrorCode.TXN_CONFLICT, 1)
    assert bench.send(p.Reset()) == p.Error(p.Code.RESET, p.ErrorCode.BUSY)
    assert bench.send(p.Status()).busy_txn == 7  # type: ignore[attr-defined]
    bench.wait()
    assert bench.board.state.motor_runs == {7: 1}


def test_same_txn_on_another_slot_is_a_conflict() -> None:
    bench = Bench()
    bench.dispense(1, 7)
    assert bench.send(p.Dispense(2, 7)) == p.Error(p.Code.DISPENSE, p.ErrorCode.TXN_CONFLICT, 1)


def test_retransmission_with_the_same_seq_gets_the_cached_reply() -> None:
    bench = Bench()
    ack = bench.send(p.Dispense(1, 9), seq=40)
    bench.wait()
    assert bench.send(p.Dispense(1, 9), seq=40) == ack  # the first answer, word for word
    assert bench.send(p.Dispense(1, 9), seq=41) == p.DispenseAck(9, S.DONE, 1, OC.OK, 2)
    assert bench.board.state.motor_runs == {9: 1}


def test_empty_slot_is_empty_without_motor() -> None:
    bench = Bench()
    assert bench.dispense(2, 5) == p.DispenseAck(5, S.DONE, 2, OC.EMPTY, 0)
    assert bench.board.state.motor_runs == {}


def test_slot_runs_empty_then_reports_empty() -> None:
    bench = Bench(counts=(1, 0))
    assert bench.dispense(1, 1).outcome is OC.OK
    assert bench.dispense(1, 2).outcome is OC.EMPTY


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (p.Dispense(9, 1), p.ErrorCode.BAD_SLOT),
        (p.Dispense(1, 0), p.ErrorCode.BAD_TXN),
        (p.Query(0), p.ErrorCode.BAD_TXN),
        (p.SlotTest(0), p.ErrorCode.BAD_SLOT),
        (p.SetStock(1, 6), p.ErrorCode.BAD_VALUE),
        (p.SetStock(3, 1), p.ErrorCode.BAD_SLOT),
        (p.MalformedMessage(0x03, b"\x01", "short"), p.ErrorCode.MALFORMED),
        (p.UnknownMessage(0x30), p.ErrorCode.UNKNOWN_COMMAND),
        (p.StockReply(()), p.ErrorCode.UNKNOWN_COMMAND),  # a reply code sent to the board
    ],
)
def test_bad_requests_get_a_defined_error(msg: p.Message, error: p.ErrorCode) -> None:
    reply = Bench().send(msg)
    assert isinstance(reply, p.Error)
    assert reply.error is error
    assert reply.request_code == msg.code


def test_other_protocol_version_is_refused() -> None:
    board = Bench().board
    out = board.handle(p.Frame(3, p.UnknownMessage(0x01), version=2), 0.0)
    assert out == [p.Frame(3, p.Error(0x01, p.ErrorCode.BAD_VERSION, 1))]


def test_door_open_refuses_dispense_and_is_an_event() -> None:
    bench = Bench()
    assert [f.message for f in bench.board.set_door(True)] == [p.DoorEvent(True)]
    assert bench.send(p.Dispense(1, 1)) == p.Error(p.Code.DISPENSE, p.ErrorCode.DOOR_OPEN)
    assert bench.send(p.Status()).door_open  # type: ignore[attr-defined]
    assert bench.board.set_door(True) == []  # no change, no event


def test_jammed_slot() -> None:
    bench = Bench(Faults(jammed={1}))
    assert bench.dispense(1, 1) == p.DispenseResult(1, S.DONE, 1, OC.JAMMED, 3)
    assert p.FaultEvent(p.Fault.JAM, 1) in bench.events
    assert bench.board.state.physical[1] == 3
    assert bench.send(p.SlotTest(1)) == p.SlotTestReply(1, p.MotorCheck.STALLED, p.SensorCheck.OK)


def test_motor_open_circuit() -> None:
    bench = Bench(Faults(motor_open={1}))
    assert bench.dispense(1, 1).outcome is OC.MOTOR_FAULT
    assert bench.send(p.SlotTest(1)).motor is p.MotorCheck.OPEN_CIRCUIT  # type: ignore[attr-defined]


def test_runaway_motor_is_stopped_by_the_drop_and_flagged() -> None:
    bench = Bench(Faults(runaway={1}))
    assert bench.dispense(1, 1).outcome is OC.OK
    assert p.FaultEvent(p.Fault.MOTOR, 1) in bench.events
    bench.board.state.physical[1] = 0  # the slot is really empty, the board thinks not
    assert bench.dispense(1, 2).outcome is OC.MOTOR_FAULT


def test_runaway_motor_with_a_blind_sensor_is_cut_off_as_motor_fault() -> None:
    """PROTOCOL.md 7: a runaway is cut at a seen drop; with none seen it runs to the cut-off
    and ends MOTOR_FAULT (not NO_DROP), after the drop window that follows the cut-off."""
    bench = Bench(Faults(runaway={1}, blind_sensor=True))
    assert bench.send(p.Dispense(1, 1)).state is S.STARTED  # type: ignore[attr-defined]
    # Past the normal run and drop window (10 + 30 ms), before the cut-off (80 ms): running.
    assert not [m for m in bench.wait(0.06) if isinstance(m, p.DispenseResult)]
    assert bench.send(p.Query(1)) == p.QueryReply(1, S.IN_PROGRESS, 1)
    result = bench.dispense_result()
    assert result == p.DispenseResult(1, S.DONE, 1, OC.MOTOR_FAULT, 3)
    assert p.FaultEvent(p.Fault.MOTOR, 1) in bench.events
    assert p.DispenseProgress(1, 1, p.Phase.DROP_SEEN) not in bench.events
    # The item did fall unseen: the count stays, the shelf has one less (the stock check).
    assert (bench.board.state.physical[1], bench.board.state.counts[1]) == (2, 3)


def test_dead_drop_sensor_never_lets_an_item_go_unseen() -> None:
    bench = Bench(Faults(dead_sensor=True))
    assert bench.dispense(1, 1) == p.DispenseAck(1, S.DONE, 1, OC.NO_DROP, 3)
    assert bench.board.state.motor_runs == {}
    assert bench.board.state.physical[1] == 3
    assert bench.send(p.SlotTest(1)).sensor is p.SensorCheck.FAULT  # type: ignore[attr-defined]
    assert p.Fault.DROP_SENSOR in bench.send(p.Status()).faults  # type: ignore[attr-defined]


def test_blind_sensor_misses_a_real_drop() -> None:
    bench = Bench(Faults(blind_sensor=True))
    assert bench.dispense(1, 1).outcome is OC.NO_DROP
    assert (bench.board.state.physical[1], bench.board.state.counts[1]) == (2, 3)


def test_physically_empty_slot_is_no_drop() -> None:
    bench = Bench()
    bench.board.state.physical[1] = 0
    assert bench.dispense(1, 1).outcome is OC.NO_DROP
    assert bench.board.state.counts[1] == 3


@pytest.mark.parametrize(
    ("where", "outcome", "left"), [("motor", OC.NO_DROP, 3), ("after_drop", OC.OK, 2)]
)
def test_power_cut_mid_dispense_is_settled_at_boot(
    where: str, outcome: p.Outcome, left: int
) -> None:
    bench = Bench(Faults(power_cycle_at=where))
    assert bench.send(p.Dispense(1, 11)).state is S.STARTED  # type: ignore[attr-defined]
    assert not [m for m in bench.wait(0.02) if isinstance(m, p.DispenseResult)]
    assert bench.board.is_off(bench.now)
    assert bench.board.handle(p.Frame(1, p.Query(11)), bench.now) == []  # dark: no answer
    bench.wait(1.0)
    # POWER_UP, then the FAULT event of the POWER_LOSS bit (6.4 and 8 say the same).
    assert bench.events[-2:] == [
        p.PowerUp(2, p.PowerUpReason.POWER_ON),
        p.FaultEvent(p.Fault.POWER_LOSS, 1),
    ]
    assert bench.send(p.Query(11)) == p.QueryReply(11, S.DONE, 1, outcome, left)
    assert bench.board.state.physical[1] == left
    assert p.Fault.POWER_LOSS in bench.send(p.Status()).faults  # type: ignore[attr-defined]
    assert bench.send(p.Dispense(1, 11)) == p.DispenseAck(11, S.DONE, 1, outcome, left)
    assert bench.board.state.motor_runs == {11: 1}


def test_reset_acknowledges_then_reboots() -> None:
    bench = Bench()
    assert bench.send(p.Reset()) == p.ResetAck()
    bench.wait(1.0)
    assert bench.events[-1] == p.PowerUp(2, p.PowerUpReason.RESET_COMMAND)


def test_set_stock_fills_the_slot() -> None:
    bench = Bench()
    assert bench.send(p.SetStock(2, 4)) == p.SetStockReply(((1, 3), (2, 4)))
    assert bench.dispense(2, 1) == p.DispenseResult(1, S.DONE, 2, OC.OK, 3)


def test_info_and_status() -> None:
    bench = Bench()
    info = bench.send(p.Hello())
    assert isinstance(info, p.Info)
    assert info.slots == ((1, 5), (2, 50))
    assert p.Capability.DROP_SENSOR in info.capabilities
    status = bench.send(p.Status())
    assert status == p.StatusReply(False, 180, p.Fault.NONE, 0, 1, 0)


def test_state_survives_a_reload_through_json() -> None:
    bench = Bench()
    bench.dispense(1, 1)
    bench.dispense(2, 2)
    saved = json.loads(json.dumps(bench.saved[-1]))
    state = BoardState.from_json(saved)
    again = Board(bench.config, state)
    again.boot(0.0)
    reply = again.handle(p.Frame(1, p.Dispense(1, 1)), 0.0)[0].message
    assert reply == p.DispenseAck(1, S.DONE, 1, OC.OK, 2)
    assert state.boot_count == 2
    assert state.motor_runs == {1: 1}
