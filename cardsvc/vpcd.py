"""The virtual card's link to pcscd's vpcd driver, and `onecard card-sim`.

vpcd (vsmartcard) makes pcscd listen on a TCP port per virtual reader (Debian:
/etc/reader.conf.d/vpcd, "Virtual PCD 00 00" on 35963, "Virtual PCD 00 01" on 35964). The card
connects to it as a client; while connected, the reader has a card. Wire format, both ways:

    +----------+----------+----------------------------+
    | len (hi) | len (lo) | payload (len bytes)        |
    +----------+----------+----------------------------+

A 1-byte payload from vpcd is a control message: 00 power off, 01 power on, 02 reset (no answer),
04 get ATR (answered with the ATR). Any longer payload is a command APDU, answered with the
response APDU. The socket is parsed as a stream (vpcd may write length and data separately);
each answer goes out in one write with TCP_NODELAY, and TCP_QUICKACK is set before each read,
so no APDU waits for Nagle or a delayed ACK.

`VpcdLink` runs one card on one port in a thread: `insert()` connects (and reconnects if pcscd
restarts), `remove()` disconnects, `pull_during_next_command()` drops the link when the next
APDU arrives, as a card pulled mid-command. `main(argv)` is `onecard card-sim`, with a
line-based control channel, one line answered each (starting "ok" or "error"):
`insert`, `remove`, `swap FILE` (another card, from its state file, in the same reader),
`pull` (the card leaves during the next command), `status`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .vcard import VirtualPivCard

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963
RECONNECT_INTERVAL = 0.2
SWAP_PAUSE = 1.0

CONTROL_POWER_OFF = 0x00
CONTROL_POWER_ON = 0x01
CONTROL_RESET = 0x02
CONTROL_GET_ATR = 0x04


def frame(payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError("a vpcd frame carries at most 65535 bytes")
    return len(payload).to_bytes(2, "big") + payload


class FrameDecoder:
    """Turns the byte stream from vpcd into payloads, however TCP splits or joins the frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        payloads = []
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + length:
                break
            payloads.append(bytes(self._buffer[2 : 2 + length]))
            del self._buffer[: 2 + length]
        return payloads

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole frame yet."""
        return len(self._buffer)


class VpcdLink:
    """One virtual card on one vpcd port, served from a background thread."""

    def __init__(
        self, card: VirtualPivCard, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
    ) -> None:
        self.card = card
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._wanted = False
        self._pull_next = False
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self.apdus = 0

    # --- control --------------------------------------------------------------------------

    @property
    def inserted(self) -> bool:
        """True while the card is connected to vpcd (the reader sees a card)."""
        return self._connected.is_set()

    def insert(self, wait: float | None = 5.0) -> bool:
        """Put the card in the reader; with `wait`, block until vpcd has taken it (True) or not."""
        with self._lock:
            if not self._wanted:
                self._wanted = True
                self._thread = threading.Thread(
                    target=self._run, name=f"vpcd-{self.port}", daemon=True
                )
                self._thread.start()
        return self._connected.wait(wait) if wait else self.inserted

    def remove(self) -> None:
        """Take the card out of the reader (the link closes; the card's memory stays)."""
        with self._lock:
            self._wanted = False
            thread, self._thread = self._thread, None
            self._close_socket()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def pull_during_next_command(self) -> None:
        """Fault injection: drop the link when the next APDU arrives, without answering it."""
        self._pull_next = True

    def close(self) -> None:
        self.remove()

    def __enter__(self) -> VpcdLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the link -------------------------------------------------------------------------

    def _close_socket(self) -> None:
        sock, self._socket = self._socket, None
        self._connected.clear()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _run(self) -> None:
        while self._wanted:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError:
                # pcscd is not (yet) listening: try again, so a card survives a pcscd restart.
                threading.Event().wait(RECONNECT_INTERVAL)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if not self._wanted:
                    sock.close()
                    return
                self._socket = sock
            self.card.reset()
            self._connected.set()
            logger.debug("card inserted on %s:%d", self.host, self.port)
            try:
                self._serve(sock)
            except OSError as exc:
                logger.debug("vpcd link closed: %s", exc)
            with self._lock:
                if self._socket is sock:
                    self._close_socket()
            logger.debug("card removed from %s:%d", self.host, self.port)

    def _serve(self, sock: socket.socket) -> None:
        framer = FrameDecoder()
        quickack = getattr(socket, "TCP_QUICKACK", None)
        while True:
            if quickack is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
            chunk = sock.recv(70000)
            if not chunk:
                return
            for payload in framer.feed(chunk):
                reply = self._handle(payload)
                if reply is _PULLED:
                    with self._lock:
                        self._wanted = False
                    return
                if reply is not None:
                    sock.sendall(frame(reply))

    def _handle(self, payload: bytes) -> bytes | None:
        if len(payload) == 1:
            code = payload[0]
            if code == CONTROL_GET_ATR:
                return self.card.atr
            if code in (CONTROL_POWER_OFF, CONTROL_POWER_ON, CONTROL_RESET):
                self.card.reset()
            return None
        if self._pull_next:
            self._pull_next = False
            return _PULLED
        self.apdus += 1
        return self.card.process(payload)


_PULLED = b"<pulled>"


# --- onecard card-sim ------------------------------------------------------------------------


class _ControlHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        control: _ControlServer = self.server.control  # type: ignore[attr-defined]
        for raw in self.rfile:
            command = raw.decode(errors="replace").strip()
            if not command:
                continue
            answer = control.execute(command)
            self.wfile.write(answer.encode() + b"\n")
            self.wfile.flush()


class _ControlServer:
    def __init__(self, link: VpcdLink, state_path: Path) -> None:
        self.link = link
        self.state_path = state_path
        self._lock = threading.Lock()

    def execute(self, line: str) -> str:
        verb, _, argument = line.partition(" ")
        with self._lock:
            return self._execute(verb.lower(), argument.strip())

    def _execute(self, verb: str, argument: str) -> str:
        if verb == "insert":
            ok = self.link.insert(wait=5.0)
            return "ok inserted" if ok else "error vpcd did not take the card (is pcscd running?)"
        if verb == "remove":
            self.link.remove()
            return "ok removed"
        if verb == "swap":
            if not argument:
                return "error swap needs the state file of the other card"
            self.link.remove()
            # pcscd polls a vpcd reader about every 400 ms: the first card must be seen to
            # leave, or the host would take the new card for the old one (hands take longer).
            time.sleep(SWAP_PAUSE)
            try:
                self.link.card = VirtualPivCard(argument)
            except (OSError, ValueError) as exc:
                return f"error cannot load {argument}: {exc}"
            self.state_path = Path(argument)
            ok = self.link.insert(wait=5.0)
            return f"ok inserted {argument}" if ok else "error vpcd did not take the card"
        if verb == "pull":
            self.link.pull_during_next_command()
            return "ok the card will be pulled during the next command"
        if verb == "status":
            state = "inserted" if self.link.inserted else "removed"
            return (
                f"ok {state} serial={self.link.card.serial} apdus={self.link.apdus} "
                f"state={self.state_path!s}"
            )
        return f"error unknown command {verb!r} (insert, remove, swap FILE, pull, status)"


class _TcpControl(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixControl(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _control_server(address: str, control: _ControlServer) -> tuple[socketserver.BaseServer, str]:
    server: socketserver.BaseServer
    if ":" in address and not address.startswith(("/", ".")):
        host, _, port = address.rpartition(":")
        tcp = _TcpControl((host or DEFAULT_HOST, int(port)), _ControlHandler)
        bound_host, bound_port = tcp.socket.getsockname()[:2]
        description = f"{bound_host}:{bound_port}"
        server = tcp
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        server = _UnixControl(address, _ControlHandler)
        description = address
    server.control = control  # type: ignore[union-attr]
    return server, description


def send_control(address: str, command: str, timeout: float = 10.0) -> str:
    """Send one control command to a running card-sim; return its one-line answer."""
    if ":" in address and not address.startswith(("/", ".")):
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    with sock, sock.makefile("rwb") as stream:
        stream.write(command.encode() + b"\n")
        stream.flush()
        return stream.readline().decode().strip()


def _warm_up_crypto() -> None:
    """One throwaway signature: OpenSSL's one-time set-up (~20 ms) must not land on a tap."""
    key = ec.generate_private_key(ec.SECP256R1())
    key.sign(bytes(32), ec.ECDSA(Prehashed(hashes.SHA256())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="onecard card-sim", description="Run a virtual PIV card behind pcscd's vpcd driver."
    )
    parser.add_argument(
        "--state", required=True, type=Path, help="the card's state file (created blank if missing)"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="where pcscd's vpcd listens")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="vpcd port (35963: Virtual PCD 00 00)"
    )
    parser.add_argument(
        "--control",
        default=f"{DEFAULT_HOST}:0",
        help="control channel: HOST:PORT (port 0 picks one) or a unix socket path",
    )
    parser.add_argument("--inserted", action="store_true", help="start with the card in the reader")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v debug lines, -vv every APDU"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.DEBUG, 5][min(args.verbose, 2)],
        format="%(asctime)s %(name)s %(message)s",
    )
    card = VirtualPivCard(args.state)
    _warm_up_crypto()
    link = VpcdLink(card, args.host, args.port)
    server, control_address = _control_server(args.control, _ControlServer(link, args.state))
    thread = threading.Thread(target=server.serve_forever, name="card-sim-control", daemon=True)
    thread.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.inserted and not link.insert(wait=5.0):
        print(
            f"card-sim: vpcd at {args.host}:{args.port} did not take the card yet; "
            "is pcscd running? (start it with `pcscd --foreground`); still trying",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"card-sim ready: control {control_address}, vpcd {args.host}:{args.port}, "
        f"serial {card.serial}, state {args.state}",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        link.remove()
        server.shutdown()
        server.server_close()
        if not (":" in args.control and not args.control.startswith(("/", "."))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.control)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
