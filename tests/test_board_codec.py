"""The onecard-v1 codec (firmware_protocols/onecard_v1.py, PROTOCOL.md 2-4): round trips from
hex literals, every frame fed whole, split, byte by byte, wrapped in garbage, with a bad CRC."""

from __future__ import annotations

import dataclasses

import pytest

from firmware_protocols import onecard_v1 as p
from firmware_protocols.crc import CHECK, crc16_ccitt_false

C, F, OC, S = p.Capability, p.Fault, p.Outcome, p.TxnState

# (frame on the wire, seq, message): written once from the spec's layouts, checked by hand for
# the DISPENSE frame in PROTOCOL.md's worked example.
FRAMES = [
    ("a5 5a 01 01 01 00 f6 75", 1, p.Hello()),
    (
        "a5 5a 01 02 81 22 01 08 4f 43 2d 53 49 4d 2d 31 05 31 2e 30 2e 30 08 53 49 4d 2d 30 30"
        " 30 31 00 07 02 01 00 32 02 00 14 98 a5",
        2,
        p.Info(
            1,
            "OC-SIM-1",
            "1.0.0",
            "SIM-0001",
            C.DROP_SENSOR | C.DOOR_SENSOR | C.TEMPERATURE,
            ((1, 50), (2, 20)),
        ),
    ),  # fmt: skip
    ("a5 5a 01 03 02 00 cd 46", 3, p.Status()),
    (
        "a5 5a 01 03 82 0f 00 00 2d 00 00 00 00 00 00 00 01 00 00 0e 10 38 49",
        3,
        p.StatusReply(False, 45, F.NONE, 0, 1, 3600),
    ),
    (
        "a5 5a 01 04 82 0f 01 80 00 00 03 de ad be ef 00 07 00 00 00 0c d8 58",
        4,
        p.StatusReply(True, None, F.JAM | F.MOTOR, 0xDEADBEEF, 7, 12),
    ),
    ("a5 5a 01 05 03 05 01 00 00 00 2a 0f 15", 5, p.Dispense(1, 42)),
    ("a5 5a 01 05 83 09 00 00 00 2a 01 01 00 ff ff c5 70", 5, p.DispenseAck(42, S.STARTED, 1)),
    (
        "a5 5a 01 06 83 09 00 00 00 2a 03 01 02 00 00 f7 03",
        6,
        p.DispenseAck(42, S.DONE, 1, OC.EMPTY, 0),
    ),
    ("a5 5a 01 07 04 04 ff ff ff ff 79 c1", 7, p.Query(0xFFFFFFFF)),
    ("a5 5a 01 07 84 09 ff ff ff ff 00 00 00 ff ff 6c 74", 7, p.QueryReply(0xFFFFFFFF, S.UNKNOWN)),
    ("a5 5a 01 08 84 09 00 00 00 07 03 02 01 00 09 e6 c6", 8, p.QueryReply(7, S.DONE, 2, OC.OK, 9)),
    ("a5 5a 01 09 05 01 02 b0 a9", 9, p.SlotTest(2)),
    (
        "a5 5a 01 09 85 03 02 02 00 93 14",
        9,
        p.SlotTestReply(2, p.MotorCheck.STALLED, p.SensorCheck.OK),
    ),
    ("a5 5a 01 0a 06 00 9f 13", 10, p.Reset()),
    ("a5 5a 01 0a 86 00 84 8b", 10, p.ResetAck()),
    ("a5 5a 01 0b 07 00 9b 12", 11, p.Stock()),
    ("a5 5a 01 0b 87 07 02 01 00 0a 02 00 00 1d 4b", 11, p.StockReply(((1, 10), (2, 0)))),
    ("a5 5a 01 0c 08 03 02 00 19 36 c5", 12, p.SetStock(2, 25)),
    ("a5 5a 01 0c 88 07 02 01 00 0a 02 00 19 1a fd", 12, p.SetStockReply(((1, 10), (2, 25)))),
    ("a5 5a 01 01 09 04 12 34 ab cd 29 a7", 1, p.Sync(0x1234ABCD)),
    (
        "a5 5a 01 01 89 0a 12 34 ab cd 00 00 03 e8 00 07 2b 2a",
        1,
        p.SyncReply(0x1234ABCD, 1000, 7),
    ),
    ("a5 5a 01 0f 0a 04 00 14 01 2c ba 7c", 15, p.TempLimits(20, 300)),
    ("a5 5a 01 0f 8a 04 00 14 01 2c 6e 5c", 15, p.TempLimitsReply(20, 300)),
    ("a5 5a 01 10 0a 04 80 00 80 00 88 32", 16, p.TempLimits(p.NO_TEMPERATURE, p.NO_TEMPERATURE)),
    ("a5 5a 01 01 c0 03 00 03 01 e1 19", 1, p.PowerUp(3, p.PowerUpReason.RESET_COMMAND)),
    ("a5 5a 01 02 c1 01 01 64 e2", 2, p.DoorEvent(True)),
    ("a5 5a 01 03 c2 02 ff c9 de 54", 3, p.TemperatureEvent(-55)),
    ("a5 5a 01 04 c3 03 00 04 00 c5 7c", 4, p.FaultEvent(F.DROP_SENSOR, 0)),
    ("a5 5a 01 05 c4 06 00 00 00 2a 01 03 1e fc", 5, p.DispenseProgress(42, 1, p.Phase.DROP_SEEN)),
    (
        "a5 5a 01 06 c5 09 00 00 00 2a 03 01 05 00 09 56 9b",
        6,
        p.DispenseResult(42, S.DONE, 1, OC.NO_DROP, 9),
    ),
    ("a5 5a 01 0d ff 03 03 05 00 60 3a", 13, p.Error(0x03, p.ErrorCode.BUSY, 0)),
    ("a5 5a 01 0e 42 02 01 02 7a ff", 14, p.UnknownMessage(0x42, b"\x01\x02")),
]
IDS = [type(m).__name__ + f"-{seq}" for _, seq, m in FRAMES]
CASES = [(bytes.fromhex(h), p.Frame(seq, m)) for h, seq, m in FRAMES]


