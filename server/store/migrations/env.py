"""Alembic environment for the OneCard server.

The URL comes from `config.attributes["connection"]` (server.store.migrate passes an open connection),
else the `sqlalchemy.url` option, else ONECARD_DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context

from server.config import normalise_database_url
from server.store.db import make_engine
from server.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ["ONECARD_DATABASE_URL"]
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ["ONECARD_DATABASE_URL"]
    engine = make_engine(normalise_database_url(url))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
