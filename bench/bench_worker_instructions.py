"""Instructions per authorize + capture in one gunicorn worker, counted by callgrind.

The HTTP benchmark (bench/bench_server.py) times the real server, but on a shared 2-core machine
its figures move by a quarter between identical runs. This one counts instructions instead, which
do not depend on what else the machine is doing: the server is started as in production
(gunicorn with its config, one worker, one thread) under `valgrind --tool=callgrind`, one kiosk
taps in a closed loop through the same load generator, and the worker's instructions are
counted for two run lengths. The difference of the two, divided by the difference of their
authorize + capture pairs, is the cost of one pair: the worker's start-up (imports, the app, the
first connections) cancels out.

    .venv/bin/python bench/bench_worker_instructions.py [--database sqlite|postgresql]
        [--baseline GIT-REF]   # the same count for another version, in a temporary worktree
        [--threads N]          # N worker threads and N kiosks (default 1)

Everything in the worker is counted: the HTTP parsing, Flask, the request framework, the
services, the database driver and the signature checks; PostgreSQL's own work is not (another
process). It needs valgrind (on the Debian machines this project targets).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
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
SHORT_SECONDS, LONG_SECONDS, WARM_SECONDS = 5.0, 35.0, 5.0


def tree_bench_server(tree: Path) -> Any:
    """`tree`'s own bench/bench_server.py, loaded from its file: an `import bench_server` could
    return this tree's module, already imported, and seed the other version's database with
    this version's code and migrations. (The project's editable install also finds a module the
    other tree lacks in this tree: only what `tree` has is `tree`'s.)"""
    spec = importlib.util.spec_from_file_location(
        "tree_bench_server", tree / "bench" / "bench_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def throwaway_ca_and_env(tmp: Path) -> tuple[Any, dict[str, str]]:
    """A card CA and the server's environment (data directory, field key, CA) under `tmp`, for
    a server of the tree first on the path (its own cardsvc makes the CA)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from cardsvc.ca import CardCA

    ca = CardCA.create(tmp / "ca")
    (tmp / "ca.pem").write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    env = {
        "ONECARD_DATA_DIR": str(tmp / "data"),
        "ONECARD_FIELD_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "ONECARD_CARD_CA_CERT": str(tmp / "ca.pem"),
    }
    return ca, env


def measure_one(tree: Path, seconds: float, database: str, threads: int) -> dict[str, int]:
    """In a child process whose path starts with `tree`: one server under callgrind."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    os.environ.setdefault("ONECARD_PRODUCTION", "0")
    b = tree_bench_server(tree)  # the tree's own seeding, command line and load generator

    with tempfile.TemporaryDirectory(prefix="onecard-worker-ir-") as tmp_name:
        tmp = Path(tmp_name)
        ca, env = throwaway_ca_and_env(tmp)
        pg = b.postgres_database() if database == "postgresql" else None
        if database == "postgresql" and pg is None:
            raise SystemExit("PostgreSQL: not reachable at 127.0.0.1:5432")
        url = pg.url if pg is not None else f"sqlite:///{tmp / 'bench.db'}"
        try:
            kiosks = b.prepare(url, env, ca, threads, cards_per_kiosk=4)  # a kiosk per thread
            port = b.free_port()
            out = tmp / "callgrind"
            out.mkdir()
            server = subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--trace-children=yes",
                    f"--callgrind-out-file={out}/worker.%p",
                    *b.gunicorn_command(port, 1, threads),
                ],
                env={**os.environ, **env, "ONECARD_DATABASE_URL": url, "PYTHONPATH": str(tree)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 300  # start-up under valgrind is slow
                while True:
                    try:
                        urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/api/v1/health", timeout=10
                        ).close()
                        break
                    except OSError:
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError("the server under valgrind did not start") from None
                        time.sleep(0.2)
                spec_path = tmp / "spec.json"
                spec = {"host": "127.0.0.1", "port": port, "kiosks": kiosks}
                spec_path.write_text(json.dumps(spec))
                warm = b.load(spec_path, "kiosk", WARM_SECONDS)
                for kiosk in kiosks:
                    kiosk["counter"] = warm["counters"][kiosk["id"]]
                spec_path.write_text(json.dumps(spec))
                run = b.load(spec_path, "kiosk", seconds)
                if warm["errors"] or run["errors"]:
                    raise RuntimeError(f"kiosk errors: {(warm['errors'] + run['errors'])[:3]}")
            finally:
                server.terminate()
                server.wait(120)
            # The worker is the process that counted the most (the master only supervises).
            instructions = max(
                int(re.search(rb"^totals: (\d+)", f.read_bytes(), re.M).group(1))  # type: ignore[union-attr]
                for f in out.iterdir()
            )
        finally:
            if pg is not None:
                assert pg.pg_user and pg.pg_name
                b.drop_postgres_database(pg.pg_user, pg.pg_name)
    pairs = len(warm["capture_ms"]) + len(run["capture_ms"])
    return {"pairs": pairs, "instructions": instructions}


def per_pair(tree: Path, database: str, threads: int) -> tuple[float, int]:
    """(instructions per pair, pairs counted in the long run) for the code in `tree`."""

    def child(seconds: float) -> dict[str, int]:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--measure-one",
                str(tree),
                str(seconds),
                database,
                str(threads),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tree,  # gunicorn puts its working directory first on the path
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"measurement failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    with ThreadPoolExecutor(2) as pool:  # instruction counts do not mind sharing the cores
        short, long = pool.map(child, (SHORT_SECONDS, LONG_SECONDS))
    extra_pairs = long["pairs"] - short["pairs"]
    if extra_pairs < 10:
        raise RuntimeError(f"too few pairs to compare ({short} against {long})")
    return (long["instructions"] - short["instructions"]) / extra_pairs, extra_pairs


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--measure-one":
        _, _, tree, seconds, database, threads = sys.argv
        print(json.dumps(measure_one(Path(tree), float(seconds), database, int(threads))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--baseline", help="a git ref to count the same way, for the ratio")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="worker threads, with as many kiosks (what threads add: the GIL's hand-offs, locks)",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: no instruction counts (apt-get install valgrind)")
        return 1
    label = (
        f"{args.database}, gunicorn 1 worker x {args.threads} thread(s),"
        f" {args.threads} kiosk(s), closed loop"
    )
    now, pairs = per_pair(ROOT, args.database, args.threads)
    print(
        f"this tree: {now / 1e6:.2f} M instructions per authorize + capture ({label}; {pairs} pairs)"
    )
    if args.baseline:
        with tempfile.TemporaryDirectory(prefix="onecard-baseline-") as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
                check=True,
                capture_output=True,
            )
            try:
                before, _ = per_pair(tree, args.database, args.threads)
            finally:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )
        print(
            f"{args.baseline}: {before / 1e6:.2f} M per pair; this tree / {args.baseline} = "
            f"{now / before:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