def decode_all(data: bytes) -> list[p.Decoded]:
    """Run ``decode`` over a whole buffer, as a reader would."""
    items: list[p.Decoded] = []
    while True:
        used, item = p.decode(data)
        if used == 0:
            return items
        assert item is not None
        items.append(item)
        data = data[used:]


def bitwise_crc(data: bytes) -> int:
    """The spec's reference CRC (PROTOCOL.md 2.3), written out independently of crc.py."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == CHECK == 0x29B1
    assert bitwise_crc(b"123456789") == 0x29B1


def test_every_known_code_has_a_literal() -> None:
    covered = {type(m) for _, _, m in FRAMES}
    assert set(p.MESSAGES.values()) <= covered
    with pytest.raises(TypeError):
        p.MESSAGES[0x01] = p.Hello  # type: ignore[index]


@pytest.mark.parametrize(("raw", "frame"), CASES, ids=IDS)
def test_round_trip_from_hex(raw: bytes, frame: p.Frame) -> None:
    assert p.encode(frame) == raw
    assert p.decode(raw) == (len(raw), frame)
    assert bitwise_crc(raw[2:-2]) == int.from_bytes(raw[-2:], "big")


@pytest.mark.parametrize(("raw", "frame"), CASES, ids=IDS)
def test_need_more_until_the_last_byte(raw: bytes, frame: p.Frame) -> None:
    for cut in range(len(raw)):
        assert p.decode(raw[:cut]) == (0, None)


@pytest.mark.parametrize(("raw", "frame"), CASES, ids=IDS)
def test_reader_byte_by_byte_and_split(raw: bytes, frame: p.Frame) -> None:
    reader = p.FrameReader()
    got = [f for b in raw for f in reader.feed(bytes([b]))]
    assert got == [frame]
    for cut in range(1, len(raw)):
        reader = p.FrameReader()
        assert reader.feed(raw[:cut]) == []
        assert reader.feed(raw[cut:]) == [frame]
        assert reader.counters() == {"frames": 1, "crc_errors": 0, "garbage_bytes": 0, "resyncs": 0}


GARBAGE = [b"\x00", b"\xff\xa5", b"\xa5\xa5\x00", b"hello world\r\n", b"\x5a\xa5", b"\xa5\x5a\xff"]


@pytest.mark.parametrize("junk", GARBAGE)
@pytest.mark.parametrize(("raw", "frame"), CASES, ids=IDS)
def test_garbage_before_and_after(raw: bytes, frame: p.Frame, junk: bytes) -> None:
    items = decode_all(junk + raw + junk)
    frames = [i for i in items if isinstance(i, p.Frame)]
    assert frames == [frame]
    skipped = b"".join(i.data for i in items if not isinstance(i, p.Frame))
    # Every byte of the junk before is skipped; of the junk after, all but what may still
    # start a frame.
    assert skipped.startswith(junk)


@pytest.mark.parametrize(("raw", "frame"), CASES, ids=IDS)
def test_garbage_inside_a_frame_loses_it_but_not_the_next(raw: bytes, frame: p.Frame) -> None:
    for at in range(1, len(raw)):
        reader = p.FrameReader()
        broken = raw[:at] + b"\x00" + raw[at:]
        # A corrupted LEN may hold the decoder until the line goes idle (PROTOCOL.md 5.2).
        assert reader.feed(broken + raw + raw) + reader.flush() == [frame, frame]
        assert reader.crc_errors + reader.garbage_bytes > 0


@pytest.mark.parametrize(("raw", "frame"), CASES, ids=IDS)
def test_bad_crc_is_skipped_and_reported(raw: bytes, frame: p.Frame) -> None:
    for at in range(2, len(raw)):  # every byte after SOF, the CRC itself included
        bad = bytearray(raw)
        bad[at] ^= 0x01
        items = decode_all(bytes(bad))
        assert not any(isinstance(i, p.Frame) for i in items)
        reader = p.FrameReader()
        assert reader.feed(bytes(bad) + raw) == [frame]
        assert reader.crc_errors + reader.garbage_bytes > 0


def test_bad_crc_counted_once_and_resync_finds_the_next_frame() -> None:
    good = bytes.fromhex("a5 5a 01 05 03 05 01 00 00 00 2a 0f 15")
    bad = good[:-1] + b"\x00"
    reader = p.FrameReader()
    assert reader.feed(b"\x00\x01" + bad + good) == [p.Frame(5, p.Dispense(1, 42))]
    assert reader.counters() == {"frames": 1, "crc_errors": 1, "garbage_bytes": 2, "resyncs": 1}


def test_corrupted_length_does_not_swallow_the_next_frame() -> None:
    good = bytes.fromhex("a5 5a 01 05 03 05 01 00 00 00 2a 0f 15")
    long_len = good[:5] + b"\x40" + good[6:]  # LEN 64: the candidate reaches into what follows
    reader = p.FrameReader()
    frames = reader.feed(long_len + good * 6)
    assert frames[-1] == p.Frame(5, p.Dispense(1, 42))
    assert len(frames) >= 5


def test_length_over_the_maximum_is_garbage_at_once() -> None:
    used, item = p.decode(b"\xa5\x5a\x01\x01\x01\xf1" + b"\x00" * 3)
    assert isinstance(item, p.Garbage)
    assert used == 9


def test_partial_frame_dropped_after_an_idle_line() -> None:
    reader = p.FrameReader()
    assert reader.feed(b"\xa5\x5a\x01\x05") == []
    assert reader.flush() == []
    assert reader.pending == 0
    assert reader.garbage_bytes == 4


def test_flush_recovers_frames_held_behind_a_long_length() -> None:
    good = bytes.fromhex("a5 5a 01 05 03 05 01 00 00 00 2a 0f 15")
    reader = p.FrameReader()
    assert reader.feed(b"\xa5\x5a\x01\x07\x03\xf0" + good + b"\xa5") == []
    assert reader.flush() == [p.Frame(5, p.Dispense(1, 42))]
    assert reader.pending == 0
    assert reader.garbage_bytes == 7


def test_unknown_code_and_other_version_are_typed_values() -> None:
    body = bytes([0x01, 0x09, 0x55, 0x01, 0xAB])
    raw = p.SOF + body + crc16_ccitt_false(body).to_bytes(2, "big")
    assert p.decode(raw) == (len(raw), p.Frame(9, p.UnknownMessage(0x55, b"\xab")))
    body2 = bytes([0x02, 0x09, 0x01, 0x00])
    raw2 = p.SOF + body2 + crc16_ccitt_false(body2).to_bytes(2, "big")
    assert p.decode(raw2) == (len(raw2), p.Frame(9, p.UnknownMessage(0x01), version=2))


@pytest.mark.parametrize(
    ("code", "payload", "reason"),
    [
        (0x03, b"\x01\x00\x00", "short payload"),  # DISPENSE without its whole txn id
        (0x01, b"\x00", "extra"),  # HELLO has no payload
        (0x83, bytes.fromhex("0000002a03010000ff"), "outcome"),  # DONE without an outcome
        (0x83, bytes.fromhex("0000002a09010100ff"), "TxnState"),  # state 9
        (0xC1, b"\x02", "door"),
        (0x81, b"\x01\x11" + b"x" * 17 + b"\x00\x00\x00\x00\x00", "text length"),
        (0x81, b"\x01\x02\xff\xfe\x00\x00\x00\x00\x00", "UTF-8"),
        (0x87, b"\x3d" + b"\x01\x00\x01" * 61, "slots"),
    ],
)
def test_malformed_payload_is_a_typed_value(code: int, payload: bytes, reason: str) -> None:
    body = bytes([0x01, 0x01, code, len(payload)]) + payload
    raw = p.SOF + body + crc16_ccitt_false(body).to_bytes(2, "big")
    used, item = p.decode(raw)
    assert used == len(raw)
    assert isinstance(item, p.Frame)
    assert isinstance(item.message, p.MalformedMessage)
    assert item.message.code == code
    assert reason in item.message.reason


@pytest.mark.parametrize(
    "message",
    [
        p.Dispense(256, 1),
        p.Dispense(1, 1 << 32),
        p.Query(-1),
        p.Info(1, "x" * 17, "", "", C.NONE, ()),
        p.StockReply(tuple((i, 1) for i in range(61))),
        p.UnknownMessage(0x42, b"\x00" * 241),
        p.UnknownMessage(0x1FF),
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(message: p.Message) -> None:
    with pytest.raises(p.EncodeError):
        p.encode(p.Frame(1, message))
    with pytest.raises(p.EncodeError):
        p.encode(p.Frame(256, p.Hello()))


def test_messages_are_frozen_and_carry_their_code() -> None:
    msg = p.Dispense(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.slot = 3  # type: ignore[misc]
    assert msg.code == p.Dispense.CODE == p.Code.DISPENSE
    for code, cls in p.MESSAGES.items():
        assert code == cls.CODE
        if code < 0x80:
            assert p.reply_code(code) in p.MESSAGES


def test_largest_frame_is_the_maximum() -> None:
    info = p.Info(1, "M" * 16, "F" * 16, "S" * 16, C.NONE, tuple((i, 1) for i in range(1, 61)))
    raw = p.encode(p.Frame(1, info))
    assert len(raw) <= p.MAX_FRAME
    assert p.decode(raw) == (len(raw), p.Frame(1, info))


def test_the_spec_trace_is_valid_bytes() -> None:
    """Every frame written out in PROTOCOL.md decodes, with a good CRC, to what it says."""
    import re
    from pathlib import Path

    spec = (Path(p.__file__).parent / "PROTOCOL.md").read_text()
    lines = re.findall(r"^(?:kiosk|board) → (?:kiosk|board)  ((?:[0-9A-F]{2} )+)", spec, re.M)
    assert len(lines) == 10
    names = []
    for line in lines:
        raw = bytes.fromhex(line)
        used, item = p.decode(raw)
        assert used == len(raw) and isinstance(item, p.Frame), line
        assert not isinstance(item.message, (p.UnknownMessage, p.MalformedMessage))
        names.append(type(item.message).__name__)
    assert names[:2] == ["Dispense", "DispenseAck"] and names[-1] == "QueryReply"
    assert "A5 5A | 01 | 05 | 03 | 05 | 01 00 00 00 2A | 0F 15" in spec  # the worked example
    assert p.encode(p.Frame(5, p.Dispense(1, 42))).hex() == "a55a010503050100 00002a0f15".replace(
        " ", ""
    )
