"""The database engine and the Flask extension that hands each request a session.

SQLite runs in WAL mode and every transaction starts with `BEGIN IMMEDIATE`: writers are
serialised at BEGIN, so a read-then-write inside one transaction (the entitlement check) cannot
interleave with another writer's. PostgreSQL uses row locks (`SELECT ... FOR UPDATE`) instead; see
services.authorize.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
_EXTENSION = "onecard_db"


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 80)
    # No pre-ping (it costs a round trip per checkout, several per request); connections are
    # recycled instead, and a request that meets a dropped connection fails once with a 500.
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


@dataclass
class _BoundDatabase:
    engine: Engine
    sessionmaker: sessionmaker[Session]


class Database:
    """Unbound extension: `db = Database()`, then `db.init_app(app, url)` in the factory.

    The engine lives in `app.extensions`, so several apps (tests) can coexist in one process.
    """

    def init_app(self, app: Flask, url: str) -> None:
        engine = make_engine(url)
        app.extensions[_EXTENSION] = _BoundDatabase(
            engine, sessionmaker(engine, expire_on_commit=False)
        )
        app.teardown_appcontext(self._close_session)

    @staticmethod
    def bound(app: Flask) -> _BoundDatabase:
        return app.extensions[_EXTENSION]  # type: ignore[no-any-return]

    @property
    def session(self) -> Session:
        """The current request's session, opened on first use and closed at teardown."""
        session: Session | None = g.get("_onecard_session")
        if session is None:
            session = self.bound(current_app).sessionmaker()
            g._onecard_session = session
        return session

    def dispose(self, app: Flask) -> None:
        """Close every pooled connection (tests drop their database afterwards)."""
        self.bound(app).engine.dispose()

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("_onecard_session", None)
        if session is not None:
            session.close()


db = Database()
