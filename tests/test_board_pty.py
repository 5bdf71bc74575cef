"""The board joint for real: the kiosk's driver opens, with pyserial, the pseudo-terminal of a
simulator running as a separate process (tests/fixtures/board.py), and drives it."""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Callable

import pytest

from firmware_protocols import onecard_v1 as p
from kiosk.board import (
    BoardBusyError,
    BoardDriver,
    BoardError,
    BoardLinkError,
    BoardRejectedError,
    BoardTimeoutError,
    DispenseOutcome,
    DispenseResult,
    OneCardV1Driver,
    TxnIdReusedError,
    open_board,
)
from kiosk.board.serial_link import SerialLink
from tests.fixtures.board import BoardSim


def board(
    sim: BoardSim,
    reply_timeout: float = 0.1,
    poll_interval: float = 0.2,
    dispense_timeout: float = 20.0,
) -> OneCardV1Driver:
    """The kiosk's way in (open_board), with deadlines for a pty that has no baud rate."""
    driver = open_board(
        sim.device,
        reply_timeout=reply_timeout,
        poll_interval=poll_interval,
        dispense_timeout=dispense_timeout,
    )
    assert isinstance(driver, OneCardV1Driver)
    return driver


def test_info_and_stock(board_sim: BoardSim) -> None:
    with board(board_sim) as b:
        info = b.info()
        assert (info.protocol, info.model) == ("onecard-v1", "OC-TEST")
        assert dict(info.slots) == {1: 50, 2: 50}
        assert "drop_sensor" in info.capabilities
        assert b.stock() == {1: 10, 2: 10}
        status = b.status()
        assert (status.door_open, status.busy_txn, status.boot_count) == (False, None, 1)


def test_dispense_ok_decreases_stock(board_sim: BoardSim) -> None:
    driver: BoardDriver = board(board_sim)
    try:
        result = driver.dispense(1, 1001)
        assert result == DispenseResult(1001, 1, DispenseOutcome.OK, 9)
        assert driver.stock() == {1: 9, 2: 10}
    finally:
        driver.close()
    stats = board_sim.stats()
    assert stats["physical"] == {"1": 9, "2": 10}
    assert stats["drops"] == 1


def test_empty_slot_is_empty(board_sim_factory: Callable[..., BoardSim]) -> None:
    sim = board_sim_factory(slots={1: 0, 2: 1})
    with board(sim) as b:
        assert b.dispense(1, 1).outcome is DispenseOutcome.EMPTY
        assert b.dispense(2, 2).outcome is DispenseOutcome.OK
        assert b.dispense(2, 3) == DispenseResult(3, 2, DispenseOutcome.EMPTY, 0)
    assert sim.stats()["motor_runs_total"] == 1


def test_repeated_txn_never_drives_the_motor_twice(board_sim: BoardSim) -> None:
    with board(board_sim) as b:
        first = b.dispense(2, 77)
        assert b.dispense(2, 77) == first
        assert b.query(77) == first
        with pytest.raises(BoardRejectedError) as refused:
            b.dispense(1, 77)  # the same transaction on another slot
        assert refused.value.error == "txn_conflict"
        assert b.stock()[2] == 9
    stats = board_sim.stats()
    assert stats["motor_runs"] == {"77": 1}
    assert stats["double_drives"] == 0
    assert stats["physical"]["2"] == 9


def test_state_survives_a_restart(board_sim: BoardSim) -> None:
    with board(board_sim) as b:
        assert b.dispense(1, 5).outcome is DispenseOutcome.OK
        assert b.dispense(1, 6).outcome is DispenseOutcome.OK
    board_sim.restart()
    with board(board_sim) as b:
        assert b.stock() == {1: 8, 2: 10}
        assert b.query(5) == DispenseResult(5, 1, DispenseOutcome.OK, 9)
        assert b.query(404) is None
        # A new session knows txn 6 is the board's: DISPENSE for it is refused unsent
        # (PROTOCOL.md 6.2); the board itself would answer from its record (test_board_firmware).
        assert b.query(6) == DispenseResult(6, 1, DispenseOutcome.OK, 8)
        assert b.last_txn_id() == 6
        with pytest.raises(TxnIdReusedError):
            b.dispense(1, 6)
        assert b.status().boot_count == 2
    stats = board_sim.stats()
    assert stats["motor_runs"] == {"5": 1, "6": 1}
    assert stats["physical"]["1"] == 8


