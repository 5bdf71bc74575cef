"""The WSGI entry point for production servers, configured from the environment:

    gunicorn --worker-class gthread --workers <CPU cores> --threads 4 --keep-alive 75 \
        --backlog 2048 --bind 127.0.0.1:8080 'server.wsgi:app'

Put it behind a TLS reverse proxy; run `onecard server init-db` on deploy, before the workers.

Why this shape (measured with bench/bench_server.py, 64 kiosks, PostgreSQL on the same 2-core
machine): a request still waits on PostgreSQL round trips, so a few threads per process overlap
those waits; the CPU work holds the GIL, so one process per core uses the cores. With the
PostgreSQL ledger (server.store.ledger), 2 workers x 4 threads gave a median of 309 authorizations/s
over three runs, against 300 for 2 x 2 and 282 for 2 x 8 (more threads contend for the GIL:
more context switches); more processes than cores measured lower still. gthread keeps kiosks'
connections alive between calls (the sync worker closes each one). Each worker's pool
(server.store.db: 20 + 80 overflow) must cover its threads, and workers x threads must stay below
PostgreSQL's max_connections.

Logs are JSON lines on standard output (server.http.requestlog), one per request with its
request id. A configuration the server cannot start with (production mode without a secret, a
malformed value) is one line on standard error and exit status 3, which gunicorn takes as "the
worker failed to boot" and stops instead of restarting workers forever.
"""

from __future__ import annotations

import sys

from server.app import create_app
from server.config import ConfigError
from server.http.requestlog import configure_logging

WORKER_BOOT_ERROR = 3  # gunicorn's exit status for a worker that cannot boot: the master halts

configure_logging()
try:
    app = create_app()
except ConfigError as exc:
    print(f"onecard server: configuration: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(WORKER_BOOT_ERROR) from None
