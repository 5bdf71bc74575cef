"""Shared test set-up: the fixtures of each joint live in tests/fixtures/ as plugins.

The tests run the server in development mode, also on PostgreSQL (where production mode is the
default and refuses to start without every secret configured); the tests of production mode
set ONECARD_PRODUCTION themselves (tests/test_ops_production.py).
"""

import os

os.environ.setdefault("ONECARD_PRODUCTION", "0")

pytest_plugins = [
    "tests.fixtures.pcscd",
    "tests.fixtures.board",
    "tests.fixtures.database",
]
