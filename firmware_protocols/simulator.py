"""The onecard-v1 board simulator: a board on a serial line that the kiosk cannot tell from
hardware (spec: PROTOCOL.md; firmware logic in simboard.py).

    python -m firmware_protocols.simulator --pty --state var/board.json --slots 1=10,2=10
    board-sim ready: /dev/pts/5

It owns the line (a pseudo-terminal it creates, or ``--device PATH`` opened with pyserial),
the clock, the state file and the fault injection: byte corruption and loss in both
directions, delayed or missing replies, optional pacing of bytes at the baud rate, and the
half-duplex (RS-485) event rule of PROTOCOL.md 5.4 with ``--half-duplex``. With ``--control
PATH`` it listens on a Unix socket for JSON-line commands while it runs; the commands, their
fields and their answers are specified in PROTOCOL.md, appendix A. Every line gets one answer
line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``; a bad line never stops the
simulator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import termios
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from firmware_protocols import modbus_rtu
from firmware_protocols import onecard_v1 as p
from firmware_protocols.simboard import Board, BoardConfig, BoardState, Faults
from firmware_protocols.simboard_modbus import ModbusBoard

INTER_FRAME_GAP = 0.050  # a partial frame idle this long is dropped (PROTOCOL.md 5.2)


class _Stop(Exception):
    pass


class ControlError(ValueError):
    """A control line the simulator cannot carry out; answered ``{"ok": false, "error"}``."""


MAX_CONTROL_LINE = 64 * 1024  # bytes: a longer line without a newline is refused and dropped


def _field(cmd: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``cmd[name]``, which must be of ``kind`` (a bool is not taken for a number)."""
    if name not in cmd:
        raise ControlError(f"missing field {name!r}")
    value = cmd[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ControlError(f"field {name!r} must be {names}, not {type(value).__name__}")
    return value


class _Line(Protocol):
    def fileno(self) -> int: ...
    def read(self) -> bytes: ...
    def write(self, data: bytes) -> int: ...
    def close(self) -> None: ...


class PtyLine:
    """The master side of a new pseudo-terminal; ``path`` is the slave for the kiosk."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw, no echo: otherwise the line discipline would echo our own bytes back to us
        # before the kiosk has opened (and configured) its side.
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)

    def fileno(self) -> int:
        return self._master

    def read(self) -> bytes:
        try:
            return os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:  # EIO: no one has the slave open (we keep it open, so rare)
            return b""

    def write(self, data: bytes) -> int:
        try:
            return os.write(self._master, data)
        except (BlockingIOError, InterruptedError):
            return 0  # nobody reads: like a UART, the bytes go nowhere

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class DeviceLine:
    """An existing serial device (a real port, a socat pty), opened with pyserial."""

    def __init__(self, path: str, baudrate: int) -> None:
        import serial  # the simulator's endpoint may use pyserial (ARCHITECTURE.md)

        self._port = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0)
        self.path = path

    def fileno(self) -> int:
        return int(self._port.fileno())

    def read(self) -> bytes:
        try:
            return bytes(self._port.read(4096))
        except Exception:  # the other end hung up (SerialException): wait, do not spin
            time.sleep(0.05)
            return b""

    def write(self, data: bytes) -> int:
        try:
            return int(self._port.write(data) or 0)
        except Exception:  # write timeout: nobody listens
            return 0

    def close(self) -> None:
        self._port.close()


class _Reader(Protocol):
    @property
    def pending(self) -> int: ...
    def feed(self, data: bytes) -> list[Any]: ...
    def flush(self) -> list[Any]: ...
    def clear(self) -> None: ...
    def counters(self) -> dict[str, int]: ...


class OneCardV1Port:
    """The board speaking onecard-v1 (PROTOCOL.md 2-8)."""

    name = "onecard-v1"

    def __init__(self, board: Board) -> None:
        self.board = board
        self.reader: _Reader = p.FrameReader()

    def answer(self, frame: p.Frame, now: float) -> list[bytes]:
        return [p.encode(f) for f in self.board.handle(frame, now)]

    def events(self, frames: list[p.Frame]) -> list[bytes]:
        return [p.encode(f) for f in frames]


class ModbusRtuPort:
    """The board speaking Modbus RTU (PROTOCOL.md 11): no events, the kiosk polls."""

    name = "modbus-rtu"

    def __init__(self, board: Board, unit: int = modbus_rtu.UNIT) -> None:
        self.board = board
        self.server = ModbusBoard(board, unit)
        self.reader: _Reader = modbus_rtu.RtuReader()

    def answer(self, request: modbus_rtu.Request, now: float) -> list[bytes]:
        response = self.server.handle(request, now)
        return [] if response is None else [response]

    def events(self, frames: list[p.Frame]) -> list[bytes]:
        return []


Port = OneCardV1Port | ModbusRtuPort
PROTOCOLS = ("onecard-v1", "modbus-rtu")


class Simulator:
    """Runs a ``Board`` on a line: the event loop, faults on the bytes, pacing, control."""

    def __init__(
        self,
        board: Board,
        line: _Line,
        *,
        baudrate: int = 9600,
        pace: bool = False,
        seed: int | None = None,
        control_path: str | None = None,
        port: Port | None = None,
        half_duplex: bool = False,
    ) -> None:
        self.board = board
        self.port = port or OneCardV1Port(board)
        self.faults = board.faults
        self.line = line
        self.byte_time = 10 / baudrate  # 8N1: start + 8 data + stop
        self.pace = pace
        self.rng = random.Random(seed)
        self.reader = self.port.reader
        self.control_path = control_path
        self.half_duplex = half_duplex
        self._held_events: list[bytes] = []  # half duplex: events waiting for the next reply
        self.stats: dict[str, int] = {
            "rx_bytes": 0,
            "tx_bytes": 0,
            "rx_frames": 0,
            "tx_frames": 0,
            "lost_in": 0,
            "lost_out": 0,
            "corrupted_in": 0,
            "corrupted_out": 0,
            "replies_withheld": 0,
        }
        self._rx: list[tuple[float, int]] = []  # paced input: (due, byte)
        self._rx_clock = 0.0
        self._last_rx = 0.0
        self._outbox: list[tuple[float, bytes]] = []  # (due, encoded frame)
        self._tx = bytearray()
        self._tx_clock = 0.0
        self._sel = selectors.DefaultSelector()
        self._server: socket.socket | None = None
        self._clients: dict[socket.socket, bytearray] = {}
        self._stop = False

    # ----------------------------------------------------------------- lifecycle

    def open_control(self) -> None:
        if self.control_path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.control_path)
        server.listen(4)
        server.setblocking(False)
        self._server = server
        self._sel.register(server, selectors.EVENT_READ, "accept")

    def run(self) -> None:
        self._sel.register(self.line.fileno(), selectors.EVENT_READ, "line")
        self._send(self.board.boot(time.monotonic()), time.monotonic(), is_reply=False)
        try:
            while not self._stop:
                now = time.monotonic()
                for key, _ in self._sel.select(self._timeout(now)):
                    self._on_ready(key, time.monotonic())
                self._service(time.monotonic())
        except _Stop:
            pass

    def close(self) -> None:
        for client in list(self._clients):
            client.close()
        self._clients.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.control_path or "")
        self._sel.close()
        self.line.close()

    # ----------------------------------------------------------------- loop

    def _timeout(self, now: float) -> float:
        times = [now + 1.0]
        deadline = self.board.next_deadline()
        if deadline is not None:
            times.append(deadline)
        if self._outbox:
            times.append(self._outbox[0][0])
        if self._tx:
            times.append(self._tx_clock + self.byte_time if self.pace else now)
        if self._rx:
            times.append(self._rx[0][0])
        if self.reader.pending:
            times.append(self._last_rx + INTER_FRAME_GAP)
        return max(0.0, min(times) - now)

    def _on_ready(self, key: selectors.SelectorKey, now: float) -> None:
        if key.data == "line":
            data = self.line.read()
            if data:
                # What is due first (a boot's POWER_UP above all: nothing is answered before
                # it, PROTOCOL.md 5.7), then the bytes.
                self._send(self.board.tick(now), now, is_reply=False)
                self._receive(data, now)
        elif key.data == "accept":
            assert self._server is not None
            with contextlib.suppress(BlockingIOError):
                client, _ = self._server.accept()
                client.setblocking(False)
                self._clients[client] = bytearray()
                self._sel.register(client, selectors.EVENT_READ, "client")
        else:
            self._on_client(key.fileobj, now)  # type: ignore[arg-type]

    def _service(self, now: float) -> None:
        was_off = self.board.off_until is not None
        self._send(self.board.tick(now), now, is_reply=False)
        if self._rx:
            due = [b for t, b in self._rx if t <= now]
            if due:
                self._rx = self._rx[len(due) :]
                self._last_rx = now
                self._feed(bytes(due), now)
        if self.reader.pending and not self._rx and now - self._last_rx >= INTER_FRAME_GAP:
            self._handle(self.reader.flush(), now)
        if not was_off and self.board.off_until is not None:
            self._power_lost()
        self._flush(now)

    def _power_lost(self) -> None:
        self._outbox.clear()
        self._held_events.clear()
        self._tx.clear()
        self._rx.clear()
        self.reader.clear()

    # ----------------------------------------------------------------- input

    def _receive(self, data: bytes, now: float) -> None:
        self.stats["rx_bytes"] += len(data)
        if self.board.is_off(now):
            return  # a dark board hears nothing
        data = self._damage(data, "in")
        self._last_rx = now
        if not self.pace:
            self._feed(data, now)
            return
        clock = max(now, self._rx_clock)
        for b in data:
            clock += self.byte_time
            self._rx.append((clock, b))
        self._rx_clock = clock

    def _feed(self, data: bytes, now: float) -> None:
        self._handle(self.reader.feed(data), now)

    def _handle(self, requests: list[Any], now: float) -> None:
        for request in requests:
            self.stats["rx_frames"] += 1
            self._send_raw(self.port.answer(request, now), now, is_reply=True)
            if self.board.off_until is not None:
                self._power_lost()
                return

    # ----------------------------------------------------------------- output

    def _send(self, frames: list[p.Frame], now: float, *, is_reply: bool) -> None:
        # RS-485: the board talks only right behind its own reply (PROTOCOL.md 5.4); POWER_UP
        # (and what follows it) alone goes out at once: the board answered nothing while dark.
        booting = bool(frames) and isinstance(frames[0].message, p.PowerUp)
        if self.half_duplex and not is_reply and frames and not booting:
            self._held_events += self.port.events(frames)
            return
        self._send_raw(self.port.events(frames), now, is_reply=is_reply)

    def _send_raw(self, frames: list[bytes], now: float, *, is_reply: bool) -> None:
        if not frames:
            return
        if self.faults.no_reply:
            self.stats["replies_withheld"] += len(frames)
            return
        if is_reply and self._held_events:
            frames = [*frames, *self._held_events]  # the reply first, the events behind it
            self._held_events = []
        due = now + (self.faults.reply_delay_ms / 1000 if is_reply else 0.0)
        for frame in frames:
            self._outbox.append((due, frame))
        self._outbox.sort(key=lambda item: item[0])

    def _flush(self, now: float) -> None:
        while self._outbox and self._outbox[0][0] <= now:
            _, data = self._outbox.pop(0)
            self.stats["tx_frames"] += 1
            if not self._tx:
                self._tx_clock = max(self._tx_clock, now)
            self._tx += self._damage(data, "out")
        if not self._tx:
            return
        if self.pace:
            n = min(len(self._tx), int((now - self._tx_clock) / self.byte_time))
            if n <= 0:
                return
            self._tx_clock += n * self.byte_time
        else:
            n = len(self._tx)
        chunk = bytes(self._tx[:n])
        del self._tx[:n]
        self.line.write(chunk)
        self.stats["tx_bytes"] += n

    def _damage(self, data: bytes, direction: str) -> bytes:
        loss, corrupt = self.faults.loss_rate, self.faults.corrupt_rate
        if not loss and not corrupt:
            return data
        out = bytearray()
        rnd = self.rng.random
        for b in data:
            if loss and rnd() < loss:
                self.stats[f"lost_{direction}"] += 1
                continue
            if corrupt and rnd() < corrupt:
                self.stats[f"corrupted_{direction}"] += 1
                b ^= self.rng.randrange(1, 256)
            out.append(b)
        return bytes(out)

    # ----------------------------------------------------------------- control

    def _on_client(self, client: socket.socket, now: float) -> None:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._sel.unregister(client)
            client.close()
            del self._clients[client]
            return
        buf = self._clients[client]
        buf += data
        answers = []
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            answers.append(self.control_line(line, now))
        if len(buf) > MAX_CONTROL_LINE:
            buf.clear()
            answers.append({"ok": False, "error": f"line over {MAX_CONTROL_LINE} bytes"})
        for answer in answers:
            try:
                client.setblocking(True)
                client.settimeout(1.0)
                client.sendall(json.dumps(answer).encode() + b"\n")
                client.setblocking(False)
            except OSError:  # the client went away (or does not read): drop it, keep running
                self._drop_client(client)
                break
        if self._stop:
            raise _Stop

    def _drop_client(self, client: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(client)
        client.close()
        self._clients.pop(client, None)

    def control_line(self, line: bytes, now: float) -> dict[str, Any]:
        """One control line -> its answer. Every bad line is an error answer (appendix A)."""
        try:
            cmd = json.loads(line)
        except ValueError as exc:  # not JSON, or not UTF-8
            return {"ok": False, "error": f"not a JSON line: {exc}"}
        if not isinstance(cmd, dict):
            return {"ok": False, "error": f"a command is a JSON object, not {type(cmd).__name__}"}
        try:
            return self.command(cmd, now)
        except ValueError as exc:  # ControlError, and the board's own checks
            return {"ok": False, "error": str(exc)}
        except (KeyError, TypeError, OverflowError) as exc:
            return {"ok": False, "error": repr(exc)}

    def command(self, cmd: dict[str, Any], now: float) -> dict[str, Any]:
        """Carry out one control command (PROTOCOL.md appendix A); ``ControlError`` for a
        command that is unknown or has fields of the wrong kind."""
        cmd = dict(cmd)
        name = _field(cmd, "cmd", str)
        del cmd["cmd"]
        board = self.board
        if name == "stats":
            return {"ok": True, **self.snapshot()}
        if name == "faults":
            self.faults.update(cmd)
            return {"ok": True, "faults": self.faults.to_dict()}
        if name == "clear_faults":
            self.faults.update(Faults().to_dict())
            board.clear_faults()
            return {"ok": True}
        if name == "power_cycle":
            if not board.is_off(now):
                board.power_off(now)
                self._power_lost()
            return {"ok": True}
        if name == "door":
            self._send(board.set_door(_field(cmd, "open", bool)), now, is_reply=False)
            return {"ok": True}
        if name == "temperature":
            celsius = _field(cmd, "celsius", (int, float))
            if not -3276.7 <= celsius <= 3276.7:  # an i16 of tenths; also refuses nan, inf
                raise ControlError(f"celsius {celsius} out of -3276.7..3276.7")
            self._send(board.set_temperature(round(celsius * 10)), now, is_reply=False)
            return {"ok": True}
        if name == "garbage":
            text = _field(cmd, "hex", str)
            try:
                self._tx += bytes.fromhex(text)
            except ValueError as exc:
                raise ControlError(f"hex: {exc}") from None
            return {"ok": True}
        if name == "restock":
            slot, count = _field(cmd, "slot", int), _field(cmd, "count", int)
            if slot not in board.state.physical:
                raise ControlError(f"no slot {slot}")
            if not 0 <= count <= 0xFFFF:
                raise ControlError(f"count {count} out of 0..65535")
            board.state.physical[slot] = count
            return {"ok": True}
        if name == "stop":
            self._stop = True
            return {"ok": True}
        raise ControlError(f"unknown command {name!r}")

    def snapshot(self) -> dict[str, Any]:
        st = self.board.state
        return {
            "protocol": self.port.name,
            "boot_count": st.boot_count,
            "counts": {str(k): v for k, v in st.counts.items()},
            "physical": {str(k): v for k, v in st.physical.items()},
            "drops": st.drops,
            "double_drives": st.double_drives,
            "motor_runs_total": sum(st.motor_runs.values()),
            "motor_runs": {str(k): v for k, v in st.motor_runs.items()},
            "outcomes": {str(t): r.outcome.name.lower() for t, r in st.txns.items()},
            "fault_bits": int(self.board.fault_bits),
            "door_open": self.board.door_open,
            "faults": self.faults.to_dict(),
            "line": {**self.reader.counters(), **self.stats},
        }


# --------------------------------------------------------------------------- state file


class StateFile:
    """The board's non-volatile memory, as a JSON file replaced atomically on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, config: BoardConfig) -> BoardState:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return BoardState.fresh(config)
        return BoardState.from_json(data)

    def save(self, state: BoardState) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state.to_json()))
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="onecard board-sim", description="Simulated onecard-v1 vending-machine board."
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="create a pseudo-terminal")
    where.add_argument("--device", metavar="PATH", help="serve on an existing serial device")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="onecard-v1")
    ap.add_argument("--unit", type=int, default=modbus_rtu.UNIT, help="Modbus unit address")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--pace", action="store_true", help="pace bytes at the baud rate")
    ap.add_argument(
        "--half-duplex",
        action="store_true",
        help="RS-485: events only right behind a reply (PROTOCOL.md 5.4)",
    )
    ap.add_argument("--state", metavar="FILE", type=Path, help="keep stock and outcomes here")
    ap.add_argument("--slots", metavar="N=COUNT,...", help="slots and their counts")
    ap.add_argument("--config", metavar="FILE", type=Path, help="JSON board configuration")
    ap.add_argument("--control", metavar="PATH", help="Unix socket for control commands")
    ap.add_argument("--seed", type=int, help="seed of the fault injector")
    f = ap.add_argument_group("faults at start")
    f.add_argument("--jam", metavar="SLOT", type=int, action="append", default=[])
    f.add_argument("--motor-open", metavar="SLOT", type=int, action="append", default=[])
    f.add_argument("--runaway", metavar="SLOT", type=int, action="append", default=[])
    f.add_argument("--dead-sensor", action="store_true")
    f.add_argument("--blind-sensor", action="store_true")
    f.add_argument("--corrupt", metavar="RATE", type=float, default=0.0)
    f.add_argument("--loss", metavar="RATE", type=float, default=0.0)
    f.add_argument("--delay-ms", metavar="MS", type=float, default=0.0)
    f.add_argument("--no-reply", action="store_true")
    f.add_argument("--power-cycle-next", choices=["motor", "after_drop"])
    f.add_argument("--no-progress", action="store_true", help="send no DISPENSE_PROGRESS")
    return ap


