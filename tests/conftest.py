"""Shared test set-up: the fixtures of each joint live in tests/fixtures/ as plugins."""

pytest_plugins = [
    "tests.fixtures.pcscd",
    "tests.fixtures.board",
    "tests.fixtures.database",
]
