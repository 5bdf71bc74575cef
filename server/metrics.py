"""Prometheus text-format metrics at `/metrics` (exposition format 0.0.4), without a client library.

Counted in process (per worker): requests by endpoint and status, their latency as a histogram,
and authorization outcomes by reason. Read from the database at scrape time: open reservations
and the age of the oldest (a reservation is never released silently, so its age is watched).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

from flask import Flask, Response, g, request
from sqlalchemy import func, select

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.outcomes: dict[str, int] = defaultdict(int)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, method, status)] += 1
            index = bisect.bisect_left(BUCKETS, seconds)
            buckets = self.latency_buckets[endpoint]
            for i in range(index, len(BUCKETS)):
                buckets[i] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_count[endpoint] += 1

    def authorization(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def render(self) -> list[str]:
        lines = [
            "# HELP onecard_http_requests_total HTTP requests by endpoint, method and status.",
            "# TYPE onecard_http_requests_total counter",
        ]
        with self._lock:
            for (endpoint, method, status), count in sorted(self.requests.items()):
                lines.append(
                    f'onecard_http_requests_total{{endpoint="{endpoint}",method="{method}",'
                    f'status="{status}"}} {count}'
                )
            lines += [
                "# HELP onecard_http_request_duration_seconds Time to answer, by endpoint.",
                "# TYPE onecard_http_request_duration_seconds histogram",
            ]
            for endpoint, buckets in sorted(self.latency_buckets.items()):
                for bound, count in zip(BUCKETS, buckets, strict=True):
                    lines.append(
                        f'onecard_http_request_duration_seconds_bucket{{endpoint="{endpoint}",'
                        f'le="{bound}"}} {count}'
                    )
                total = self.latency_count[endpoint]
                lines.append(
                    f'onecard_http_request_duration_seconds_bucket{{endpoint="{endpoint}",'
                    f'le="+Inf"}} {total}'
                )
                lines.append(
                    f'onecard_http_request_duration_seconds_sum{{endpoint="{endpoint}"}} '
                    f"{self.latency_sum[endpoint]:.6f}"
                )
                lines.append(
                    f'onecard_http_request_duration_seconds_count{{endpoint="{endpoint}"}} {total}'
                )
            lines += [
                "# HELP onecard_authorizations_total Authorization answers by outcome.",
                "# TYPE onecard_authorizations_total counter",
            ]
            for outcome, count in sorted(self.outcomes.items()):
                lines.append(f'onecard_authorizations_total{{outcome="{outcome}"}} {count}')
        return lines


def init_app(app: Flask) -> None:
    registry = Registry()
    app.extensions["onecard_metrics"] = registry

    @app.before_request
    def _start_timer() -> None:
        g._onecard_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("_onecard_started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            registry.observe(
                endpoint, request.method, response.status_code, time.perf_counter() - started
            )
        return response

    @app.get("/metrics")
    def _metrics() -> Response:
        from server.app import context_of
        from server.db import db
        from server.models import Authorization, AuthorizationStatus

        lines = registry.render()
        session = db.session
        count, oldest = session.execute(
            select(func.count(), func.min(Authorization.created_at)).where(
                Authorization.status == AuthorizationStatus.RESERVED
            )
        ).one()
        session.rollback()
        age = 0.0
        if oldest is not None:
            from server.audit import as_utc

            age = max(0.0, (context_of(app).now() - as_utc(oldest)).total_seconds())
        lines += [
            "# HELP onecard_open_reservations Authorizations reserved and not yet captured or voided.",
            "# TYPE onecard_open_reservations gauge",
            f"onecard_open_reservations {count}",
            "# HELP onecard_oldest_reservation_age_seconds Age of the oldest open reservation.",
            "# TYPE onecard_oldest_reservation_age_seconds gauge",
            f"onecard_oldest_reservation_age_seconds {age:.0f}",
        ]
        return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


def registry_of(app: Flask) -> Registry:
    return app.extensions["onecard_metrics"]  # type: ignore[no-any-return]
