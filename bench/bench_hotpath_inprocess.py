"""The kiosk hot path in one process: CPU per authorize + capture through the WSGI app.

No sockets, no gunicorn, no second process: a signed authorize and its capture sent through
Flask's test client to the application on SQLite, the way the request framework, the contracts,
the services and the ledger run them. This isolates the server's own code from the machine's
other work better than the HTTP benchmark (bench/bench_server.py), so a change to the request
path shows here first. The figure includes the test kiosk's own signing (the same for any
server version), so compare versions, not absolute numbers.

    .venv/bin/python bench/bench_hotpath_inprocess.py [--pairs 300] [--rounds 5]

For an exact comparison between two versions, count instructions instead of time (repeatable
whatever else the machine does), and take the difference of two pair counts so start-up cancels:

    valgrind --tool=callgrind --callgrind-out-file=a0 python bench/bench_hotpath_inprocess.py --pairs 0 --rounds 1
    valgrind --tool=callgrind --callgrind-out-file=a1 python bench/bench_hotpath_inprocess.py --pairs 100 --rounds 1
    # (summary of a1 - summary of a0) / 100 = instructions per authorize + capture
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ONECARD_PRODUCTION", "0")

from sqlalchemy import update  # noqa: E402

from server.store.migrate import upgrade  # noqa: E402
from server.store.models import EntitlementRule  # noqa: E402
from tests.fixtures.database import ServerWorld  # noqa: E402

WARM_UP = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-hotpath-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        world = ServerWorld(url, Path(tmp) / "data")
        with world.sessionmaker() as session:  # an allowance the bench never exhausts
            session.execute(update(EntitlementRule).values(units=10**6))
            session.commit()
        world.ctx.rules_cache.clear()

        def pair() -> None:
            answer = world.authorize().get_json()
            assert answer["approved"], answer
            assert world.capture(answer["authorization_id"]).status_code == 200

        for _ in range(WARM_UP if args.pairs else 0):
            pair()
        cpu, wall = [], []
        for _ in range(args.rounds):
            started_cpu, started = time.process_time(), time.perf_counter()
            for _ in range(args.pairs):
                pair()
            if args.pairs:
                cpu.append((time.process_time() - started_cpu) / args.pairs * 1000)
                wall.append((time.perf_counter() - started) / args.pairs * 1000)
        world.close()
    if cpu:
        print(
            f"authorize + capture in process (SQLite, {args.pairs} pairs x {args.rounds} rounds): "
            f"CPU median {statistics.median(cpu):.2f} ms (min {min(cpu):.2f}), "
            f"wall median {statistics.median(wall):.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
