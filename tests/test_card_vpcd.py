"""The vpcd wire: frames fed whole, split anywhere, joined, and the link's answers to vpcd's
control messages (a scripted vpcd on a local socket stands in for pcscd here)."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardsvc.vcard import ATR, VirtualPivCard
from cardsvc.vpcd import FrameDecoder, VpcdLink, frame


@pytest.mark.parametrize(
    ("payload", "hex_"),
    [(b"\x04", "000104"), (bytes.fromhex("00a4040000"), "000500a4040000"), (b"", "0000")],
)
def test_frame_hex(payload: bytes, hex_: str) -> None:
    assert frame(payload).hex() == hex_
    assert FrameDecoder().feed(bytes.fromhex(hex_)) == [payload]


def test_frame_refuses_oversized_payloads() -> None:
    with pytest.raises(ValueError):
        frame(bytes(65536))


@given(st.lists(st.binary(max_size=300), max_size=6), st.data())
def test_frames_survive_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    received: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received += decoder.feed(stream[start:cut])
        start = cut
    assert received == payloads
    assert decoder.pending == 0


def test_frames_byte_by_byte() -> None:
    decoder = FrameDecoder()
    stream = frame(b"\x01") + frame(bytes.fromhex("00fd000000"))
    received = [p for byte in stream for p in decoder.feed(bytes([byte]))]
    assert received == [b"\x01", bytes.fromhex("00fd000000")]


def test_the_link_answers_vpcd() -> None:
    """ATR request, power messages (no answer), an APDU, then a pull mid-command."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    link = VpcdLink(VirtualPivCard(None), "127.0.0.1", port)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    try:
        assert link.insert(wait=5.0)
        thread.join(5)
        vpcd = accepted[0]
        vpcd.settimeout(5)
        decoder = FrameDecoder()

        def ask(payload: bytes) -> bytes:
            vpcd.sendall(frame(payload)[:2])  # length and data apart, as Debian's vpcd does
            vpcd.sendall(payload)
            while True:
                answers = decoder.feed(vpcd.recv(4096))
                if answers:
                    return answers[0]

        vpcd.sendall(frame(b"\x01"))  # power on: no answer
        assert ask(b"\x04") == ATR
        assert ask(bytes.fromhex("00fd000000")) == bytes.fromhex("0100009000")
        link.pull_during_next_command()
        vpcd.sendall(frame(bytes.fromhex("00fd000000")))
        assert vpcd.recv(4096) == b""  # the card left without answering
        assert not link.inserted
    finally:
        link.remove()
        listener.close()
        for sock in accepted:
            sock.close()
