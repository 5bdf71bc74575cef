"""The operations pack (issue 13, part 4): deploy/systemd/'s units pass `systemd-analyze verify`
(with /opt/onecard pointed at this checkout, so every ExecStart must name a program that
exists), each EnvironmentFile has its example, each example names only variables the code
reads, and each timer starts a service that is there."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
INSTALL_PREFIX = "/opt/onecard"


def _unit_files() -> list[Path]:
    return sorted([*UNITS.glob("*.service"), *UNITS.glob("*.timer")])


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (scripts/system-deps.sh installs systemd)")
    assert _unit_files(), "no units in deploy/systemd"
    for unit in _unit_files():
        text = unit.read_text()
        (tmp_path / unit.name).write_text(text.replace(INSTALL_PREFIX, str(ROOT)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *sorted(p.name for p in tmp_path.iterdir())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Any line is a finding (unknown keys are only warned about, with exit status 0).
    assert (result.returncode, result.stderr.strip(), result.stdout.strip()) == (0, "", "")


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a unit naming a program that does not exist does not pass."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (scripts/system-deps.sh installs systemd)")
    text = (UNITS / "onecard-prune.service").read_text()  # left at /opt/onecard: not installed
    (tmp_path / "onecard-prune.service").write_text(text.replace(INSTALL_PREFIX, "/nonexistent"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", "onecard-prune.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "is not executable" in result.stderr


def test_each_environment_file_has_its_example_naming_only_known_variables() -> None:
    sources = "".join(
        path.read_text()
        for package in ("server", "kiosk", "cardsvc", "onecard")
        for path in (ROOT / package).rglob("*.py")
    )
    units = "".join(unit.read_text() for unit in _unit_files())
    for env_file in sorted(set(re.findall(r"^EnvironmentFile=/etc/onecard/(\S+)$", units, re.M))):
        example = UNITS / f"{env_file}.example"
        assert example.exists(), f"{env_file} has no example in deploy/systemd"
        for line in example.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            name = line.split("=", 1)[0]
            assert name in sources or f"${{{name}}}" in units, f"{example.name}: {name} is unused"


def test_each_timer_starts_a_service_that_exists() -> None:
    for timer in UNITS.glob("*.timer"):
        assert (UNITS / timer.name.replace(".timer", ".service")).exists(), timer.name
