"""Shared test set-up: the fixtures of each joint live in tests/fixtures/ as plugins.

The tests run the server in development mode, also on PostgreSQL (where production mode is the
default and refuses to start without every secret configured); the tests of production mode
set ONECARD_PRODUCTION themselves (tests/test_ops_production.py).
"""

import os

from hypothesis import settings

os.environ.setdefault("ONECARD_PRODUCTION", "0")

# Property tests check what the code does, not how fast: hypothesis's default 200 ms deadline per
# example is a timed assertion, and it failed on a shared, loaded 2-core machine (a pure parse
# that takes microseconds). A test that guards against hangs sets its own deadline.
settings.register_profile("onecard", deadline=None)
settings.load_profile("onecard")

pytest_plugins = [
    "tests.fixtures.pcscd",
    "tests.fixtures.board",
    "tests.fixtures.database",
]
