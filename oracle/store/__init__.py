"""Postgres storage: SQLAlchemy models, engines and migrations."""

from oracle.store.db import make_engine, make_session_factory, to_sqlalchemy_url
from oracle.store.migrate import current_revision, downgrade, head_revision, upgrade
from oracle.store.models import Base

__all__ = [
    "Base",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "to_sqlalchemy_url",
    "upgrade",
]
