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

The touch screen (the default): one kiosk process serves every slot of its board. The
attendant (kiosk.attendant) moves the screen session (kiosk.session) through each card presence,
and the screen's page is served on 127.0.0.1 (kiosk.screen.server, `--screen-port`) for the
kiosk's Chromium; with `--slot N` the kiosk has no screen and every tap takes slot N.

The command line: every option has an environment variable (listed in `onecard kiosk run
--help`), so a systemd unit's EnvironmentFile configures a kiosk. Exit status: 0 stopped, 2 the
configuration is wrong (an option, a variable, the CA file), 3 a device is missing (the board,
the card reader). Log lines go to standard output with their time and level (journald keeps
them); each tap's outcome is printed as the operator's lines (`format_result`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

from cardsvc.errors import CardError, NoReaderError, PcscdUnavailableError
from cardsvc.pcsc import PcscReader
from kiosk.attendant import RESULT_MIN_S, Attendant, StockBook
from kiosk.board import BoardDriver, BoardError, open_board
from kiosk.client import ServerClient, normalise_pin
from kiosk.config_sync import ConfigSync, SlotConfig
from kiosk.errors import KioskError, ServerTrustError
from kiosk.identity import load_or_create_device_key, public_key_b64
from kiosk.journal import Journal
from kiosk.maintenance import Maintenance, test_txn_ids
from kiosk.offline import OfflineMode
from kiosk.revocation import RevocationList, SignedGetter, open_revocation_list
from kiosk.screen.server import ScreenServer
from kiosk.screen.speech import Speaker
from kiosk.screen.words import Words
from kiosk.session import TIMEOUTS, Screen, ScreenSession
from kiosk.stock_outbox import SEND_EVERY_S, StockOutbox
from kiosk.tap import Kiosk, TapResult
from kiosk.telemetry import CONFIG_EVERY_S, HEARTBEAT_EVERY_S, Chore, Chores, Heartbeat

RECOVER_EVERY_S = 60.0
READER_SERVICE_RETRY_S = 1.0
OFFLINE_SYNC_EVERY_S = 30.0
EXIT_CONFIGURATION = 2
EXIT_DEVICE = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


class KioskConfigError(KioskError):
    """A setting of the kiosk cannot be used; the message names it."""


@dataclass(frozen=True)
class KioskConfig:
    kiosk_id: str
    server_url: str
    data_dir: Path
    board_device: str
    ca_certificate: Path
    board_protocol: str = "onecard-v1"
    reader: str | None = None
    slot: int | None = None  # None: the touch screen, every slot; N: no screen, always slot N
    screen_port: int = 8765
    speech_wav_dir: Path | None = None  # speech to WAV files instead of the sound card
    server_key: str | None = None  # base64 Ed25519; None: the pinned one, or pin on first use
    server_ca: Path | None = None  # the CA that signed the server's TLS certificate
    server_pin: str | None = None  # SHA-256 of the server's TLS certificate, pinned
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


def continue_txn_ids_above_board(journal: Journal, board: BoardDriver) -> None:
    """Number new transactions above the highest id the board has recorded (PROTOCOL.md 6.2),
    so a journal that was lost or restored from an old copy never reuses an id the board would
    answer with an old outcome. A board that does not answer now is asked again at its first
    dispense: its driver refuses an id it has recorded (TxnIdReusedError), nothing is sent."""
    try:
        next_id = journal.continue_txn_ids_above(board.last_txn_id())
    except BoardError as exc:
        log.warning(
            "board did not say its last transaction id at start (%s); checked at the first "
            "dispense",
            exc,
        )
        return
    log.info("transaction ids continue at %d, above the board's last recorded one", next_id)


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
        continue_txn_ids_above_board(journal, board)
        server = stack.enter_context(
            ServerClient(
                config.server_url,
                config.kiosk_id,
                key,
                server_ca=config.server_ca,
                server_pin=config.server_pin,
            )
        )
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
        # Stock events from maintenance wait here until the server has them (also from an
        # earlier run: sent by the chores whether or not this run has a screen).
        outbox = stack.enter_context(StockOutbox(journal.path, server))
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
                    Chore("stock-events", SEND_EVERY_S, outbox.send_pending),
                ]
            )
        )
        heartbeat.on_revocation_version = revocation_news(chores, revocations, server)
        reader = PcscReader(config.reader)
        if config.slot is not None:
            serve(kiosk, reader, config.slot, stop, report)
            return
        parts = open_screen(
            stack,
            kiosk,
            board,
            server,
            reader,
            lambda: signed.current.slots if signed.current is not None else {},
            port=config.screen_port,
            stop=stop,
            report=report,
            speech_wav_dir=config.speech_wav_dir,
            stock_events=outbox,
        )
        print(f"kiosk screen: {parts.screen.url}", flush=True)
        serve(kiosk, reader, 0, stop, report, attendant=parts.attendant)


