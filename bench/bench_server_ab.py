"""This tree against another version over real HTTP: both served at once, loaded in rounds.

bench/bench_server.py times one version; on this shared 2-core machine its figures move by up to
a quarter between identical runs, so two separate runs cannot show a difference of a few percent.
Here both versions run side by side, each from its own tree (the other in a temporary git
worktree), each with its own PostgreSQL database seeded by its own code, each under gunicorn as
in production (server.gunicorn_config, 2 workers x 4 threads by default). In each round the same
64 kiosks load both servers at the same moment: each has about half the machine, and whatever
else the machine does falls on both (the figures compare the two, not a lone server's).
Every 4 rounds both servers are started anew: two servers of the same code (`--baseline HEAD`)
differed by 1.4% in CPU per pair when each kept one process for all its rounds, because a
process's hash seeds and memory layout set its speed for its whole life; with restarts, 0.1%.

Each server writes its JSON request lines to a file, as production writes them to journald's
pipe (a server whose standard output is /dev/null would hide the logging's cost).

It prints, per round and as medians: authorizations/s, the server's CPU per authorize + capture
pair and the kernel's share of it; then the median of the per-round ratios (this tree /
baseline) with a distribution-free 95% interval.

    .venv/bin/python bench/bench_server_ab.py [--baseline GIT-REF] [--rounds 32] [--seconds 5]
        [--restart-every 4] [--alternate] [--clients 64] [--workers 2] [--threads 4]
        [--env NAME=VALUE ...]

The baseline defaults to the code before the request framework was rebuilt (issue 9).
`--alternate` loads one server, then the other, each alone (the order swapped every round):
figures comparable with bench_server.py's, but a disturbance then falls on one side only.
`--env` sets a variable for this tree's server only (e.g. ONECARD_LOG_LEVEL=WARNING, to see what
the request lines cost).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_server as bench  # noqa: E402  (this tree's load generator and CPU reading)
from bench_worker_instructions import throwaway_ca_and_env, tree_bench_server  # noqa: E402

WARM_SECONDS = 3.0
# Loaded together, both load generators start their clocks at one moment this far ahead, after
# their own start-up and signing (a generator that is late says so).
START_MARGIN = 2.0
# The last commit before the request framework and contracts were rebuilt (issue 9): the "before"
# that the kiosk hot path must not be slower than.
BEFORE_CONTRACTS = "57aa8e8"


def serve(tree: Path, out: Path, clients: int, workers: int, threads: int) -> None:
    """In a child process whose path starts with `tree`: seed a database with the tree's own
    code, start its server, write {spec, pid, generation} to `out`; restart it on each line read
    from stdin, stop when stdin closes."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    os.environ.setdefault("ONECARD_PRODUCTION", "0")
    b = tree_bench_server(tree)

    with tempfile.TemporaryDirectory(prefix="onecard-ab-") as tmp_name:
        tmp = Path(tmp_name)
        ca, env = throwaway_ca_and_env(tmp)
        pg = b.postgres_database()
        if pg is None:
            raise SystemExit("PostgreSQL: not reachable at 127.0.0.1:5432")
        try:
            kiosks = b.prepare(pg.url, env, ca, clients, cards_per_kiosk=4)
            server_env = {**os.environ, **env, "ONECARD_DATABASE_URL": pg.url}
            # One gunicorn after another on the same database: the parent writes a line to
            # restart it (a new process: new hash seeds, new memory layout), closes to stop.
            generation = 0
            while True:
                port = b.free_port()
                with open(tmp / "requests.log", "ab") as log:
                    server = subprocess.Popen(
                        b.gunicorn_command(port, workers, threads),
                        env=server_env,
                        stdout=log,
                        stderr=subprocess.DEVNULL,
                    )
                try:
                    _wait_up(server, port, tree)
                    spec = {"host": "127.0.0.1", "port": port, "kiosks": kiosks}
                    started = {"spec": spec, "pid": server.pid, "generation": generation}
                    out.write_text(json.dumps(started))
                    if not sys.stdin.readline():  # closed: the rounds are done
                        return
                    kiosks = json.loads(out.read_text())["spec"]["kiosks"]  # their counters
                finally:
                    server.terminate()
                    server.wait(30)
                generation += 1
        finally:
            assert pg.pg_user and pg.pg_name
            b.drop_postgres_database(pg.pg_user, pg.pg_name)


