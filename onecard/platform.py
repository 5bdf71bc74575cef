"""The whole platform started for real, as one context manager: the demo's and the tests' stage.

`start_platform()` starts, each as its own process and each reached the way production reaches
it, the central server (real HTTP, SQLite in the data directory), a simulated controller board on
a pseudo-terminal, pcscd if it is not running, and a virtual card on pcscd's vpcd driver; issues
the resident's card through pcscd; and builds the kiosk core on top. On the way out it stops
everything it started, by pid, whatever happened.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cardsvc.ca import CardCA
from cardsvc.pcsc import PcscReader
from kiosk.app import continue_txn_ids_above_board
from kiosk.board import BoardDriver, open_board
from kiosk.client import ServerClient
from kiosk.identity import load_or_create_device_key, public_key_b64
from kiosk.journal import Journal
from kiosk.revocation import RevocationList, open_revocation_list, pin_server_key
from kiosk.tap import Kiosk
from onecard.card import issue_card
from onecard.procs import (
    Child,
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
# vpcd's first reader ("Virtual PCD 00 00" on 35963); ONECARD_VPCD_PORT picks another of its
# slots (35964 is "Virtual PCD 00 01"), so two runs on one machine need not share a reader.
VPCD_PORT = int(os.environ.get("ONECARD_VPCD_PORT", "35963"))
READER = f"Virtual PCD 00 {VPCD_PORT - 35963:02d}"


class PlatformError(RuntimeError):
    """A part of the platform did not start or did not do what it must; the message says which."""


def quiet(text: str) -> None:
    del text


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
            raise PlatformError(f"the virtual card refused {command!r}: {answer}")
        return answer

    def insert(self) -> None:
        self.send("insert")

    def remove(self) -> None:
        self.send("remove")

    def pull_during_next_command(self) -> None:
        self.send("pull")


@dataclass
class Platform:
    data_dir: Path
    ca: CardCA
    server_url: str
    server_env: dict[str, str]
    server: Child
    board_device: str
    board_sim: Child
    card: CardControl
    card_control_port: int
    reader: PcscReader
    seed: Any
    card_guid: str
    device_key_dir: Path
    in_process: _KioskParts | None = None

    @property
    def kiosk(self) -> Kiosk:
        return self._parts().kiosk

    @property
    def board(self) -> BoardDriver:
        return self._parts().board

    @property
    def client(self) -> ServerClient:
        return self._parts().client

    @property
    def revocations(self) -> RevocationList:
        return self._parts().revocations

    def kiosk_run_argv(self, *extra: str, screen: bool = False) -> list[str]:
        """`onecard kiosk run` for this platform, as its own process (start with kiosk=False):
        with its touch screen (every slot; pass `--screen-port`), or without (`--slot SLOT`)."""
        return python_module(
            "onecard.cli",
            "kiosk",
            "run",
            "--kiosk-id",
            KIOSK_ID,
            "--server",
            self.server_url,
            "--data-dir",
            str(self.device_key_dir),
            "--board",
            self.board_device,
            "--ca-cert",
            str(self.ca.certificate_path),
            "--reader",
            READER,
            *(() if screen else ("--slot", str(SLOT))),
            *extra,
        )

    def _parts(self) -> _KioskParts:
        if self.in_process is None:
            raise PlatformError("this platform was started without an in-process kiosk")
        return self.in_process


@dataclass(frozen=True)
class _KioskParts:
    kiosk: Kiosk
    board: BoardDriver
    client: ServerClient
    revocations: RevocationList


def _timed(say: Callable[[str], None], what: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    value = fn()
    say(f"[{(time.perf_counter() - start) * 1000:8.1f} ms] {what}")
    return value


@contextmanager
def start_platform(
    data_dir: Path,
    *,
    say: Callable[[str], None] = quiet,
    board_args: Sequence[str] = (),
    slots: str | None = None,
    kiosk: bool = True,
) -> Iterator[Platform]:
    """Start every part in `data_dir` (which must be empty or absent) and yield them.

    With `kiosk=False` no kiosk is built in this process, so a kiosk process of its own
    (`onecard kiosk run`) can open the board and use the device key in `device_key_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise PlatformError(f"{data_dir} is not empty")
    with ExitStack() as stack:

        def started(child: Child) -> Child:
            stack.callback(child.stop)
            return child

        ca = _timed(say, "city card CA created", lambda: CardCA.create(data_dir / "ca"))
        device_key = load_or_create_device_key(data_dir / "kiosk")

        env = {
            "ONECARD_DATABASE_URL": f"sqlite:///{data_dir / 'server.sqlite3'}",
            "ONECARD_DATA_DIR": str(data_dir / "server"),
            "ONECARD_CARD_CA_CERT": str(ca.certificate_path),
            "ONECARD_CARD_CA_DIR": str(ca.certificate_path.parent),
        }
        seed = _timed(
            say,
            "server database migrated and seeded",
            lambda: _prepare_server(env, public_key_b64(device_key)),
        )
        port = free_port()
        server_url = f"http://127.0.0.1:{port}"
        server = started(
            _timed(say, f"server listening on {server_url}", lambda: start_server(env, port))
        )
        _pin_server_key(server_url, data_dir / "kiosk")

        # The board holds SLOT_STOCK in each slot the server registered (unless told otherwise).
        slots = slots or ",".join(f"{n}={SLOT_STOCK}" for n in sorted(seed.slots))
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
                    slots,
                    *board_args,
                ),
            )
        )
        device = _timed(
            say,
            "board simulator on a pseudo-terminal",
            lambda: board_sim.wait_for_line(r"ready: (\S+)", 15).group(1),
        )
        say(f"             board device {device}, slots {slots}")

        if pcscd_running():
            say("             pcscd already running: using it")
        else:
            started(_timed(say, "pcscd started", start_pcscd))
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
        _timed(say, "virtual card ready", lambda: card_sim.wait_for_line(r"ready", 15))
        card = CardControl(control_port)

        reader = PcscReader(READER)
        stack.callback(reader.close)
        guid = _timed(
            say,
            "card issued: key generated on the card, certificate and CHUID written, "
            "recorded at the server",
            lambda: _issue(card, reader, ca, server_url, seed),
        )
        say(f"             card GUID {guid}, for resident #{seed.resident_id}")

        parts = _open_kiosk(stack, data_dir, device, server_url, ca) if kiosk else None
        yield Platform(
            data_dir=data_dir,
            ca=ca,
            server_url=server_url,
            server_env=env,
            server=server,
            board_device=device,
            board_sim=board_sim,
            card=card,
            card_control_port=control_port,
            reader=reader,
            seed=seed,
            card_guid=guid,
            device_key_dir=data_dir / "kiosk",
            in_process=parts,
        )


def _open_kiosk(
    stack: ExitStack, data_dir: Path, device: str, server_url: str, ca: CardCA
) -> _KioskParts:
    device_key = load_or_create_device_key(data_dir / "kiosk")
    journal = stack.enter_context(Journal(data_dir / "kiosk" / "journal.sqlite3"))
    board = stack.enter_context(closing(open_board(device)))
    continue_txn_ids_above_board(journal, board)
    client = stack.enter_context(ServerClient(server_url, KIOSK_ID, device_key))
    revocations = open_revocation_list(data_dir / "kiosk")
    if revocations is None:
        raise PlatformError("the server key was not pinned for the kiosk")
    revocations.refresh(client)
    kiosk = Kiosk(
        kiosk_id=KIOSK_ID,
        journal=journal,
        server=client,
        board=board,
        ca_certificate_der=ca.certificate_der,
        revoked=revocations.revoked,
    )
    return _KioskParts(kiosk, board, client, revocations)


def _pin_server_key(server_url: str, kiosk_dir: Path) -> None:
    """What an installer does: pin the server's configuration-signing key in the kiosk."""
    import requests

    answer = requests.get(server_url + "/api/v1/server-key", timeout=10)
    answer.raise_for_status()
    pin_server_key(kiosk_dir, answer.json()["public_key"])


def start_server(env: dict[str, str], port: int) -> Child:
    """The server as its own process on `port`, answering /api/v1/health when this returns."""
    child = Child(
        "server",
        python_module("onecard.cli", "server", "run", "--host", "127.0.0.1", "--port", str(port)),
        env,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/v1/health", 30, child)
    except BaseException:
        child.stop()
        raise
    return child


def _prepare_server(env: dict[str, str], kiosk_public_key: str) -> Any:
    from server.demo import prepare_demo

    return prepare_demo(
        database_url=env["ONECARD_DATABASE_URL"],
        kiosk_id=KIOSK_ID,
        kiosk_public_key=kiosk_public_key,
        slot=SLOT,
        stock=SLOT_STOCK,
        config=env,
    )


def _issue(card: CardControl, reader: PcscReader, ca: CardCA, server_url: str, seed: Any) -> str:
    card.insert()
    try:
        issued = issue_card(reader, ca, server_url, seed.technician_token, seed.resident_id)
    finally:
        card.remove()
        reader.wait_for_removal(timeout=10)
    return issued.guid.hex()