@dataclass
class ScreenKiosk:
    """The touch screen's parts around a kiosk core (kiosk run, the demo and the tests)."""

    session: ScreenSession
    attendant: Attendant
    screen: ScreenServer
    stock: StockBook
    speaker: Speaker


def open_screen(
    stack: ExitStack,
    kiosk: Kiosk,
    board: BoardDriver,
    server: ServerClient,
    reader: PcscReader,
    slots: Callable[[], Mapping[int, SlotConfig]],
    *,
    port: int = 0,
    stop: threading.Event,
    report: Callable[[TapResult], None],
    speech_wav_dir: Path | None = None,
    timeouts: Mapping[Screen, float | None] = TIMEOUTS,
    result_min_s: float = RESULT_MIN_S,
    stock_events: StockOutbox | None = None,
) -> ScreenKiosk:
    """The screen session, its attendant (with maintenance mode) and the page server on
    127.0.0.1:`port`, started; the server is closed when `stack` closes. Maintenance's stock
    events go through `stock_events` (by default an outbox in the journal's file, whose
    waiting events are then sent at the next event: `kiosk run` also sends them from its
    chores)."""
    if stock_events is None:
        stock_events = stack.enter_context(StockOutbox(kiosk.journal.path, server))
    words = Words()
    session = ScreenSession(timeouts=timeouts)
    speaker = Speaker(words, wav_dir=speech_wav_dir)
    session.subscribe(speaker)
    stock = StockBook(board)
    maintenance = Maintenance(
        session, board, stock_events, slots, test_txn_ids(kiosk.journal), on_stock=stock.set
    )
    attendant = Attendant(
        kiosk,
        session,
        reader,
        slots,
        stock,
        maintenance=maintenance,
        report=report,
        result_min_s=result_min_s,
        stop=stop,
    )
    screen = stack.enter_context(ScreenServer(session, words, port))
    stack.callback(speaker.stop)
    return ScreenKiosk(session, attendant, screen, stock, speaker)


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
    *,
    attendant: Attendant | None = None,
) -> None:
    """The reader loop: one tap per card presence; recovery at start and when idle; a lost
    pcscd waited for (`say` tells the operator) without losing the place in the loop. With an
    `attendant` each presence goes through the screen (every slot, chosen by the resident);
    without, every tap takes `slot`."""
    if attendant is not None:
        attendant.recovering(kiosk.recover)
        attendant.idle()
    else:
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
            if attendant is not None:
                attendant.idle()  # the offers follow the configuration and the stock
            continue
        if attendant is not None:
            try:
                with connection:
                    card_served = not attendant.serve_presence(connection)
            except PcscdUnavailableError as exc:
                _wait_for_reader_service(reader, stop, say, exc)
                card_served = True  # the card may still be there: wait it out
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
    """The city card CA certificate as DER; KioskConfigError names the file when it cannot be."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KioskConfigError(f"--ca-cert: cannot read {path}: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError:
        raise KioskConfigError(f"--ca-cert: {path} is not a certificate") from None


def check_files(config: KioskConfig) -> None:
    """The certificate files the kiosk needs can be read (KioskConfigError names the one that
    cannot), so a wrong path stops the kiosk at start with one line."""
    _read_certificate(config.ca_certificate)
    if config.server_ca is not None and not Path(config.server_ca).is_file():
        raise KioskConfigError(f"--server-ca: {config.server_ca} does not exist")
    if config.server_pin:
        try:
            normalise_pin(config.server_pin)
        except ServerTrustError as exc:
            raise KioskConfigError(f"--server-pin: {exc}") from None


RUN_ENVIRONMENT = """environment (each sets the option's default):
  ONECARD_KIOSK_ID           --kiosk-id (required: no default)
  ONECARD_SERVER_URL         --server
  ONECARD_SERVER_CA          --server-ca
  ONECARD_SERVER_PIN         --server-pin
  ONECARD_KIOSK_DIR          --data-dir
  ONECARD_BOARD_DEVICE       --board
  ONECARD_BOARD_PROTOCOL     --board-protocol
  ONECARD_CARD_CA_CERT       --ca-cert
  ONECARD_READER             --reader
  ONECARD_SLOT               --slot
  ONECARD_SCREEN_PORT        --screen-port
  ONECARD_SPEECH_WAV_DIR     speech to WAV files there instead of the sound card
  ONECARD_SERVER_PUBLIC_KEY  --server-key
  ONECARD_HEARTBEAT_EVERY_S  --heartbeat-every
  ONECARD_LOG_LEVEL          log level (DEBUG, INFO, WARNING; default INFO)

exit status: 0 stopped, 2 configuration error, 3 a device (board, card reader) is missing"""


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="onecard kiosk", description="The kiosk software.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser(
        "run",
        help="wait for cards and serve them",
        description="Wait for cards on the reader and serve them: verify, authorize, dispense.",
        epilog=RUN_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kiosk_id = env("ONECARD_KIOSK_ID")
    run_p.add_argument(
        "--kiosk-id",
        default=kiosk_id,
        required=not kiosk_id,
        help="this kiosk's id, as registered at the server (e.g. K-0001)",
    )
    run_p.add_argument(
        "--server",
        default=env("ONECARD_SERVER_URL", "http://127.0.0.1:8080"),
        help="the server's base URL (https://... in production)",
    )
    run_p.add_argument(
        "--server-ca",
        type=Path,
        default=env("ONECARD_SERVER_CA"),
        help="the CA certificate (PEM) that signed the server's TLS certificate "
        "(default: the system's trust store)",
    )
    run_p.add_argument(
        "--server-pin",
        default=env("ONECARD_SERVER_PIN"),
        help="optional: the SHA-256 (hex) of the server's TLS certificate, pinned on top of "
        "the CA check (change it when the certificate is renewed)",
    )
    run_p.add_argument(
        "--data-dir",
        type=Path,
        default=env("ONECARD_KIOSK_DIR", "var/kiosk"),
        help="the device key, the journal and the signed configuration",
    )
    board = env("ONECARD_BOARD_DEVICE")
    run_p.add_argument(
        "--board",
        default=board,
        required=not board,
        help="serial device of the controller board (e.g. /dev/ttyUSB0)",
    )
    run_p.add_argument(
        "--board-protocol",
        default=env("ONECARD_BOARD_PROTOCOL", "onecard-v1"),
        help="the board's protocol: onecard-v1 or modbus-rtu",
    )
    ca_cert = env("ONECARD_CARD_CA_CERT")
    run_p.add_argument(
        "--ca-cert",
        type=Path,
        default=ca_cert,
        required=not ca_cert,
        help="the city card CA certificate (PEM or DER)",
    )
    run_p.add_argument(
        "--reader", default=env("ONECARD_READER"), help="PC/SC reader name (default: any)"
    )
    run_p.add_argument(
        "--slot",
        type=int,
        default=env("ONECARD_SLOT"),
        help="a kiosk without a screen: every tap takes this slot "
        "(default: the touch screen, every slot, the resident chooses)",
    )
    run_p.add_argument(
        "--screen-port",
        type=int,
        default=env("ONECARD_SCREEN_PORT", "8765"),
        help="the touch screen's page on http://127.0.0.1:PORT/ (0: any free port)",
    )
    run_p.add_argument(
        "--server-key",
        default=env("ONECARD_SERVER_PUBLIC_KEY"),
        help="base64 Ed25519 key that signs configurations (default: pinned on first use)",
    )
    run_p.add_argument(
        "--heartbeat-every",
        type=float,
        default=env("ONECARD_HEARTBEAT_EVERY_S", str(HEARTBEAT_EVERY_S)),
        help="seconds between heartbeats",
    )
    key_p = sub.add_parser(
        "keygen",
        help="create the device key if needed and print its public key",
        epilog="environment:\n  ONECARD_KIOSK_DIR  --data-dir",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    key_p.add_argument(
        "--data-dir",
        type=Path,
        default=env("ONECARD_KIOSK_DIR", "var/kiosk"),
        help="where the device key is kept",
    )
    return parser


def configure_logging() -> None:
    """Log lines to standard output with time, level and logger (journald keeps them)."""
    level = os.environ.get("ONECARD_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=sys.stdout,
        level=level if level in logging.getLevelNamesMapping() else logging.INFO,
        format=LOG_FORMAT,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        print(public_key_b64(load_or_create_device_key(args.data_dir)))
        return 0
    configure_logging()
    config = KioskConfig(
        kiosk_id=args.kiosk_id,
        server_url=args.server,
        data_dir=args.data_dir,
        board_device=args.board,
        board_protocol=args.board_protocol,
        ca_certificate=args.ca_cert,
        reader=args.reader,
        slot=args.slot,
        screen_port=args.screen_port,
        speech_wav_dir=Path(os.environ["ONECARD_SPEECH_WAV_DIR"])
        if os.environ.get("ONECARD_SPEECH_WAV_DIR")
        else None,
        server_key=args.server_key,
        server_ca=args.server_ca,
        server_pin=args.server_pin,
        heartbeat_every_s=args.heartbeat_every,
    )
    try:
        check_files(config)
    except KioskConfigError as exc:
        print(f"onecard kiosk: configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"kiosk {config.kiosk_id} ready: waiting for cards, server {config.server_url}", flush=True
    )
    try:
        run(config, stop=stop)
    except KeyboardInterrupt:
        return 0
    except KioskConfigError as exc:
        print(f"onecard kiosk: configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except ValueError as exc:  # an unknown board protocol
        print(f"onecard kiosk: configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except BoardError as exc:
        print(f"onecard kiosk: board {config.board_device}: {exc}", file=sys.stderr)
        return EXIT_DEVICE
    except CardError as exc:
        print(f"onecard kiosk: {exc}", file=sys.stderr)
        return EXIT_DEVICE
    return 0
