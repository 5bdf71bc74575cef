"""`onecard kiosk run` as its own process, on the real platform: taps in, outcomes out."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from onecard.platform import Platform, start_platform
from onecard.procs import Child

pytestmark = pytest.mark.pcscd


def outcomes(kiosk: Child) -> list[str]:
    return [m.group(1) for line in list(kiosk.lines) if (m := re.match(r"  => (\w+):", line))]


def wait_for_outcomes(kiosk: Child, n: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(outcomes(kiosk)) < n:
        assert kiosk.proc.poll() is None, f"the kiosk exited: {kiosk.tail()}"
        assert time.monotonic() < deadline, f"no outcome {n} in {timeout} s: {kiosk.tail()}"
        time.sleep(0.05)
    return outcomes(kiosk)


def start_kiosk(p: Platform) -> Child:
    kiosk = Child("kiosk", p.kiosk_run_argv())
    kiosk.wait_for_line(r"ready: waiting for cards", 30)
    return kiosk


def test_kiosk_process_serves_taps_until_the_limit(tmp_path: Path, pcscd: object) -> None:
    with start_platform(tmp_path / "p", kiosk=False) as p:
        kiosk = start_kiosk(p)
        try:
            for visit in range(1, p.seed.limit + 2):
                p.card.insert()
                seen = wait_for_outcomes(kiosk, visit)
                p.card.remove()
            assert seen == ["dispensed"] * p.seed.limit + ["refused"]
            assert any("allowance left: condoms 0" in line for line in kiosk.lines)
        finally:
            kiosk.stop()
        assert kiosk.proc.returncode == 0, kiosk.tail()  # SIGTERM is a clean stop