def _config(args: argparse.Namespace) -> BoardConfig:
    config = BoardConfig()
    if args.config is not None:
        config = BoardConfig.from_dict(json.loads(args.config.read_text()))
    if args.slots:
        config = BoardConfig(
            model=config.model,
            firmware=config.firmware,
            serial=config.serial,
            slots=BoardConfig.parse_slots(args.slots),
            timings=config.timings,
            temperature_dc=config.temperature_dc,
            temperature_limits_dc=config.temperature_limits_dc,
        )
    return config


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"board-sim: bad configuration: {exc}", file=sys.stderr)
        return 2
    faults = Faults(
        jammed=set(args.jam),
        motor_open=set(args.motor_open),
        runaway=set(args.runaway),
        dead_sensor=args.dead_sensor,
        blind_sensor=args.blind_sensor,
        corrupt_rate=args.corrupt,
        loss_rate=args.loss,
        reply_delay_ms=args.delay_ms,
        no_reply=args.no_reply,
        power_cycle_at=args.power_cycle_next,
        progress_events=not args.no_progress,
    )
    store = StateFile(args.state) if args.state else None
    try:
        state = store.load(config) if store else BoardState.fresh(config)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"board-sim: unreadable state file {args.state}: {exc}", file=sys.stderr)
        return 2
    board = Board(config, state, faults, persist=store.save if store else lambda s: None)
    try:
        line: _Line = PtyLine() if args.pty else DeviceLine(args.device, args.baud)
    except Exception as exc:  # pyserial's SerialException, OSError
        print(f"board-sim: cannot open the line: {exc}", file=sys.stderr)
        return 1
    port: Port = (
        ModbusRtuPort(board, args.unit) if args.protocol == "modbus-rtu" else OneCardV1Port(board)
    )
    sim = Simulator(
        board,
        line,
        baudrate=args.baud,
        pace=args.pace,
        seed=args.seed,
        control_path=args.control,
        port=port,
        half_duplex=args.half_duplex,
    )
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        sim.open_control()
        print(f"board-sim ready: {line.path}", flush=True)  # type: ignore[attr-defined]
        if args.control:
            print(f"board-sim control: {args.control}", flush=True)
        sim.run()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if store is not None:
            store.save(board.state)
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