def _wait_up(server: subprocess.Popen[bytes], port: int, tree: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server in {tree} did not start") from None
            time.sleep(0.1)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median (order statistics: the number of rounds below
    the true median is binomial, n and 1/2). With fewer than 6 rounds it is the whole range."""
    ordered = sorted(values)
    n = len(ordered)
    tail, k = 0.0, 0
    while k < n // 2:
        below = math.comb(n, k) / 2**n  # P(exactly k rounds below the median)
        if tail + below > (1 - confidence) / 2:
            break
        tail += below
        k += 1
    return ordered[max(k - 1, 0)], ordered[min(n - k, n - 1)]


class Side:
    """One version's server, as the parent drives it."""

    def __init__(
        self, label: str, tree: Path, tmp: Path, args: argparse.Namespace, env: dict[str, str]
    ):
        self.label = label
        self.ready = tmp / f"{label}.json"
        self.spec_path = tmp / f"{label}.spec.json"
        self.child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(tree),
                str(self.ready),
                str(args.clients),
                str(args.workers),
                str(args.threads),
            ],
            stdin=subprocess.PIPE,
            env={**os.environ, **env, "PYTHONPATH": str(tree)},
            cwd=tree,  # gunicorn puts its working directory first on the path
        )
        self.rates: list[float] = []
        self.cpu_per_pair: list[float] = []
        self.system_shares: list[float] = []

    def wait_ready(self, after: int = -1) -> None:
        """Until the child reports a server of a generation later than `after`."""
        deadline = time.monotonic() + 600
        while True:
            if self.child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: the server did not come up")
            try:
                started = json.loads(self.ready.read_text())
                if started["generation"] > after:
                    break
            except (OSError, ValueError):  # not written yet, or being written
                pass
            time.sleep(0.2)
        self.spec: dict[str, Any] = started["spec"]
        self.pid: int = started["pid"]
        self.generation: int = started["generation"]

    def restart(self) -> None:
        """A new gunicorn on the same database; the kiosks' counters carry over."""
        assert self.child.stdin is not None
        handed = {"spec": self.spec, "pid": self.pid, "generation": self.generation}
        self.ready.write_text(json.dumps(handed))
        self.child.stdin.write(b"restart\n")
        self.child.stdin.flush()
        self.wait_ready(after=self.generation)

    def run(self, seconds: float, start_at: float = 0.0) -> dict[str, Any]:
        self.spec_path.write_text(json.dumps({**self.spec, "start_at": start_at}))
        before = bench.cpu_split_of_tree(self.pid)
        result = bench.load(self.spec_path, "kiosk", seconds)
        after = bench.cpu_split_of_tree(self.pid)
        cpu, system = sum(after) - sum(before), after[1] - before[1]
        if result["errors"]:
            raise RuntimeError(f"{self.label}: kiosk errors: {result['errors'][:3]}")
        if result.get("late_seconds"):
            print(f"  ({self.label}'s load started {result['late_seconds']:.2f} s late)")
        for kiosk in self.spec["kiosks"]:
            kiosk["counter"] = result["counters"][kiosk["id"]]
        pairs = len(result["capture_ms"])
        result["rate"] = len(result["authorize_ms"]) / result["elapsed"]
        result["cpu_per_pair_ms"] = 1000 * cpu / pairs if pairs else float("nan")
        result["system_share"] = system / cpu if cpu else float("nan")
        return result

    def stop(self) -> None:
        if self.child.stdin:
            self.child.stdin.close()
        self.child.wait(120)


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "--serve":
        _, _, tree, out, clients, workers, threads = sys.argv
        serve(Path(tree), Path(out), int(clients), int(workers), int(threads))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default=BEFORE_CONTRACTS, help="the git ref to compare against"
    )
    parser.add_argument("--rounds", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--restart-every",
        type=int,
        default=4,
        metavar="N",
        help="restart both servers every N rounds (a process's hash seeds and memory layout move"
        " its speed by a percent or two: restarts spread that over both versions)",
    )
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="load one server, then the other, each alone (default: both at the same time)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for this tree's server"
    )
    args = parser.parse_args()
    own_env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="onecard-ab-") as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
            check=True,
            capture_output=True,
        )
        sides: list[Side] = []
        try:
            sides = [Side("now", ROOT, tmp, args, own_env), Side("before", tree, tmp, args, {})]
            for side in sides:
                side.wait_ready()
                side.run(WARM_SECONDS)
            now, before = sides
            how = "both at once" if not args.alternate else "alternating"
            print(
                f"this tree against {args.baseline}: {args.rounds} rounds of {args.seconds:g} s each ({how}), "
                f"{args.clients} kiosks, gunicorn {args.workers} x {args.threads}, PostgreSQL"
                + (f"; this tree's server with {' '.join(args.env)}" if args.env else "")
            )
            print(
                "round  now auth/s  before auth/s  ratio   now CPU/pair  before CPU/pair  ratio"
                "   kernel's share now / before"
            )
            for i in range(args.rounds):
                if i and args.restart_every and i % args.restart_every == 0:
                    for side in sides:
                        side.restart()
                        side.run(WARM_SECONDS)
                if not args.alternate:
                    start_at = time.time() + START_MARGIN
                    with ThreadPoolExecutor(2) as pool:
                        runs = pool.map(Side.run, sides, [args.seconds] * 2, [start_at] * 2)
                        results = dict(zip(("now", "before"), runs, strict=True))
                else:
                    order = (now, before) if i % 2 == 0 else (before, now)
                    results = {side.label: side.run(args.seconds) for side in order}
                a, b = results["now"], results["before"]
                print(
                    f"{i + 1:>5}  {a['rate']:>10.1f}  {b['rate']:>13.1f}  {a['rate'] / b['rate']:.3f}"
                    f"  {a['cpu_per_pair_ms']:>10.2f} ms  {b['cpu_per_pair_ms']:>12.2f} ms"
                    f"  {a['cpu_per_pair_ms'] / b['cpu_per_pair_ms']:.3f}"
                    f"   {a['system_share']:.1%} / {b['system_share']:.1%}",
                    flush=True,
                )
                for side, r in ((now, a), (before, b)):
                    side.rates.append(r["rate"])
                    side.cpu_per_pair.append(r["cpu_per_pair_ms"])
                    side.system_shares.append(r["system_share"])
            med = statistics.median
            rate_ratios = [x / y for x, y in zip(now.rates, before.rates, strict=True)]
            cpu_ratios = [x / y for x, y in zip(now.cpu_per_pair, before.cpu_per_pair, strict=True)]
            print(
                f"median  {med(now.rates):>9.1f}  {med(before.rates):>13.1f}  {med(rate_ratios):.3f}"
                f"  {med(now.cpu_per_pair):>10.2f} ms  {med(before.cpu_per_pair):>12.2f} ms"
                f"  {med(cpu_ratios):.3f}   (ratios: median of the per-round ratios)"
            )
            print(
                f"the kernel's share of the server's CPU, median: now {med(now.system_shares):.1%},"
                f" before {med(before.system_shares):.1%}"
            )
            for name, ratios in (("authorizations/s", rate_ratios), ("CPU per pair", cpu_ratios)):
                low, high = median_interval(ratios)
                print(
                    f"{name}, now / before: median {med(ratios):.3f}, 95% interval {low:.3f} - {high:.3f}"
                )
        finally:
            for side in sides:
                side.stop()
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
