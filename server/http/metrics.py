"""Prometheus metrics at `/metrics`, true under gunicorn's several workers.

Counted per request (prometheus_client): requests by endpoint, method and status; their latency
as a histogram; authorization answers by outcome. Under gunicorn every worker is its own process
with its own counters, and a scrape reaches one of them: so the server uses prometheus_client's
multiprocess mode whenever `PROMETHEUS_MULTIPROC_DIR` is set (server.gunicorn_config sets it for
the workers and cleans it): each worker writes its counts to files in that directory and a
scrape sums every worker's, alive or dead. Without it (one process: the development server, the
tests) the counts live in a registry of the application's own.

Read from the database at scrape time: open reservations and the age of the oldest (a
reservation is never released silently, so its age is watched), and the fleet (kiosks by
state, slots low or empty, faults, doors open, open alerts by kind; FleetGauges).

Who may scrape: with `ONECARD_METRICS_TOKEN` set, a request bearing `Authorization: Bearer
<token>`; without it, only a client on the loopback address that came through no proxy (no
`X-Forwarded-For`). The reverse proxy (deploy/nginx) does not pass `/metrics` at all.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from server.domain.alerts import AlertKind, Connection
from server.errors import Forbidden, Unauthenticated
from server.services import alerts, fleet
from server.services.context import Context
from server.store.audit import as_utc
from server.store.db import db
from server.store.models import Authorization, AuthorizationStatus

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOKEN_ENV = "ONECARD_METRICS_TOKEN"
EXTENSION_KEY = "onecard_metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # `_created` series would double every counter's lines for no reader


class Registry:
    """The application's counters. In multiprocess mode their values go to the shared
    directory; the registry they are made in only keeps them apart from another app's."""

    def __init__(self) -> None:
        self.own = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "onecard_http_requests",
            "HTTP requests by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=self.own,
        )
        self.latency = Histogram(
            "onecard_http_request_duration_seconds",
            "Time to answer, by endpoint.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=self.own,
        )
        self.outcomes = Counter(
            "onecard_authorizations",
            "Authorization answers by outcome.",
            ["outcome"],
            registry=self.own,
        )
        # (endpoint, method, status) -> its request counter and latency histogram. Endpoints
        # are the app's URL rules (or "unmatched"), so the keys are few.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (server.http.serving calls this after every request)."""
        series = self._series.get((endpoint, method, status))
        if series is None:  # `labels()` checks and locks each time: look each series up once
            series = self._series[(endpoint, method, status)] = (
                self.requests.labels(endpoint, method, str(status)),
                self.latency.labels(endpoint),
            )
        series[0].inc()
        series[1].observe(seconds)

    def authorization(self, outcome: str) -> None:
        self.outcomes.labels(outcome).inc()

    def scrape(self, *database: Collector) -> bytes:
        """The text exposition: every worker's counts (or this process's) and `database`'s."""
        registry = CollectorRegistry(auto_describe=False)
        if os.environ.get(MULTIPROCESS_ENV):
            MultiProcessCollector(registry)
        else:
            registry.register(self.own)
        for collector in database:
            registry.register(collector)
        return generate_latest(registry)


class ReservationGauges(Collector):
    """Open reservations and the age of the oldest, read when scraped."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read at scrape time only, never when registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        session = db.session
        count, oldest = session.execute(
            select(func.count(), func.min(Authorization.created_at)).where(
                Authorization.status == AuthorizationStatus.RESERVED
            )
        ).one()
        session.rollback()
        age = 0.0 if oldest is None else (self.context.now() - as_utc(oldest)).total_seconds()
        yield GaugeMetricFamily(
            "onecard_open_reservations",
            "Authorizations reserved and not yet captured or voided.",
            value=count,
        )
        yield GaugeMetricFamily(
            "onecard_oldest_reservation_age_seconds",
            "Age of the oldest open reservation.",
            value=max(0.0, round(age)),
        )


class FleetGauges(Collector):
    """The fleet, read when scraped (issue 12): kiosks by state, slots low or empty, kiosks with
    a fault or the door open, open alerts by kind. One read of the fleet (server.services.fleet)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        session = db.session
        rows = fleet.fleet(session, self.context, alerts.rules(session))
        open_alerts = alerts.open_counts(session)
        session.rollback()
        states = GaugeMetricFamily(
            "onecard_kiosks",
            "Kiosks and stations by state from the heartbeat's age.",
            labels=["kind", "state"],
        )
        counted = Tally((row.state.kind, row.connection.value) for row in rows)
        for kind in ("kiosk", "station"):
            for state in Connection:
                states.add_metric([kind, state.value], counted.get((kind, state.value), 0))
        yield states
        slots = GaugeMetricFamily(
            "onecard_slots", "Kiosk slots at or under their minimum, or empty.", labels=["level"]
        )
        all_slots = [slot for row in rows if row.state.kind == "kiosk" for slot in row.slots]
        slots.add_metric(
            ["empty"], sum(1 for s in all_slots if s.stock is not None and s.stock <= 0)
        )
        slots.add_metric(
            ["low"],
            sum(1 for s in all_slots if s.needs_restock and s.stock is not None and s.stock > 0),
        )
        yield slots
        yield GaugeMetricFamily(
            "onecard_kiosks_faulted",
            "Kiosks whose last heartbeat reported a fault.",
            value=sum(1 for row in rows if row.state.faults),
        )
        yield GaugeMetricFamily(
            "onecard_kiosks_door_open",
            "Kiosks whose door is open.",
            value=sum(1 for row in rows if row.state.door_open),
        )
        by_kind = GaugeMetricFamily(
            "onecard_alerts_open", "Open fleet alerts by kind.", labels=["kind"]
        )
        for kind in AlertKind:
            by_kind.add_metric([kind.value], open_alerts.get(kind.value, 0))
        yield by_kind


def check_scraper() -> None:
    """Refuse a scrape that is neither tokened nor local (see the module docstring)."""
    token = os.environ.get(TOKEN_ENV) or current_app.config.get(TOKEN_ENV)
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthenticated("a metrics bearer token is required", code="token_invalid")
        return
    try:
        local = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        local = False
    if not local or "X-Forwarded-For" in request.headers:
        raise Forbidden(
            f"metrics are served to loopback clients only unless {TOKEN_ENV} is set",
            code="metrics_not_public",
        )


def init_app(app: Flask, context: Context) -> None:
    registry = Registry()
    app.extensions[EXTENSION_KEY] = registry
    gauges = ReservationGauges(context)
    fleet_gauges = FleetGauges(context)

    @app.get("/metrics")
    def _metrics() -> Response:
        check_scraper()
        return Response(registry.scrape(gauges, fleet_gauges), mimetype=CONTENT_TYPE)


def registry_of(app: Flask) -> Registry:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
