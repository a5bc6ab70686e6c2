"""Alembic, configured in code so the CLI can migrate from any working directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from oracle.store.db import make_engine

# The scripts live in the repository's migrations/ folder, next to the package.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

_Action = Callable[[Config], None]


def alembic_config() -> Config:
    """An Alembic config pointing at migrations/; env.py expects a connection in attributes."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic scripts not found in {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(database_url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``database_url`` up to ``revision``."""
    _run(database_url, lambda config: command.upgrade(config, revision))


def downgrade(database_url: str | URL, revision: str) -> None:
    """Migrate the database at ``database_url`` down to ``revision`` (``"base"`` empties it)."""
    _run(database_url, lambda config: command.downgrade(config, revision))


def current_revision(database_url: str | URL) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions in {MIGRATIONS_DIR}")
    return head


def _run(database_url: str | URL, action: _Action) -> None:
    """Run an Alembic command on one connection, inside one transaction."""
    config = alembic_config()
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config)
    finally:
        engine.dispose()
