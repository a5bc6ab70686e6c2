"""Engines and sessions built from a database URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

DRIVER = "postgresql+psycopg"

# Spellings of a Postgres URL that operators and tools (pgserver, libpq, Heroku) hand out.
_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg"})


def to_sqlalchemy_url(database_url: str | URL) -> URL:
    """Parse a Postgres URL and pin the psycopg 3 driver.

    ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg://``; other
    drivers are refused, since the store relies on psycopg 3 behaviour.
    """
    url = make_url(database_url) if isinstance(database_url, str) else database_url
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL for psycopg 3: {url.drivername!r}")
    return url.set(drivername=DRIVER)


def make_engine(database_url: str | URL, **engine_options: Any) -> Engine:
    """Create an engine for ``database_url``; ``engine_options`` go to ``create_engine``."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    options.update(engine_options)
    return create_engine(to_sqlalchemy_url(database_url), **options)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` that keep loaded attributes after commit."""
    return sessionmaker(engine, expire_on_commit=False)
