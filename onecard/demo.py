"""`onecard demo`: the whole platform on its embedded default, walking one resident's visits.

It starts, each as its own process and each reached the way production reaches it:
  - the central server (Flask over real HTTP, SQLite in the demo's data directory);
  - a simulated controller board on a pseudo-terminal (opened by the kiosk with pyserial);
  - pcscd, if it is not running already, and a virtual PIV card on its vpcd driver;
then issues the resident's card through pcscd, and runs the kiosk core in this process, tapping
the card (inserting and removing it at the virtual reader) until the monthly allowance is used up
and the refusal is shown. Every step is printed with its time in milliseconds.

Without --once it then stays up, saying where each part listens, until Ctrl-C. Everything it
started is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from cardsvc.ca import CardCA
from cardsvc.pcsc import PcscReader
from kiosk.board import open_board

from cardsvc.errors import CardError
from kiosk.app import format_result, serve
from kiosk.client import ServerClient
from kiosk.identity import load_or_create_device_key, public_key_b64
from kiosk.journal import Journal
from kiosk.tap import Kiosk, TapOutcome, TapResult
from onecard.card import issue_card
from onecard.procs import (
    Child,
    ChildError,
    free_port,
    pcscd_running,
    python_module,
    start_pcscd,
    wait_for_http,
)

T = TypeVar("T")

KIOSK_ID = "K-DEMO-01"
SLOT = 1
SLOT_STOCK = 10
VPCD_PORT = 35963
READER = "Virtual PCD 00 00"
MAX_VISITS = 12


class DemoFailed(RuntimeError):
    """The walk did not go as the platform promises; the message says what failed."""


@dataclass
class Walk:
    results: list[TapResult] = field(default_factory=list)
    limit: int | None = None


def say(text: str) -> None:
    print(text, flush=True)


@contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    say(f"[{(time.perf_counter() - start) * 1000:8.1f} ms] {what}")


def step(what: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    value = fn()
    say(f"[{(time.perf_counter() - start) * 1000:8.1f} ms] {what}")
    return value


class CardControl:
    """The virtual card's control channel: insert and remove it as a resident taps."""

    def __init__(self, port: int) -> None:
        self.port = port

    def send(self, command: str) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(command.encode() + b"\n")
            with s.makefile("r") as f:
                answer = f.readline().strip()
        if not answer.startswith("ok"):
            raise DemoFailed(f"the virtual card refused {command!r}: {answer}")
        return answer

    def insert(self) -> None:
        self.send("insert")

    def remove(self) -> None:
        self.send("remove")


def run_demo(data_dir: Path, once: bool) -> Walk:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    say(f"OneCard demo: data in {data_dir}/ (SQLite, a virtual card, a simulated board)")
    with ExitStack() as stack:
        children: list[Child] = []

        def started(child: Child) -> Child:
            children.append(child)
            stack.callback(child.stop)
            return child

        # The city card CA and the kiosk's device key.
        ca = step("city card CA created", lambda: CardCA.create(data_dir / "ca"))
        device_key = load_or_create_device_key(data_dir / "kiosk")

        # The central server, seeded with a town, a village, a resident and this kiosk.
        db_url = f"sqlite:///{data_dir / 'server.sqlite3'}"
        env = {
            "ONECARD_DATABASE_URL": db_url,
            "ONECARD_DATA_DIR": str(data_dir / "server"),
            "ONECARD_CARD_CA_CERT": str(ca.certificate_path),
        }
        seed = step(
            "server database migrated and seeded",
            lambda: _prepare_server(env, public_key_b64(device_key)),
        )
        port = free_port()
        server_url = f"http://127.0.0.1:{port}"
        server = started(
            Child(
                "server",
                python_module(
                    "onecard.cli", "server", "run", "--host", "127.0.0.1", "--port", str(port)
                ),
                env,
            )
        )
        step(
            f"server listening on {server_url}",
            lambda: wait_for_http(server_url + "/api/v1/health", 30, server),
        )

        # The controller board, on a pseudo-terminal.
        board_sim = started(
            Child(
                "board-sim",
                python_module(
                    "onecard.cli",
                    "board-sim",
                    "--pty",
                    "--state",
                    str(data_dir / "board-state.json"),
                    "--slots",
                    f"{SLOT}={SLOT_STOCK},2={SLOT_STOCK}",
                ),
            )
        )
        device = step(
            "board simulator on a pseudo-terminal",
            lambda: board_sim.wait_for_line(r"ready: (\S+)", 15).group(1),
        )
        say(f"             board device {device}, slot {SLOT} holds {SLOT_STOCK}")

        # pcscd and the virtual card on its vpcd driver.
        if pcscd_running():
            say("             pcscd already running: using it")
        else:
            started(step("pcscd started", start_pcscd))
        control_port = free_port()
        card_sim = started(
            Child(
                "card-sim",
                python_module(
                    "onecard.cli",
                    "card-sim",
                    "--state",
                    str(data_dir / "card.json"),
                    "--port",
                    str(VPCD_PORT),
                    "--control",
                    f"127.0.0.1:{control_port}",
                ),
            )
        )
        step("virtual card ready", lambda: card_sim.wait_for_line(r"ready", 15))
        card = CardControl(control_port)

        # The technician issues the resident's card, through pcscd like a real card.
        reader = PcscReader(READER)
        guid = step(
            "card issued: key generated on the card, certificate and CHUID written, recorded at the server",
            lambda: _issue_card(card, reader, ca, server_url, seed),
        )
        say(f"             card GUID {guid}, for resident #{seed.resident_id}")

        # The kiosk.
        journal = stack.enter_context(Journal(data_dir / "kiosk" / "journal.sqlite3"))
        board = stack.enter_context(closing(open_board(device)))
        client = stack.enter_context(ServerClient(server_url, KIOSK_ID, device_key))
        kiosk = Kiosk(
            kiosk_id=KIOSK_ID,
            journal=journal,
            server=client,
            board=board,
            ca_certificate_der=ca.certificate_der,
        )
        walk = _walk(kiosk, card, reader, seed.limit)

        if once:
            return walk
        say("")
        say("Everything is still running:")
        say(f"  server       {server_url}  (SQLite {data_dir / 'server.sqlite3'})")
        say(f"  board        {device}  (simulator pid {board_sim.pid})")
        say(f"  card         vpcd 127.0.0.1:{VPCD_PORT}, reader {READER!r}")
        say(f"  tap the card printf 'insert\\n' | nc 127.0.0.1 {control_port}   (remove: 'remove')")
        say("  kiosk        serving taps in this process")
        say("Press Ctrl-C to stop everything.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        loop = threading.Thread(
            target=serve,
            args=(kiosk, reader, SLOT, stop, lambda r: say(format_result(r))),
            daemon=True,
        )
        loop.start()
        try:
            while not stop.is_set():
                stop.wait(0.5)
        except KeyboardInterrupt:
            say("\nstopping ...")
        stop.set()
        loop.join(5)
        return walk


