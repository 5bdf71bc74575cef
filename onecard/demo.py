"""`onecard demo`: the whole platform on its embedded default, walking one resident's visits.

It starts every part for real (onecard.platform): the server over HTTP with SQLite, a simulated
controller board on a pseudo-terminal, pcscd and a virtual card on its vpcd driver; issues the
resident's card through pcscd; then runs the kiosk core in this process, tapping the card
(inserting and removing it at the virtual reader) until the monthly allowance is used up and the
refusal is shown. Every step is printed with its time in milliseconds.

Without --once it then stays up, saying where each part listens, until Ctrl-C. Everything it
started is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from cardsvc.errors import CardError
from kiosk.app import format_result, serve
from kiosk.tap import TapOutcome, TapResult
from onecard.platform import (
    KIOSK_ID,
    READER,
    SLOT,
    SLOT_STOCK,
    VPCD_PORT,
    Platform,
    PlatformError,
    start_platform,
)
from onecard.procs import ChildError

MAX_VISITS = 12


class DemoFailed(RuntimeError):
    """The walk did not go as the platform promises; the message says what failed."""


@dataclass
class Walk:
    results: list[TapResult] = field(default_factory=list)
    limit: int | None = None


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(data_dir: Path, once: bool) -> Walk:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    say(f"OneCard demo: data in {data_dir}/ (SQLite, a virtual card, a simulated board)")
    with start_platform(data_dir, say=say) as platform:
        walk = _walk(platform)
        if not once:
            _stay_up(platform)
        return walk


def _stay_up(p: Platform) -> None:
    stop = threading.Event()
    # Set both before saying "Press Ctrl-C", so a Ctrl-C right after it is already handled;
    # SIGINT explicitly too, since a demo started in the background inherits it ignored.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    say("")
    say("Everything is still running:")
    say(f"  server       {p.server_url}  (SQLite {p.data_dir / 'server.sqlite3'})")
    say(f"  board        {p.board_device}  (simulator pid {p.board_sim.pid})")
    say(f"  card         vpcd 127.0.0.1:{VPCD_PORT}, reader {READER!r}")
    say(f"  tap the card printf 'insert\\n' | nc 127.0.0.1 {p.card_control_port}   (then 'remove')")
    say("  kiosk        serving taps in this process")
    say("Press Ctrl-C to stop everything.")
    loop = threading.Thread(
        target=serve,
        args=(p.kiosk, p.reader, SLOT, stop, lambda r: say(format_result(r))),
        daemon=True,
    )
    loop.start()
    while not stop.is_set():
        stop.wait(0.5)
    say("\nstopping everything the demo started ...")
    loop.join(5)


def _walk(p: Platform) -> Walk:
    kiosk, card, reader = p.kiosk, p.card, p.reader
    walk = Walk(limit=p.seed.limit)
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
    parser.add_argument(
        "--data-dir", type=Path, default=Path("var/demo"), help="where the demo keeps its files"
    )
    args = parser.parse_args(argv)
    try:
        walk = run_demo(args.data_dir, args.once)
        check(walk)
    except (
        DemoFailed,
        PlatformError,
        ChildError,
        CardError,
        OSError,
        requests.RequestException,
    ) as exc:
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