def test_board_killed_mid_dispense_is_settled_from_its_memory(
    board_sim_factory: Callable[..., BoardSim],
) -> None:
    sim = board_sim_factory(timings={"run_ms": 3000, "boot_ms": 20})
    errors: list[BaseException] = []
    with board(sim, dispense_timeout=10) as b:

        def run() -> None:
            try:
                b.dispense(1, 900)
            except BaseException as exc:  # noqa: BLE001 - the thread hands it to the test
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = 100
        # Until the motor is turning (the state file appears at the simulator's first boot).
        while (sim.state() if sim.state_path.exists() else {}).get("inflight") is None and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        assert sim.state()["inflight"] == {"txn": 900, "slot": 1, "dropped": 0}
        sim.kill()  # power gone: no chance to save anything more
        worker.join(15)
        assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], BoardError)
    sim.start()
    with board(sim) as b:
        assert b.query(900) == DispenseResult(900, 1, DispenseOutcome.NO_DROP, 10)
        assert "power_loss" in b.status().faults
        assert b.stock()[1] == 10
    assert sim.stats()["physical"]["1"] == 10


@pytest.mark.parametrize(
    ("where", "outcome", "left"), [("motor", "no_drop", 10), ("after_drop", "ok", 9)]
)
def test_power_cycle_mid_dispense_resolves_through_query(
    board_sim: BoardSim, where: str, outcome: str, left: int
) -> None:
    board_sim.faults(power_cycle_at=where)
    with board(board_sim) as b:
        result = b.dispense(1, 31)
        assert result == DispenseResult(31, 1, DispenseOutcome(outcome), left)
        counters = b.counters()
    assert counters["board_resets"] == 1
    assert counters["queries"] >= 1
    stats = board_sim.stats()
    assert stats["motor_runs"] == {"31": 1}
    assert stats["physical"]["1"] == left
    assert stats["boot_count"] == 2


def test_garbage_from_the_kiosk_is_skipped_and_counted_by_the_board(board_sim: BoardSim) -> None:
    link = SerialLink(board_sim.device)
    with OneCardV1Driver(link, reply_timeout=0.1) as b:
        link.write(b"\x00\x13\x37")
        bad = bytearray(p.encode(p.Frame(200, p.Dispense(1, 55))))
        bad[-1] ^= 0xFF
        link.write(bytes(bad))  # a DISPENSE with a bad CRC must not dispense
        assert b.stock() == {1: 10, 2: 10}
    line = board_sim.stats()["line"]
    assert (line["garbage_bytes"], line["crc_errors"], line["resyncs"]) == (3, 1, 1)
    assert board_sim.stats()["motor_runs_total"] == 0


def test_garbage_from_the_board_is_skipped_and_counted_by_the_kiosk(board_sim: BoardSim) -> None:
    with board(board_sim) as b:
        assert b.stock() == {1: 10, 2: 10}
        bad = bytearray(p.encode(p.Frame(1, p.DoorEvent(True))))
        bad[-2] ^= 0x10
        board_sim.command("garbage", hex=(b"\xff\x00\x5a" + bytes(bad)).hex())
        assert b.dispense(1, 3).outcome is DispenseOutcome.OK
        counters = b.counters()
    assert (counters["garbage_bytes"], counters["crc_errors"], counters["resyncs"]) == (3, 1, 1)


def test_board_that_never_answers_times_out_after_retries(board_sim: BoardSim) -> None:
    with board(board_sim, reply_timeout=0.05, dispense_timeout=1.0) as b:
        assert b.last_txn_id() == 0  # the session began (SYNC) while the board still spoke
        board_sim.faults(no_reply=True)  # it hears and acts, but says nothing
        with pytest.raises(BoardTimeoutError):
            b.stock()
        assert b.counters()["retries"] == 3
        with pytest.raises(BoardTimeoutError) as timed_out:
            b.dispense(1, 8)
        assert timed_out.value.txn_id == 8  # unresolved: the kiosk keeps it and asks later
        board_sim.faults(no_reply=False)
        assert b.query(8) == DispenseResult(8, 1, DispenseOutcome.OK, 9)  # it did fall
        assert b.dispense(1, 8) == DispenseResult(8, 1, DispenseOutcome.OK, 9)
    assert board_sim.stats()["motor_runs"] == {"8": 1}


def test_board_that_never_hears_leaves_the_txn_unknown(board_sim: BoardSim) -> None:
    with board(board_sim, reply_timeout=0.05, dispense_timeout=0.5) as b:
        board_sim.faults(loss_rate=1.0)
        with pytest.raises(BoardTimeoutError):
            b.dispense(1, 9)
        board_sim.faults(loss_rate=0.0)
        assert b.query(9) is None  # never started: the kiosk may void it
    assert board_sim.stats()["motor_runs_total"] == 0


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ({"jammed": [1]}, DispenseOutcome.JAMMED),
        ({"motor_open": [1]}, DispenseOutcome.MOTOR_FAULT),
        ({"dead_sensor": True}, DispenseOutcome.NO_DROP),
    ],
)
def test_faults_give_their_outcome_and_nothing_leaves(
    board_sim: BoardSim, fault: dict[str, object], outcome: DispenseOutcome
) -> None:
    board_sim.faults(**fault)
    with board(board_sim) as b:
        assert b.dispense(1, 12).outcome is outcome
        assert b.stock()[1] == 10
        assert b.status().faults
    assert board_sim.stats()["physical"]["1"] == 10


