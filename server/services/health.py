"""The server's health check (`GET /api/v1/health`): is each part it depends on up?

Parts, checked in order (a later one is not checked when an earlier one is down):
- `database`: a connection is made and answers `SELECT 1`;
- `schema`: the database's Alembic revision is the code's head (`onecard server init-db` ran).

`report(session)` answers the document for a healthy server and raises ServiceUnavailable
(503, code `database_unavailable` or `schema_outdated`, with `parts`) naming the part that is
down, so a load balancer or monitor sees which one. The check opens no transaction of its own
beyond the session's, and reads nothing personal.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from server.errors import ServiceUnavailable
from server.store.migrate import alembic_config

OK = "ok"
DOWN = "down"
NOT_CHECKED = "not_checked"


@dataclass(frozen=True)
class Part:
    name: str
    status: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        doc = {"status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        return doc


@functools.cache
def schema_heads() -> frozenset[str]:
    """The code's newest schema revisions (read once per process)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def check(session: Session) -> list[Part]:
    """Each part with its status; never raises for a part that is down."""
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        session.rollback()
        return [
            Part("database", DOWN, database_error_line(exc)),
            Part("schema", NOT_CHECKED),
        ]
    database = Part("database", OK)
    try:
        revisions = frozenset(session.scalars(text("SELECT version_num FROM alembic_version")))
    except SQLAlchemyError:
        session.rollback()
        return [database, Part("schema", DOWN, "not migrated: run `onecard server init-db`")]
    finally:
        if session.in_transaction():
            session.rollback()  # read only: end the transaction (SQLite holds its write lock)
    heads = schema_heads()
    if revisions != heads:
        return [
            database,
            Part(
                "schema",
                DOWN,
                f"database at {', '.join(sorted(revisions)) or 'no revision'}, code at "
                f"{', '.join(sorted(heads))}: run `onecard server init-db`",
            ),
        ]
    return [database, Part("schema", OK)]


def report(session: Session) -> dict[str, Any]:
    """The health document `{"status": "ok", "parts": {...}}`; ServiceUnavailable when a part is
    down (code `<part>_unavailable` or `schema_outdated`, `parts` as extra member)."""
    parts = check(session)
    doc = {part.name: part.to_json() for part in parts}
    down = next((part for part in parts if part.status == DOWN), None)
    if down is not None:
        code = "schema_outdated" if down.name == "schema" else f"{down.name}_unavailable"
        raise ServiceUnavailable(f"{down.name} is down: {down.detail}", code=code, parts=doc)
    return {"status": OK, "parts": doc}


def database_error_line(exc: BaseException) -> str:
    """A driver error's first line, without SQLAlchemy's appended SQL and background link."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__
