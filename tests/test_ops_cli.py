"""The command line as an operator meets it: one-line errors with exit codes instead of
tracebacks, `onecard --version`, a help text for every option, and each command's help listing
its environment variables (issue 13, part 1)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.database import CityCA

ROOT = Path(__file__).resolve().parent.parent


def onecard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`onecard ARGS` as its own process, with only the given ONECARD_* variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")}
    return subprocess.run(
        [sys.executable, "-m", "onecard.cli", *args],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version() -> None:
    result = onecard("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"onecard {__import__('onecard.cli').cli.version()}"
    assert result.stdout.split()[1][0].isdigit()


def test_kiosk_without_an_id_refuses_to_start(tmp_path: Path) -> None:
    result = onecard("kiosk", "run", "--board", "/dev/null", "--ca-cert", str(tmp_path / "ca"))
    assert result.returncode == 2
    assert "--kiosk-id" in result.stderr and "required" in result.stderr
    assert "Traceback" not in result.stderr


def test_kiosk_takes_its_id_from_the_environment(tmp_path: Path) -> None:
    """With ONECARD_KIOSK_ID set, the same command gets past the id (and stops at the CA)."""
    result = onecard(
        "kiosk",
        "run",
        "--board",
        "/dev/null",
        "--ca-cert",
        str(tmp_path / "missing-ca.pem"),
        env={"ONECARD_KIOSK_ID": "K-0042"},
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert "--ca-cert" in line and "missing-ca.pem" in line and "No such file" in line


def test_kiosk_with_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    result = onecard(
        "kiosk", "run", "--kiosk-id", "K-1", "--board", "/dev/null", "--ca-cert", str(junk)
    )
    assert result.returncode == 2
    assert "is not a certificate" in one_line_error(result)


def test_kiosk_with_a_missing_board_device(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = tmp_path / "ca.pem"
    ca.write_bytes(CityCA().certificate.public_bytes(Encoding.PEM))
    device = tmp_path / "ttyUSB9"
    result = onecard(
        "kiosk",
        "run",
        "--kiosk-id",
        "K-1",
        "--board",
        str(device),
        "--ca-cert",
        str(ca),
        "--data-dir",
        str(tmp_path / "kiosk"),
        "--server",
        "http://127.0.0.1:9",
    )
    assert result.returncode == 3
    line = one_line_error(result)
    assert line.startswith(f"onecard kiosk: board {device}:") and "cannot open" in line


def test_kiosk_with_a_malformed_environment_value(tmp_path: Path) -> None:
    result = onecard(
        "kiosk",
        "run",
        "--kiosk-id",
        "K-1",
        "--board",
        "/dev/null",
        "--ca-cert",
        "x",
        env={"ONECARD_HEARTBEAT_EVERY_S": "abc"},
    )
    assert result.returncode == 2
    assert "invalid float value: 'abc'" in result.stderr
    assert "Traceback" not in result.stderr


def test_kiosk_with_a_missing_server_ca(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = tmp_path / "ca.pem"
    ca.write_bytes(CityCA().certificate.public_bytes(Encoding.PEM))
    result = onecard(
        "kiosk",
        "run",
        "--kiosk-id",
        "K-1",
        "--board",
        "/dev/null",
        "--ca-cert",
        str(ca),
        env={"ONECARD_SERVER_CA": str(tmp_path / "proxy-ca.pem")},
    )
    assert result.returncode == 2
    assert "--server-ca" in one_line_error(result)


def _parsers(
    parser: argparse.ArgumentParser, name: str
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _parsers(sub, f"{name} {sub_name}")
    return found


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    import kiosk.app
    import onecard.card
    import server.cli

    parsers = _parsers(server.cli._parser(), "onecard server")
    parsers += _parsers(kiosk.app._parser(), "onecard kiosk")
    parsers += _parsers(onecard.card._parser(), "onecard card")
    return parsers


def test_every_option_has_a_help_text() -> None:
    missing = [
        f"{name}: {action.dest}"
        for name, parser in _all_parsers()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
        and not action.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("command", "variables"),
    [
        ("onecard kiosk run", ["ONECARD_KIOSK_ID", "ONECARD_SERVER_CA", "ONECARD_BOARD_DEVICE"]),
        ("onecard server run", ["ONECARD_DATABASE_URL", "ONECARD_PRODUCTION", "ONECARD_FIELD_KEY"]),
        ("onecard server backup", ["ONECARD_BACKUP_PASSPHRASE", "ONECARD_DATABASE_URL"]),
        ("onecard card revoke", ["ONECARD_SERVER_URL", "ONECARD_SERVER_CA", "ONECARD_TOKEN"]),
    ],
)
def test_help_lists_the_environment(command: str, variables: list[str]) -> None:
    """What `COMMAND --help` prints (the parser's own help text, built in this process)."""
    (parser,) = [parser for name, parser in _all_parsers() if name == command]
    text = parser.format_help()
    for variable in variables:
        assert variable in text, (variable, text)


def test_readme_lists_every_environment_variable() -> None:
    import re

    mentioned = set()
    for source in [*(ROOT / "server").rglob("*.py"), *(ROOT / "kiosk").glob("*.py")]:
        mentioned |= set(re.findall(r"\bONECARD_[A-Z0-9_]+\b", source.read_text()))
    mentioned -= {"ONECARD_CARD_CA_DER", "ONECARD_CLOCK"}  # test overrides, not settings
    readme = (ROOT / "README.md").read_text() + (ROOT / "server" / "README.md").read_text()
    assert sorted(v for v in mentioned if v not in readme) == []


def test_kiosk_with_a_malformed_server_pin(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = tmp_path / "ca.pem"
    ca.write_bytes(CityCA().certificate.public_bytes(Encoding.PEM))
    result = onecard(
        "kiosk",
        "run",
        "--kiosk-id",
        "K-1",
        "--board",
        "/dev/null",
        "--ca-cert",
        str(ca),
        env={"ONECARD_SERVER_PIN": "ab:cd"},
    )
    assert result.returncode == 2
    assert one_line_error(result).startswith("onecard kiosk: configuration: --server-pin:")