def test_busy_door_bad_slot_and_second_opener_are_typed_errors(
    board_sim_factory: Callable[..., BoardSim],
) -> None:
    sim = board_sim_factory(timings={"run_ms": 400})
    with board(sim, dispense_timeout=0.1) as b:
        with pytest.raises(BoardLinkError):
            open_board(sim.device)  # the port is locked: one kiosk per board
        with pytest.raises(BoardTimeoutError):
            b.dispense(1, 1)  # gave up waiting; the motor still turns
        with pytest.raises(BoardBusyError):
            b.dispense(1, 2)
        assert b.status().busy_txn == 1
    with board(sim) as b:
        assert b.query(1) == DispenseResult(1, 1, DispenseOutcome.OK, 9)
        with pytest.raises(BoardRejectedError) as bad_slot:
            b.dispense(9, 3)
        assert bad_slot.value.error == "bad_slot"
        sim.command("door", open=True)
        with pytest.raises(BoardRejectedError) as door:
            b.dispense(1, 4)
        assert door.value.error == "door_open"
        assert b.status().door_open
        with pytest.raises(ValueError):
            b.dispense(1, 0)
    assert sim.stats()["motor_runs"] == {"1": 1}


def test_a_missing_device_is_a_link_error(tmp_path: object) -> None:
    with pytest.raises(BoardLinkError):
        open_board("/dev/does-not-exist-onecard")
    with pytest.raises(ValueError):
        open_board("/dev/null", protocol="mdb")


def test_late_replies_are_matched_by_sequence_number(board_sim: BoardSim) -> None:
    board_sim.faults(reply_delay_ms=150)  # later than the driver's deadline of 100 ms
    with board(board_sim) as b:
        assert b.stock() == {1: 10, 2: 10}
        assert b.dispense(1, 61) == DispenseResult(61, 1, DispenseOutcome.OK, 9)
        counters = b.counters()
    assert counters["retries"] >= 2
    assert counters["stale_frames"] >= 1  # the answers to retransmissions, arriving late
    stats = board_sim.stats()
    assert stats["motor_runs"] == {"61": 1}
    assert stats["physical"]["1"] == 9


def test_threads_share_one_driver(board_sim: BoardSim) -> None:
    results: list[DispenseResult] = []
    errors: list[BaseException] = []
    with board(board_sim) as b:

        def worker(first: int) -> None:
            try:
                for txn in range(first, first + 4):
                    results.append(b.dispense(1 + txn % 2, txn))
                    b.stock()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(100 * i,)) for i in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert b.stock() == {1: 2, 2: 2}
        counters = b.counters()
    assert errors == []
    assert counters["events"] >= 16 * 4 and counters["events_missed"] == 0  # a clean line
    assert sorted(r.txn_id for r in results) == sorted(
        100 * i + k for i in range(1, 5) for k in range(4)
    )
    assert all(r.outcome is DispenseOutcome.OK for r in results)
    assert board_sim.stats()["motor_runs_total"] == 16


def test_simulator_survives_random_bytes(board_sim: BoardSim) -> None:
    import random

    rnd = random.Random(5)
    link = SerialLink(board_sim.device)
    with OneCardV1Driver(link, reply_timeout=0.2) as b:
        for _ in range(20):
            link.write(rnd.randbytes(rnd.randrange(1, 300)))
        link.write(p.SOF + bytes([1, 9, 0x03, 200]))  # a truncated DISPENSE, never finished
        # The board recovers: within the inter-frame gap the junk is dropped, then it answers.
        assert b.stock() == {1: 10, 2: 10}
        assert b.dispense(1, 2).outcome is DispenseOutcome.OK
    assert board_sim.running
    line = board_sim.stats()["line"]
    assert line["garbage_bytes"] > 0
    assert board_sim.stats()["motor_runs"] == {"2": 1}


class MasterLink:
    """The other end of a pty pair, as a ``Link``: the kiosk's side in the --device test."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 4096) if ready else b""

    def close(self) -> None:
        os.close(self.fd)


def test_simulator_on_a_given_device(board_sim_factory: Callable[..., BoardSim]) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        sim = board_sim_factory(args=["--device", os.ttyname(slave)])
        assert sim.device == os.ttyname(slave)
        with OneCardV1Driver(MasterLink(master), reply_timeout=0.2) as b:
            assert b.dispense(2, 5) == DispenseResult(5, 2, DispenseOutcome.OK, 9)
        sim.stop()
    finally:
        os.close(slave)


def test_paced_simulator_still_talks(board_sim_factory: Callable[..., BoardSim]) -> None:
    """--pace holds every byte for its time on a 9600-baud wire (the bench measures it)."""
    sim = board_sim_factory(args=["--pace"])
    with board(sim, reply_timeout=0.5) as b:
        assert b.info().model == "OC-TEST"
        assert b.dispense(1, 1).outcome is DispenseOutcome.OK
        assert b.counters()["retries"] == 0