def _prepare_server(env: dict[str, str], kiosk_public_key: str) -> Any:
    from server import services

    return services.prepare_demo(
        database_url=env["ONECARD_DATABASE_URL"],
        kiosk_id=KIOSK_ID,
        kiosk_public_key=kiosk_public_key,
        slot=SLOT,
        stock=SLOT_STOCK,
        config=env,
    )


def _issue_card(
    card: CardControl, reader: PcscReader, ca: CardCA, server_url: str, seed: Any
) -> str:
    card.insert()
    try:
        issued = issue_card(reader, ca, server_url, seed.technician_token, seed.resident_id)
    finally:
        card.remove()
        reader.wait_for_removal(timeout=10)
    return issued.guid.hex()


def _walk(kiosk: Kiosk, card: CardControl, reader: PcscReader, limit: int) -> Walk:
    walk = Walk(limit=limit)
    for visit in range(1, MAX_VISITS + 1):
        say("")
        say(f"Visit {visit}: the resident taps the card at kiosk {KIOSK_ID}")
        start = time.perf_counter()
        card.insert()
        connection = reader.wait_for_card(timeout=10)
        if connection is None:
            raise DemoFailed("the kiosk's reader did not see the card")
        detected = (time.perf_counter() - start) * 1000
        say(
            f"  {'card detected':<15} {detected:8.1f} ms  inserted at the virtual reader, seen by pcscd"
        )
        with connection:
            result = kiosk.serve_card(connection, SLOT)
        card.remove()
        reader.wait_for_removal(timeout=10)
        say(format_result(result))
        say(f"  {'total':<15} {result.total_ms + detected:8.1f} ms")
        walk.results.append(result)
        if result.outcome is not TapOutcome.DISPENSED:
            break
    return walk


def check(walk: Walk) -> None:
    """The walk must show `limit` dispenses, each charged, then a refusal for the limit."""
    results = walk.results
    dispensed = [r for r in results if r.outcome is TapOutcome.DISPENSED]
    last = results[-1] if results else None
    if last is None or last.outcome is not TapOutcome.REFUSED:
        got = f"{last.outcome.value}: {last.message}" if last else "no visit at all"
        raise DemoFailed(f"expected the walk to end in a refusal, it ended with {got}")
    if last.reason != "limit_reached":
        raise DemoFailed(f"expected the refusal to be for the monthly limit, it was {last.reason}")
    if walk.limit is not None and len(dispensed) != walk.limit:
        raise DemoFailed(
            f"the monthly limit is {walk.limit} but {len(dispensed)} items were dispensed"
        )
    stocks = [r.stock_left for r in dispensed]
    if stocks != [SLOT_STOCK - i for i in range(1, len(dispensed) + 1)]:
        raise DemoFailed(f"the board's stock did not go down one per dispense: {stocks}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onecard demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run the walk, check it, and exit")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"))
    args = parser.parse_args(argv)
    try:
        walk = run_demo(args.data_dir, args.once)
        check(walk)
    except (DemoFailed, ChildError, CardError, OSError, requests.RequestException) as exc:
        print(f"\nonecard demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nonecard demo: interrupted", file=sys.stderr)
        return 130
    dispensed = sum(r.outcome is TapOutcome.DISPENSED for r in walk.results)
    say("")
    say(
        f"onecard demo: OK: {dispensed} items dispensed and charged, then refused ({walk.results[-1].reason})."
    )
    return 0
