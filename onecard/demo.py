"""`onecard demo`: the whole platform on its embedded default, walking one resident's visits.

It starts every part for real (onecard.platform): the server over HTTP with SQLite, a simulated
controller board on a pseudo-terminal, pcscd and a virtual card on its vpcd driver; issues the
resident's card through pcscd; then runs the kiosk core with its touch screen in this process
(the page's address is printed: open it in a browser to watch), tapping the card (inserting and
removing it at the virtual reader) and choosing on the screen as a resident would, until the
monthly allowance is used up and the choice screen says so with the next date. The kiosk
offers the demo catalogue in three slots (two condoms, a lubricant: server.demo); each visit
prints what the choice screen offers, and the resident takes the standard condom of slot
SLOT. Every step is printed with its time in milliseconds.

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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from cardsvc.errors import CardError
from kiosk.app import ScreenKiosk, format_result, open_screen, serve
from kiosk.config_sync import ConfigSync
from kiosk.screen.render import NONE_LEFT
from kiosk.screen.words import phrase
from kiosk.session import Screen
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
RESULT_SHOWN_S = 1.5  # how long the demo's result screens stay after the card has left
SCREEN_WAIT_S = 30.0


class DemoFailed(RuntimeError):
    """The walk did not go as the platform promises; the message says what failed."""


@dataclass
class Walk:
    results: list[TapResult] = field(default_factory=list)
    limit: int | None = None


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(data_dir: Path, once: bool, screen_port: int = 0) -> Walk:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    say(f"OneCard demo: data in {data_dir}/ (SQLite, a virtual card, a simulated board)")
    with start_platform(data_dir, say=say) as platform, ExitStack() as stack:
        stop = threading.Event()
        results: list[TapResult] = []
        screen = _open_screen(stack, platform, stop, results, screen_port)
        say(f"  kiosk screen {screen.screen.url}  (open it in a browser to watch the taps)")
        loop = threading.Thread(
            target=serve,
            args=(platform.kiosk, platform.reader, 0, stop, results.append),
            kwargs={"say": lambda text: None, "attendant": screen.attendant},
            daemon=True,
        )
        loop.start()
        try:
            walk = _walk(platform, screen, results)
            if not once:
                _stay_up(platform, screen, results, stop)
        finally:
            stop.set()
            loop.join(10)
        return walk


def _open_screen(
    stack: ExitStack, p: Platform, stop: threading.Event, results: list[TapResult], port: int
) -> ScreenKiosk:
    """The kiosk's screen around the platform's kiosk core, as `onecard kiosk run` builds it."""
    signed = ConfigSync(p.client, p.device_key_dir, KIOSK_ID)
    signed.refresh()
    return open_screen(
        stack,
        p.kiosk,
        p.board,
        p.client,
        p.reader,
        lambda: signed.current.slots if signed.current is not None else {},
        port=port,
        stop=stop,
        report=results.append,
        result_min_s=RESULT_SHOWN_S,
    )


# The staff pages, by who uses them (sign in first at /sign-in with a demo sign-in).
STAFF_PAGES = (
    ("everyone", "/sign-in", "sign in, then your role's home page"),
    ("nurse", "/station", "the station desk (taps need `onecard cardsvc serve` on the desk)"),
    ("nurse", "/nurse/appointments", "appointments per station and day"),
    ("technician", "/technician/enrol", "enrol a resident"),
    ("technician", "/technician/residents", "find a resident (masked ID numbers, audited)"),
    ("administrator", "/admin/users", "staff users, roles and areas"),
    ("administrator", "/admin/rules", "entitlement rules of the area"),
    ("administrator", "/admin/regions", "the region tree, CSV import"),
    ("administrator", "/admin/stations", "stations and kiosks"),
    ("administrator", "/admin/catalogue", "products, categories, exam programmes"),
    ("administrator", "/fleet", "every kiosk's state, map, alerts, restock list"),
    ("administrator", "/reports", "reports with plots, CSV and DHIS2 export"),
    ("auditor", "/audit", "the audit log, the chain verified on demand"),
    ("scripts", "/api/v1/openapi.json", "the JSON API's document"),
)


def say_staff_pages(server_url: str, sign_ins: tuple[tuple[str, str, str], ...]) -> None:
    say("  staff pages (Simplified Chinese first; English one click away):")
    for who, path, what in STAFF_PAGES:
        say(f"    {server_url}{path:<24} {who:<14} {what}")
    say("  demo sign-ins (name / password):")
    for name, role, password in sign_ins:
        say(f"    {role:<14} {name} / {password}")


def _stay_up(
    p: Platform, screen: ScreenKiosk, results: list[TapResult], stop: threading.Event
) -> None:
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
    say(f"  kiosk        serving taps in this process; its screen: {screen.screen.url}")
    say_staff_pages(p.server_url, p.seed.staff)
    say("Press Ctrl-C to stop everything.")
    shown = len(results)
    while not stop.is_set():
        stop.wait(0.5)
        for result in results[shown:]:
            say(format_result(result))
        shown = len(results)
    say("\nstopping everything the demo started ...")


def _wait_for(screen: ScreenKiosk, *screens: Screen) -> Screen:
    deadline = time.monotonic() + SCREEN_WAIT_S
    while (now := screen.session.screen) not in screens:
        if time.monotonic() > deadline:
            raise DemoFailed(f"the screen stayed on {now}, expected {', '.join(screens)}")
        time.sleep(0.01)
    return now


def _walk(p: Platform, screen: ScreenKiosk, results: list[TapResult]) -> Walk:
    """Each visit: the card on the reader, the resident chooses slot SLOT on the screen (as a
    touch on the page would), takes the item and the card; the last visit finds none left."""
    walk = Walk(limit=p.seed.limit)
    for visit in range(1, MAX_VISITS + 1):
        say("")
        say(f"Visit {visit}: the resident taps the card at kiosk {KIOSK_ID}")
        start = time.perf_counter()
        served = len(results)
        p.card.insert()
        _wait_for(screen, Screen.CHECKING, Screen.CHOOSING, Screen.REFUSED, Screen.FAULT)
        detected = (time.perf_counter() - start) * 1000
        say(
            f"  {'card detected':<15} {detected:8.1f} ms  inserted at the virtual reader, seen by the kiosk"
        )
        shown = _wait_for(screen, Screen.CHOOSING, Screen.REFUSED, Screen.FAULT)
        on_screen = (time.perf_counter() - start) * 1000
        say(
            f"  {'choice on screen':<15} {on_screen:8.1f} ms  card to the choice, as the screen shows it"
        )
        result = _visit(screen, shown, results, served)
        p.card.remove()
        _wait_for(screen, Screen.IDLE)
        say(format_result(result))
        say(f"  {'total':<15} {result.total_ms + detected:8.1f} ms")
        walk.results.append(result)
        if result.outcome is not TapOutcome.DISPENSED:
            break
    return walk


def _visit(screen: ScreenKiosk, shown: Screen, results: list[TapResult], served: int) -> TapResult:
    session = screen.session
    if shown is Screen.CHOOSING:
        categories = session.snapshot().view["categories"]
        say(f"  {'offered':<15} {offered(categories)}")
        offer = next((o for c in categories for o in c["offers"] if o["slot"] == SLOT), None)
        category = next((c for c in categories if offer in c["offers"]), None)
        if offer is None or category is None:
            raise DemoFailed(f"slot {SLOT} is not offered on the screen")
        if not offer["may_take"]:
            # The screen says none is left and when more is allowed: the resident goes.
            session.post({"action": "cancel"})
            return TapResult(
                TapOutcome.REFUSED,
                [phrase(NONE_LEFT, date=category["next_allowed_on"])],
                reason=category["reason"],
                remaining={category["category"]: category["left"]},
                next_allowed_on=category["next_allowed_on"],
            )
        session.post({"action": "choose", "slot": SLOT})
        _wait_for(screen, Screen.TAKE_ITEM, Screen.REFUSED, Screen.FAULT, Screen.REMOVE_CARD)
    if len(results) <= served:
        raise DemoFailed(f"the kiosk served no transaction; the screen shows {session.screen}")
    return results[-1]


def offered(categories: list[dict[str, Any]]) -> str:
    """What the choice screen offers, per category: what is left to take, and each slot's
    product with whether it may be taken now."""
    parts = []
    for c in categories:
        offers = ", ".join(
            f"slot {o['slot']} {o['sku']}"
            + ("" if o["may_take"] else " (out of stock)" if not o["in_stock"] else " (not now)")
            for o in c["offers"]
        )
        parts.append(f"{c['category']} ({c['left']} left): {offers}")
    return "; ".join(parts)


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
    parser.add_argument(
        "--screen-port",
        type=int,
        default=0,
        help="the kiosk screen's port on 127.0.0.1 (default: any free port; the address is printed)",
    )
    args = parser.parse_args(argv)
    try:
        walk = run_demo(args.data_dir, args.once, args.screen_port)
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
