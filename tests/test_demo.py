"""The demo walk itself, as `make demo` runs it: every part a real process on a real joint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.pcscd
def test_demo_once_walks_to_the_monthly_limit(tmp_path: Path, pcscd: object) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onecard.cli",
            "demo",
            "--once",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    visits = re.findall(r"^Visit (\d+):", out, re.M)
    outcomes = re.findall(r"^  => (\w+):", out, re.M)
    # The seeded rule allows 3 a month: three dispenses, then the refusal.
    assert outcomes == ["dispensed", "dispensed", "dispensed", "refused"], out
    assert visits == ["1", "2", "3", "4"]
    assert re.findall(r"slot stock left: (\d+)", out) == ["9", "8", "7"]
    assert "allowance left: condoms 0" in out
    # The kiosk offers the demo catalogue in three slots; the last visit finds no condom left
    # to take, while the lubricant's own allowance is untouched.
    offered = re.findall(r"^  offered\s+(.*)$", out, re.M)
    assert len(offered) == 4, out
    for sku in ("slot 1 CONDOM-STD-1", "slot 2 CONDOM-THIN-1", "slot 3 LUBE-1"):
        assert sku in offered[0], offered[0]
    assert "condoms (0 left): slot 1 CONDOM-STD-1 (not now)" in offered[-1], offered[-1]
    assert "lubricant (2 left): slot 3 LUBE-1" in offered[-1], offered[-1]
    for step in ("read card", "card proves", "verify offline", "authorize", "dispense", "settle"):
        assert re.search(rf"^  {step}\s+\d+\.\d ms", out, re.M), f"no timed step {step!r}"
    assert "onecard demo: OK" in out


@pytest.mark.pcscd
def test_demo_says_what_failed_when_the_data_dir_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onecard.cli",
            "demo",
            "--once",
            "--data-dir",
            str(blocker / "demo"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "onecard demo: FAILED" in proc.stderr


@pytest.mark.pcscd
def test_demo_stays_up_until_interrupted_and_stops_what_it_started(
    tmp_path: Path, pcscd: object
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "onecard.cli", "demo", "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        out = "".join(lines)
        assert "Press Ctrl-C" in out, out
        board_pid = int(re.search(r"simulator pid (\d+)", out).group(1))  # type: ignore[union-attr]
        assert re.search(r"server\s+http://127\.0\.0\.1:\d+", out)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "onecard demo: OK" in rest
    with pytest.raises(ProcessLookupError):
        os.kill(board_pid, 0)  # the board simulator it started is gone
