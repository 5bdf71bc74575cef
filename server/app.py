"""The Flask application factory."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask

from server import metrics, problems, provisioning
from server.config import ServerConfig
from server.db import db
from server.fieldcrypto import FieldCipher
from server.services import Context

CONTEXT_KEY = "onecard_context"


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
    app.extensions[CONTEXT_KEY] = Context(
        cipher=FieldCipher(settings.field_key),
        timezone=ZoneInfo(settings.timezone),
        card_ca_der=settings.card_ca_der,
        clock_skew=settings.clock_skew,
        clock=settings.clock or time.time,
        server_key=Ed25519PrivateKey.from_private_bytes(settings.server_key),
    )
    db.init_app(app, settings.database_url)
    problems.register(app)
    metrics.init_app(app)

    from server.api import api
    from server.pages import pages

    app.register_blueprint(api)
    app.register_blueprint(pages)
    provisioning.init_app(app, config)
    return app


def context_of(app: Flask) -> Context:
    return app.extensions[CONTEXT_KEY]  # type: ignore[no-any-return]
