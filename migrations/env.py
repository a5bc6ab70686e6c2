"""Alembic environment: runs on the connection that oracle.store.migrate hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from oracle.store.models import Base

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run the pending migrations on ``connection`` (its transaction belongs to the caller)."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Entry point Alembic calls; offline (SQL script) mode is not supported."""
    if context.is_offline_mode():
        raise RuntimeError("offline migrations are not supported; use oracle.store.migrate")
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through oracle.store.migrate, which passes a connection")
    run_migrations(connection)


main()
