"""The Flask application factory."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask

from server.api import kiosk, provisioning, public, staff, station
from server.config import ServerConfig
from server.http import framework, metrics, problems, serving
from server.services import Context
from server.store.db import db
from server.store.fieldcrypto import FieldCipher
from server.web import setup as web
from server.web import station as station_page

# The JSON API by audience (the provisioning blueprint is registered with its secrets).
API_BLUEPRINTS = (
    public.public_api,
    kiosk.kiosk_api,
    station.station_api,
    station.desk_api,
    staff.staff_api,
)


def create_app(config: Mapping[str, Any] | ServerConfig | None = None) -> Flask:
    """Build the server. `config`: a ServerConfig, or a mapping of ONECARD_* overrides
    (see server.config); anything not given comes from the environment.

    The schema is not created here: run `onecard server init-db` (Alembic) first.
    """
    settings = config if isinstance(config, ServerConfig) else ServerConfig.load(config)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        ONECARD=settings,
        JSON_SORT_KEYS=False,
    )
    context = Context(
        cipher=FieldCipher(settings.field_key),
        timezone=ZoneInfo(settings.timezone),
        card_ca_der=settings.card_ca_der,
        clock_skew=settings.clock_skew,
        clock=settings.clock or time.time,
        server_key=Ed25519PrivateKey.from_private_bytes(settings.server_key),
    )
    db.init_app(app, settings.database_url)
    problems.register(app)
    framework.init_app(app, context)
    metrics.init_app(app, context)
    serving.init_app(app, metrics.registry_of(app))
    for blueprint in (*API_BLUEPRINTS, station_page.pages):
        app.register_blueprint(blueprint)
    provisioning.init_app(app, config)
    web.init_app(app, config if isinstance(config, Mapping) else None)
    return app


context_of = framework.context_of
