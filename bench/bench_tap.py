"""Benchmark: one tap at the kiosk, end to end, every joint real.

Starts the whole platform (onecard.platform: server over HTTP on SQLite, board simulator on a
pty, pcscd with a virtual card on vpcd) and taps the card repeatedly. The first taps dispense
until the monthly allowance is used up; the rest are refused. Prints the median and p95 of each
step for both kinds, and what share of a dispensing tap each joint takes.

Card detection is shown apart: it is pcscd's polling of the vpcd reader (a fixed 400 ms period
in pcsc-lite), not our code; a real CCID reader reports insertion by interrupt.

    .venv/bin/python bench/bench_tap.py [--refused 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from kiosk.tap import TapOutcome, TapResult
from onecard.platform import SLOT, Platform, start_platform
from onecard.procs import pcscd_running, start_pcscd


def tap(p: Platform) -> tuple[float, TapResult]:
    p.card.insert()
    start = time.perf_counter()
    connection = p.reader.wait_for_card(timeout=10)
    detected = (time.perf_counter() - start) * 1000
    assert connection is not None
    with connection:
        result = p.kiosk.serve_card(connection, SLOT)
    p.card.remove()
    p.reader.wait_for_removal(timeout=10)
    return detected, result


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"median {statistics.median(values):7.2f} ms  p95 {p95:7.2f} ms  (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refused", type=int, default=30, help="refused taps to time")
    args = parser.parse_args()
    own_pcscd = None if pcscd_running() else start_pcscd()
    try:
        with tempfile.TemporaryDirectory() as tmp, start_platform(Path(tmp) / "p") as p:
            steps: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            detect: list[float] = []
            for _ in range(p.seed.limit + args.refused):
                detected, result = tap(p)
                detect.append(detected)
                kind = "dispensed" if result.outcome is TapOutcome.DISPENSED else "refused"
                if result.outcome not in (TapOutcome.DISPENSED, TapOutcome.REFUSED):
                    raise SystemExit(f"unexpected tap outcome {result.outcome}: {result.message}")
                for s in result.steps:
                    steps[kind][s.name].append(s.ms)
                steps[kind]["total (after detection)"].append(result.total_ms)
            print(f"card detection (pcscd polling)  {summary(detect)}")
            for kind in ("dispensed", "refused"):
                print(f"{kind} taps:")
                for name, values in steps[kind].items():
                    print(f"  {name:<24} {summary(values)}")
            total = statistics.median(steps["dispensed"]["total (after detection)"])
            card = sum(
                statistics.median(steps["dispensed"][n])
                for n in ("read card", "card proves", "verify offline")
            )
            server = sum(statistics.median(steps["dispensed"][n]) for n in ("authorize", "settle"))
            board = statistics.median(steps["dispensed"]["dispense"])
            print(
                f"share of a dispensing tap: card {card / total:5.1%}, server {server / total:5.1%}, "
                f"board {board / total:5.1%}"
            )
    finally:
        if own_pcscd is not None:
            own_pcscd.stop()


if __name__ == "__main__":
    main()
