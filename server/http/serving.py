"""What every request gets, in one hook before it and one after it.

Before: a request id and the start time (server.http.requestlog), then the query's NUL check
(server.http.framework). After: the nonce of a device call that failed is spent (framework),
the hygiene headers, the request's log line, its metrics (server.http.metrics).

Why one pair of hooks rather than one per concern: Flask dispatches every app-wide hook on every
request, kiosk calls included, and each dispatch and each look-up of `request` or `g` costs the
hot path (docs/server-performance.md measured it). Extensions of the staff pages keep their
hooks on the page blueprints (server.web.setup).
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from server.http import framework, requestlog
from server.http.metrics import Registry

_STARTED = "onecard_started"


def init_app(app: Flask, registry: Registry) -> None:
    @app.before_request
    def _before() -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        store = g._get_current_object()  # type: ignore[attr-defined]
        setattr(store, _STARTED, time.perf_counter())
        store.request_id = requestlog.request_id(req.headers.get(requestlog.REQUEST_ID_HEADER))
        framework.refuse_nul_in_query(req.query_string)

    @app.after_request
    def _after(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        store = g._get_current_object()  # type: ignore[attr-defined]
        framework.spend_nonce_anyway(app, store)
        path = req.path
        framework.hygiene(response, path)
        started = getattr(store, _STARTED, None)
        if started is None:  # the request failed before _before ran
            return response
        seconds = time.perf_counter() - started
        requestlog.answered(req, response, store.request_id, seconds)
        rule = req.url_rule
        registry.observe(
            rule.rule if rule is not None else "unmatched", req.method, response.status_code, seconds
        )
        return response
