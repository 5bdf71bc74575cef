"""`/metrics` is true under gunicorn's several workers: every scrape reads the sum of all workers'
counts, whichever worker answers it (prometheus_client's multiprocess mode, set up by
server.gunicorn_config), and it is served only to who may read it."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from server.app import create_app
from server.store.db import db
from server.store.migrate import upgrade
from tests.fixtures.database import ServerWorld
from tests.fixtures.serving import running_gunicorn

KEY_READS = re.compile(
    r'^onecard_http_requests_total\{endpoint="/api/v1/server-key",method="GET",status="200"\} (\S+)$',
    re.M,
)


def _fresh_connection_get(url: str) -> requests.Response:
    # A new connection each time, so the kernel hands each request to whichever worker accepts.
    return requests.get(url, headers={"Connection": "close"}, timeout=10)


def test_metrics_count_every_worker_whichever_answers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = f"sqlite:///{tmp_path / 'onecard.db'}"
    settings = {"ONECARD_DATABASE_URL": url, "ONECARD_DATA_DIR": str(data)}
    upgrade(url)
    db.dispose(create_app(settings))  # the development keys, made once before the workers start
    metrics_dir = tmp_path / "metrics"
    environment = {**settings, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with running_gunicorn(environment, tmp_path / "gunicorn.log", workers=2) as base:
        # Concurrent requests on fresh connections until both workers have answered some (the
        # kernel gives a lone connection to whichever worker it wakes, often the same one, and a
        # worker still importing on a loaded machine answers nothing yet): at most 90 s.
        sent = 0
        deadline = time.monotonic() + 90
        with ThreadPoolExecutor(max_workers=8) as pool:
            while time.monotonic() < deadline and len(_counting_workers(metrics_dir)) < 2:
                answers = list(pool.map(_fresh_connection_get, [base + "/api/v1/server-key"] * 20))
                assert all(answer.status_code == 200 for answer in answers)
                sent += len(answers)
        scrapes = [_key_reads(_fresh_connection_get(base + "/metrics").text) for _ in range(6)]
        counting_workers = _counting_workers(metrics_dir)
    assert len(counting_workers) == 2, f"one worker answered all {sent} requests"
    assert scrapes == [sent] * 6


def _counting_workers(metrics_dir: Path) -> set[str]:
    return {path.name.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}


def _key_reads(text: str) -> float:
    found = KEY_READS.search(text)
    return float(found.group(1)) if found else 0.0


def test_metrics_are_not_served_through_a_proxy_or_to_strangers(
    server_world: ServerWorld, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    client = server_world.client
    assert client.get("/metrics").status_code == 200  # loopback, no proxy
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert (proxied.status_code, proxied.get_json()["code"]) == (403, "metrics_not_public")
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert remote.status_code == 403
    monkeypatch.setenv("ONECARD_METRICS_TOKEN", "s3cret-scrape-token")
    assert client.get("/metrics").status_code == 401
    tokened = client.get(
        "/metrics",
        headers={"Authorization": "Bearer s3cret-scrape-token"},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert tokened.status_code == 200 and "onecard_http_requests_total" in tokened.text
