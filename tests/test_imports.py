"""Who may import whom (../shared/ARCHITECTURE.md, docs/interfaces.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level modules it must not import
FORBIDDEN = {
    "firmware_protocols": {
        "cardsvc",
        "kiosk",
        "server",
        "onecard",
        "flask",
        "sqlalchemy",
        "smartcard",
    },
    "cardsvc": {"server", "kiosk", "firmware_protocols", "onecard", "flask", "sqlalchemy"},
    "kiosk": {"server", "onecard", "flask", "sqlalchemy", "smartcard"},
    "server": {"kiosk", "onecard", "firmware_protocols", "smartcard", "serial"},
}
# Of our own packages, the server may use only these pure modules of cardsvc.
SERVER_MAY_USE_FROM_CARDSVC = {
    "cardsvc.verify",
    "cardsvc.requestsig",
    "cardsvc.errors",
    "cardsvc.ca",
    "cardsvc.profile",
    "cardsvc.tlv",
}
# Modules allowed to touch a device library directly.
ONLY_IMPORTER = {"smartcard": {"cardsvc/pcsc.py"}, "serial": {"kiosk/serial_link.py"}}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a import b` may import the module a.b: name each imported thing in full.
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in imports_of(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert bad == []


def test_server_uses_only_pure_cardsvc_modules() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("server")
        for name in imports_of(path)
        if name.split(".")[0] == "cardsvc"
        and not any(name == ok or name.startswith(ok + ".") for ok in SERVER_MAY_USE_FROM_CARDSVC)
    ]
    assert bad == []


@pytest.mark.parametrize("library", sorted(ONLY_IMPORTER))
def test_device_library_is_imported_in_one_module(library: str) -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ("cardsvc", "kiosk", "server", "onecard")
        for path in sources(package)
        if any(name.split(".")[0] == library for name in imports_of(path))
    }
    assert importers == ONLY_IMPORTER[library]
