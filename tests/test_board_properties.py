"""Property tests of the board protocol's parsers (hypothesis): whatever the line carries, the
codec, the simulated firmware and the kiosk driver raise nothing but their own errors, and
always finish."""

from __future__ import annotations

import contextlib
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocols import onecard_v1 as p
from firmware_protocols.simboard import Board, BoardConfig, BoardState
from kiosk.board import BoardError, OneCardV1Driver

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
slot = st.integers(1, 0xFF)
text = st.text(max_size=5)
pairs = st.lists(st.tuples(u8, u16), max_size=p.MAX_SLOTS).map(tuple)


def report(cls: type[p.TxnReport]) -> st.SearchStrategy[p.Message]:
    done = st.builds(
        cls,
        u32,
        st.just(p.TxnState.DONE),
        u8,
        st.sampled_from([o for o in p.Outcome if o is not p.Outcome.NONE]),
        st.none() | st.integers(0, 0xFFFE),
    )
    pending = st.builds(
        cls,
        u32,
        st.sampled_from([s for s in p.TxnState if s is not p.TxnState.DONE]),
        u8,
        st.just(p.Outcome.NONE),
        st.none() | st.integers(0, 0xFFFE),
    )
    return done | pending


MESSAGES = st.one_of(
    st.just(p.Hello()),
    st.just(p.Status()),
    st.just(p.Reset()),
    st.just(p.ResetAck()),
    st.just(p.Stock()),
    st.builds(p.Info, u8, text, text, text, st.builds(p.Capability, u16), pairs),
    st.builds(
        p.StatusReply,
        st.booleans(),
        st.none() | st.integers(-32767, 32767),
        st.builds(p.Fault, u16),
        u32,
        u16,
        u32,
    ),
    st.builds(p.Dispense, u8, u32),
    report(p.DispenseAck),
    report(p.QueryReply),
    report(p.DispenseResult),
    st.builds(p.Query, u32),
    st.builds(p.SlotTest, u8),
    st.builds(p.SlotTestReply, u8, st.sampled_from(p.MotorCheck), st.sampled_from(p.SensorCheck)),
    st.builds(p.StockReply, pairs),
    st.builds(p.SetStock, u8, u16),
    st.builds(p.SetStockReply, pairs),
    st.builds(p.PowerUp, u16, st.sampled_from(p.PowerUpReason)),
    st.builds(p.DoorEvent, st.booleans()),
    st.builds(p.TemperatureEvent, st.integers(-32768, 32767)),
    st.builds(p.FaultEvent, st.builds(p.Fault, u16), u8),
    st.builds(p.DispenseProgress, u32, u8, st.sampled_from(p.Phase)),
    st.builds(p.Error, u8, st.sampled_from(p.ErrorCode), u8),
)
FRAMES = st.builds(p.Frame, u8, MESSAGES)


@given(FRAMES)
def test_every_message_round_trips(frame: p.Frame) -> None:
    raw = p.encode(frame)
    assert len(raw) <= p.MAX_FRAME
    assert p.decode(raw) == (len(raw), frame)


@given(st.binary(max_size=600))
def test_decode_never_raises_and_always_progresses(data: bytes) -> None:
    steps = 0
    while True:
        used, item = p.decode(data)
        assert 0 <= used <= len(data)
        if used == 0:
            assert item is None
            assert len(data) < p.MAX_FRAME or data.startswith(p.SOF)
            break
        assert item is not None
        data = data[used:]
        steps += 1
        assert steps <= 600


@given(st.lists(st.binary(max_size=40) | FRAMES.map(p.encode), max_size=20), st.data())
def test_reader_finds_every_frame_it_is_given_and_nothing_false(
    chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(chunks)
    reader = p.FrameReader()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    frames: list[p.Frame] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        frames += reader.feed(stream[last:cut])
        last = cut
    frames += reader.flush()
    assert reader.pending == 0
    for frame in frames:  # anything decoded was really on the line, byte for byte
        assert p.encode(frame) in stream


@settings(max_examples=60)
@given(st.lists(st.tuples(u8, u8, st.binary(max_size=24)), max_size=12))
def test_firmware_answers_any_frame_without_crashing(frames: list[tuple[int, int, bytes]]) -> None:
    board = Board(BoardConfig(), BoardState.fresh(BoardConfig()))
    now = 0.0
    board.boot(now)
    for seq, code, payload in frames:
        now += 0.001
        frame = p.Frame(seq, p.parse_message(code, payload))
        out = board.handle(frame, now)
        if code < 0x80 and not board.is_off(now):
            assert out and out[0].seq == seq
        for reply in out:
            p.encode(reply)  # whatever it says can be put on the wire
        board.tick(now + 1.0)


class NoiseLink:
    """A line that answers every write with noise (and sometimes a valid-looking frame)."""

    def __init__(self, noise: list[bytes]) -> None:
        self.noise = list(noise)

    def write(self, data: bytes) -> None:
        pass

    def read(self, timeout: float) -> bytes:
        if self.noise:
            return self.noise.pop(0)
        time.sleep(min(timeout, 0.001))
        return b""

    def close(self) -> None:
        pass


@settings(max_examples=40, deadline=5000)  # the hang guard: every wait is bounded
@given(st.lists(st.binary(max_size=30) | FRAMES.map(p.encode), max_size=12))
def test_driver_raises_only_board_errors_on_noise(noise: list[bytes]) -> None:
    driver = OneCardV1Driver(
        NoiseLink(noise), reply_timeout=0.005, retries=1, poll_interval=0.005,
        dispense_timeout=0.05, boot_time=0.02,
    )  # fmt: skip
    for call in (lambda: driver.dispense(1, 7), driver.stock, driver.info, lambda: driver.query(7)):
        with contextlib.suppress(BoardError):  # anything else fails the test
            call()
