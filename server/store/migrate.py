"""Schema migrations, run in code: `upgrade(url)` is what `init-db` and the tests call."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from server.store.db import make_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(
    url_or_engine: str | Engine, revision: str = "head", *, field_key: bytes | None = None
) -> None:
    """Bring the database to `revision` (default: the newest schema). With `field_key` (the
    server's ONECARD_FIELD_KEY), migrations that add a keyed index fill it for existing rows."""
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            config.attributes["field_key"] = field_key
            command.upgrade(config, revision)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def downgrade(url_or_engine: str | Engine, revision: str) -> None:
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()
