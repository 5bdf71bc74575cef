"""The `onecard` console script: one entry point, a subcommand per part of the platform.

Each part owns its own argument parsing (`main(argv)` in its package); this module only routes,
and imports a part when its subcommand is asked for, so `onecard board-sim` starts without
loading Flask or pyscard.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "onecard.demo",
        "the whole platform on its embedded default, walking a resident's visits",
    ),
    "server": (
        "server.cli",
        "the central server: run, init-db, seed-demo, add-kiosk, create-user, backup, restore",
    ),
    "kiosk": ("kiosk.app", "the kiosk: run, keygen"),
    "card": (
        "onecard.card",
        "technician card commands: provision [--batch], revoke, replace, renew, unblock-pin",
    ),
    "cardsvc serve": (
        "cardsvc.service",
        "the local card service for station and technician desks: serve",
    ),
    "card-sim": ("cardsvc.vpcd", "a virtual PIV card on pcscd's vpcd driver"),
    "board-sim": ("firmware_protocols.simulator", "a simulated vending-machine controller board"),
}


def version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    try:
        return metadata.version("onecard")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items())
    return (
        f"usage: onecard [--version] COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n"
        "`onecard COMMAND --help` lists a command's options and environment variables.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    if args[0] in ("--version", "-V", "version"):
        print(f"onecard {version()}")
        return 0
    name, rest = args[0], args[1:]
    if " ".join(args[:2]) in COMMANDS:  # a two-word command, such as `cardsvc serve`
        name, rest = " ".join(args[:2]), args[2:]
    if name not in COMMANDS:
        print(f"onecard: unknown command {name!r}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
