"""Storage: the SQLAlchemy models, the ledger (the only writer of authorizations), the database
handle, Alembic migrations, field encryption and the audit chain."""
