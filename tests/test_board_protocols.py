"""Both board protocols, onecard-v1 and Modbus RTU, drive the simulator (a separate process on
a pty) through the same ``BoardDriver`` interface, chosen by configuration (issue 4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing

import pytest
from pymodbus.exceptions import ConnectionException

from kiosk.board import (
    BoardDriver,
    BoardLinkError,
    BoardRejectedError,
    BoardTimeoutError,
    DispenseOutcome,
    DispenseResult,
    TxnIdReusedError,
    open_board,
)
from kiosk.board.serial_link import ModbusRtuLink
from tests.fixtures.board import BoardSim

PROTOCOLS = ["onecard-v1", "modbus-rtu"]
Start = Callable[..., BoardSim]


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(board_sim_factory: Start, protocol: str) -> Start:
    def start_sim(**kwargs: object) -> BoardSim:
        args = ["--protocol", protocol, *kwargs.pop("args", [])]  # type: ignore[misc]
        return board_sim_factory(args=args, **kwargs)

    return start_sim


@pytest.fixture
def sim(start: Start) -> BoardSim:
    return start()


def connect(sim: BoardSim, protocol: str, **options: float) -> closing[BoardDriver]:
    """What the kiosk does with its configuration: open_board(device, protocol)."""
    reply = options.pop("reply_timeout", 0.1)
    return closing(open_board(sim.device, protocol, reply_timeout=reply, **options))  # type: ignore[arg-type]


@pytest.fixture
def driver(sim: BoardSim, protocol: str) -> Iterator[BoardDriver]:
    with connect(sim, protocol, poll_interval=0.02) as b:
        yield b


def test_info_names_the_protocol(driver: BoardDriver, protocol: str) -> None:
    info = driver.info()
    assert (info.protocol, info.model, dict(info.slots)) == (protocol, "OC-TEST", {1: 50, 2: 50})
    assert driver.stock() == {1: 10, 2: 10}


def test_dispense_ok_then_the_same_txn_again(driver: BoardDriver, sim: BoardSim) -> None:
    first = driver.dispense(1, 501)
    assert first == DispenseResult(501, 1, DispenseOutcome.OK, 9)
    assert driver.dispense(1, 501) == first
    assert driver.query(501) == first
    assert driver.query(502) is None
    assert driver.stock() == {1: 9, 2: 10}
    stats = sim.stats()
    assert stats["motor_runs"] == {"501": 1} and stats["physical"]["1"] == 9


def test_empty_slot_and_refusals(start: Start, protocol: str) -> None:
    sim = start(slots={1: 0, 2: 3})
    with connect(sim, protocol, poll_interval=0.02) as b:
        assert b.dispense(1, 1).outcome is DispenseOutcome.EMPTY
        with pytest.raises(BoardRejectedError) as refused:
            b.dispense(2, 1)
        assert refused.value.error == "txn_conflict"
        with pytest.raises(BoardRejectedError) as bad_slot:
            b.dispense(7, 2)
        assert bad_slot.value.error == "bad_slot"
    assert sim.stats()["motor_runs_total"] == 0


def test_state_survives_a_restart(sim: BoardSim, protocol: str) -> None:
    with connect(sim, protocol, poll_interval=0.02) as b:
        assert b.dispense(2, 8).outcome is DispenseOutcome.OK
    sim.restart()
    with connect(sim, protocol, poll_interval=0.02) as b:
        assert b.stock() == {1: 10, 2: 9}
        assert b.query(8) == DispenseResult(8, 2, DispenseOutcome.OK, 9)
        # The new session learnt the board's last id: 8 is an old transaction (6.2).
        assert b.last_txn_id() == 8
        with pytest.raises(TxnIdReusedError):
            b.dispense(2, 8)
    assert sim.stats()["motor_runs"] == {"8": 1}


@pytest.mark.parametrize(
    ("where", "outcome", "left"), [("motor", "no_drop", 10), ("after_drop", "ok", 9)]
)
def test_power_cycle_mid_dispense_resolves_through_query(
    sim: BoardSim, protocol: str, where: str, outcome: str, left: int
) -> None:
    sim.faults(power_cycle_at=where)
    with connect(sim, protocol, poll_interval=0.02) as b:
        assert b.dispense(1, 44) == DispenseResult(44, 1, DispenseOutcome(outcome), left)
    stats = sim.stats()
    assert stats["boot_count"] == 2 and stats["motor_runs"] == {"44": 1}
    assert stats["physical"]["1"] == left


def test_jammed_slot(sim: BoardSim, protocol: str) -> None:
    sim.faults(jammed=[2])
    with connect(sim, protocol, poll_interval=0.02) as b:
        assert b.dispense(2, 3).outcome is DispenseOutcome.JAMMED
        assert b.dispense(1, 4).outcome is DispenseOutcome.OK
    assert sim.stats()["physical"] == {"1": 9, "2": 10}


NOISY = {"run_ms": 2, "drop_delay_ms": 1, "drop_window_ms": 8, "max_run_ms": 20, "boot_ms": 20}


@pytest.mark.slow
def test_noisy_line_with_a_power_cycle_ends_resolved_and_exact(start: Start, protocol: str) -> None:
    """Both protocols, 150 dispenses over 1% corruption and 1% loss, power cut once
    mid-dispense: every transaction resolved, none driven twice, the shelf matches."""
    n = 150
    sim = start(
        slots={1: 100, 2: 100},
        timings=NOISY,
        args=["--corrupt", "0.01", "--loss", "0.01", "--seed", "7"],
    )
    results: dict[int, DispenseResult | None] = {}
    with connect(sim, protocol, reply_timeout=0.02, poll_interval=0.02, dispense_timeout=3) as b:
        for txn in range(1, n + 1):
            if txn == n // 2:
                sim.faults(power_cycle_at="motor")
            try:
                results[txn] = b.dispense(1 + txn % 2, txn)
            except BoardTimeoutError:
                for _ in range(50):
                    try:
                        results[txn] = b.query(txn)
                        break
                    except BoardTimeoutError:
                        continue
    assert len(results) == n
    stats = sim.stats()
    assert stats["boot_count"] == 2
    assert stats["double_drives"] == 0 and set(stats["motor_runs"].values()) == {1}
    for txn, result in results.items():
        assert (result.outcome.value if result else None) == stats["outcomes"].get(str(txn))
    ok = Counter(r.slot for r in results.values() if r and r.outcome is DispenseOutcome.OK)
    assert {int(s): 100 - v for s, v in stats["physical"].items()} == {1: ok[1], 2: ok[2]}
    assert stats["line"]["crc_errors"] > 0


class _PortClosingClient:
    """Stands in for pymodbus's client at the moment pyserial found the port ready but empty:
    the request raises ConnectionException (pymodbus closed the port); ``connect`` says
    whether it opens again."""

    def __init__(self, reopens: bool) -> None:
        self.reopens = reopens

    def read_holding_registers(self, *args: object, **kwargs: object) -> object:
        raise ConnectionException("port closed after an empty read")

    def connect(self) -> bool:
        return self.reopens

    def close(self) -> None:
        pass


def test_modbus_link_takes_a_port_that_reopens_for_a_timeout(board_sim_factory: Start) -> None:
    sim = board_sim_factory(args=["--protocol", "modbus-rtu"])
    link = ModbusRtuLink(sim.device, timeout=0.1)
    real = link._client
    try:
        link._client = _PortClosingClient(reopens=True)  # type: ignore[assignment]
        with pytest.raises(BoardTimeoutError):  # no answer: the driver's rules apply
            link.read_registers(0, 1)
        link._client = _PortClosingClient(reopens=False)  # type: ignore[assignment]
        with pytest.raises(BoardLinkError):  # the line is really gone
            link.read_registers(0, 1)
        assert link.counters()["reconnects"] == 1
        link._client = real
        assert link.read_registers(0, 1) == [1]  # MAP_VERSION: the real port still talks
    finally:
        link._client = real
        link.close()
