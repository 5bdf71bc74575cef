"""gunicorn's settings for the OneCard server, so production starts with one short line:

    gunicorn -c python:server.gunicorn_config server.wsgi:app

Shape (why: server/wsgi.py and docs/server-performance.md): the gthread worker, one process per
core (`ONECARD_WORKERS`, default 2), 4 threads each (`ONECARD_THREADS`), kiosks' connections kept
alive 75 s, bound to `ONECARD_BIND` (default 127.0.0.1:8080, behind the TLS reverse proxy).

Metrics: every worker is its own process, so each counts its own requests; prometheus_client's
multiprocess mode makes `/metrics` the sum of all of them (server.http.metrics). It needs
`PROMETHEUS_MULTIPROC_DIR` in the environment before the workers import prometheus_client: this
module sets it (to the operator's directory when given, e.g. systemd's RuntimeDirectory, else a
new temporary one), empties it when gunicorn starts, marks a worker's files dead when it exits
(so gauges of live workers only), and removes a directory it made when gunicorn stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_made_here = MULTIPROCESS_ENV not in os.environ
if _made_here:
    os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="onecard-metrics-")
metrics_dir = Path(os.environ[MULTIPROCESS_ENV])
# The reports' suppression imports numpy (server.domain.suppression), whose OpenBLAS starts a
# pool of threads in every worker at import; its matrices are tiny, and idle pool threads wake
# and spin beside the kiosks' requests. One thread: no pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Imported only once the directory is in the environment: the mode is chosen at import.
from prometheus_client import multiprocess  # noqa: E402

worker_class = "gthread"
workers = int(os.environ.get("ONECARD_WORKERS", "2"))
threads = int(os.environ.get("ONECARD_THREADS", "4"))
keepalive = 75
backlog = 2048
bind = os.environ.get("ONECARD_BIND", "127.0.0.1:8080")
errorlog = "-"


def on_starting(server: Any) -> None:
    """Counts of an earlier run are not this run's: start from an empty directory."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _made_here:
        shutil.rmtree(metrics_dir, ignore_errors=True)
