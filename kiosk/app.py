"""`onecard kiosk`: the kiosk's main loop and its command line.

Waits for a card on the reader, serves the tap (kiosk.tap), reports the outcome, and waits for
the card to leave before the next one. When pcscd goes away (restarted, upgraded, crashed) the
loop says "card reader service lost; waiting for it", tries again every second with a new PC/SC
context, says "card reader service back" and carries on where it was (a card that was being
waited out is still waited out, so one presence is never served twice). Open transactions left
by a crash or an outage are settled at start and then once a minute; offline taps are synced
then too (kiosk.offline). A background thread (kiosk.telemetry.Chores) refreshes the signed
configuration (kiosk.config_sync), sends the heartbeat and syncs offline taps, so none of them
holds up a tap.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

from cardsvc.errors import CardError, NoReaderError, PcscdUnavailableError
from cardsvc.pcsc import PcscReader
from kiosk.board import open_board
from kiosk.client import ServerClient
from kiosk.config_sync import ConfigSync
from kiosk.identity import load_or_create_device_key, public_key_b64
from kiosk.journal import Journal
from kiosk.offline import OfflineMode
from kiosk.revocation import RevocationList, SignedGetter, open_revocation_list
from kiosk.tap import Kiosk, TapResult
from kiosk.telemetry import CONFIG_EVERY_S, HEARTBEAT_EVERY_S, Chore, Chores, Heartbeat

RECOVER_EVERY_S = 60.0
READER_SERVICE_RETRY_S = 1.0
OFFLINE_SYNC_EVERY_S = 30.0


@dataclass(frozen=True)
class KioskConfig:
    kiosk_id: str
    server_url: str
    data_dir: Path
    board_device: str
    ca_certificate: Path
    board_protocol: str = "onecard-v1"
    reader: str | None = None
    slot: int = 1
    server_key: str | None = None  # base64 Ed25519; None: the pinned one, or pin on first use
    heartbeat_every_s: float = HEARTBEAT_EVERY_S
    config_every_s: float = CONFIG_EVERY_S


def format_result(result: TapResult) -> str:
    """The tap as lines for a log or a terminal: each step with its time, then the outcome."""
    lines = [f"  {s.name:<15} {s.ms:8.1f} ms  {s.detail}" for s in result.steps]
    tail = f"  => {result.outcome.value}: {result.message}"
    if result.remaining:
        tail += (
            "  (allowance left: "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.remaining.items()))
            + ")"
        )
    if result.stock_left is not None:
        tail += f"  (slot stock left: {result.stock_left})"
    lines.append(tail)
    return "\n".join(lines)


def run(
    config: KioskConfig,
    *,
    stop: threading.Event | None = None,
    on_result: Callable[[TapResult], None] | None = None,
) -> None:
    """Serve taps until `stop` is set (or forever)."""
    stop = stop or threading.Event()
    report = on_result or (lambda r: print(format_result(r), flush=True))
    key = load_or_create_device_key(config.data_dir)
    ca_der = _read_certificate(config.ca_certificate)
    with ExitStack() as stack:
        journal = stack.enter_context(Journal(config.data_dir / "journal.sqlite3"))
        board = stack.enter_context(closing(open_board(config.board_device, config.board_protocol)))
        server = stack.enter_context(ServerClient(config.server_url, config.kiosk_id, key))
        signed = ConfigSync(server, config.data_dir, config.kiosk_id, server_key=config.server_key)
        signed.pin_on_first_use()
        revocations = open_revocation_list(config.data_dir)
        if revocations is not None:
            revocations.refresh_every(server, stop)
        kiosk = Kiosk(
            kiosk_id=config.kiosk_id,
            journal=journal,
            server=server,
            board=board,
            ca_certificate_der=ca_der,
            revoked=revocations.revoked if revocations is not None else frozenset,
            offline=OfflineMode(journal, lambda: signed.current, lambda: server.last_contact),
        )
        heartbeat = Heartbeat(
            server,
            board,
            journal,
            config=lambda: signed.current,
            last_contact=lambda: server.last_contact,
            busy=kiosk.serving.is_set,
        )
        chores = stack.enter_context(
            Chores(
                [
                    Chore("config", config.config_every_s, signed.refresh),
                    Chore("telemetry", config.heartbeat_every_s, heartbeat.send),
                    # Also in recover(); here too so a blackholed server holds up no tap.
                    Chore("offline-sync", OFFLINE_SYNC_EVERY_S, kiosk.offline_sync.sync),
                ]
            )
        )
        heartbeat.on_revocation_version = revocation_news(chores, revocations, server)
        serve(kiosk, PcscReader(config.reader), config.slot, stop, report)


def revocation_news(
    chores: Chores, revocations: RevocationList | None, server: SignedGetter
) -> Callable[[str], None]:
    """What the kiosk does when a heartbeat's answer names a revocation version its
    configuration does not: fetch the list's new entries at once (a card revoked a moment ago is
    refused here within one heartbeat, not at the list's next round), and the configuration that
    names the new version at the chores' next turn. Runs on the chores' thread."""

    def news(version: str) -> None:
        if revocations is not None and version.isdigit() and int(version) > revocations.version:
            revocations.refresh(server)
        chores.soon("config")

    return news


def _say(text: str) -> None:
    print(f"kiosk: {text}", flush=True)


def serve(
    kiosk: Kiosk,
    reader: PcscReader,
    slot: int,
    stop: threading.Event,
    report: Callable[[TapResult], None],
    say: Callable[[str], None] = _say,
) -> None:
    """The reader loop: one tap per card presence; recovery at start and when idle; a lost
    pcscd waited for (`say` tells the operator) without losing the place in the loop."""
    kiosk.recover()
    last_recovery = time.monotonic()
    card_served = False  # True from a tap until its card has left the reader
    while not stop.is_set():
        try:
            if card_served:
                card_served = not reader.wait_for_removal(timeout=0.5)
                if not card_served:
                    say("card left; waiting for the next card")
                continue
            connection = reader.wait_for_card(timeout=0.5)
        except PcscdUnavailableError as exc:
            _wait_for_reader_service(reader, stop, say, exc)
            continue
        if connection is None:
            if time.monotonic() - last_recovery > RECOVER_EVERY_S:
                kiosk.recover()
                last_recovery = time.monotonic()
            continue
        with connection:
            report(kiosk.serve_card(connection, slot))
        card_served = True


def _wait_for_reader_service(
    reader: PcscReader,
    stop: threading.Event,
    say: Callable[[str], None],
    lost: PcscdUnavailableError,
) -> None:
    """Until pcscd answers again with our reader (or `stop`): no tap can be served meanwhile."""
    say(f"card reader service lost; waiting for it ({lost.detail or lost})")
    while not stop.wait(READER_SERVICE_RETRY_S):
        try:
            name = reader.probe()
        except (PcscdUnavailableError, NoReaderError):
            continue  # pcscd not up yet, or up without its readers loaded yet
        say(f"card reader service back (reader {name})")
        return


def _read_certificate(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onecard kiosk", description="The kiosk software.")
    sub = parser.add_subparsers(dest="command", required=True)
    env = os.environ.get
    run_p = sub.add_parser("run", help="wait for cards and serve them")
    run_p.add_argument("--kiosk-id", default=env("ONECARD_KIOSK_ID", "K-0001"))
    run_p.add_argument("--server", default=env("ONECARD_SERVER_URL", "http://127.0.0.1:8080"))
    run_p.add_argument("--data-dir", type=Path, default=Path(env("ONECARD_KIOSK_DIR", "var/kiosk")))
    run_p.add_argument("--board", required=True, help="serial device of the controller board")
    run_p.add_argument("--board-protocol", default="onecard-v1")
    run_p.add_argument("--ca-cert", type=Path, required=True, help="the city card CA certificate")
    run_p.add_argument("--reader", default=None, help="PC/SC reader name (default: any)")
    run_p.add_argument("--slot", type=int, default=1, help="the slot to dispense from")
    run_p.add_argument(
        "--server-key",
        default=env("ONECARD_SERVER_PUBLIC_KEY"),
        help="base64 Ed25519 key that signs configurations (default: pinned on first use)",
    )
    run_p.add_argument(
        "--heartbeat-every",
        type=float,
        default=float(env("ONECARD_HEARTBEAT_EVERY_S", str(HEARTBEAT_EVERY_S))),
        help="seconds between heartbeats",
    )
    key_p = sub.add_parser(
        "keygen", help="create the device key if needed and print its public key"
    )
    key_p.add_argument("--data-dir", type=Path, default=Path(env("ONECARD_KIOSK_DIR", "var/kiosk")))
    args = parser.parse_args(argv)
    if args.command == "keygen":
        print(public_key_b64(load_or_create_device_key(args.data_dir)))
        return 0
    config = KioskConfig(
        kiosk_id=args.kiosk_id,
        server_url=args.server,
        data_dir=args.data_dir,
        board_device=args.board,
        board_protocol=args.board_protocol,
        ca_certificate=args.ca_cert,
        reader=args.reader,
        slot=args.slot,
        server_key=args.server_key,
        heartbeat_every_s=args.heartbeat_every,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"kiosk {config.kiosk_id} ready: waiting for cards, server {config.server_url}", flush=True
    )
    try:
        run(config, stop=stop)
    except KeyboardInterrupt:
        return 0
    except CardError as exc:
        print(f"onecard kiosk: {exc}", file=sys.stderr)
        return 2
    return 0
