"""A Postgres server for the test run, and throwaway databases on it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from oracle.store.db import make_engine, to_sqlalchemy_url
from oracle.store.embedded import embedded_postgres


@contextmanager
def postgres_server(scratch_dir: Path) -> Iterator[URL]:
    """URL of a server's maintenance database: ``DATABASE_URL`` if set, else an embedded one."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield to_sqlalchemy_url(configured)
        return
    with embedded_postgres(scratch_dir) as url:  # the node's own embedded server
        _skip_durability(url)
        yield url


def _skip_durability(server_url: URL) -> None:
    """Trade crash safety for speed on the throwaway server: its data dies with the run."""
    with admin_engine(server_url) as engine, engine.connect() as connection:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            connection.execute(text(f"ALTER SYSTEM SET {setting} = off"))
        connection.execute(text("SELECT pg_reload_conf()"))


def unique_name(prefix: str) -> str:
    """A database name no other test (or concurrent test run) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def with_database(server_url: URL, name: str) -> URL:
    """``server_url`` pointed at database ``name``."""
    return server_url.set(database=name)


@contextmanager
def admin_engine(server_url: URL) -> Iterator[Engine]:
    """An autocommit engine for CREATE/DROP DATABASE, which cannot run in a transaction."""
    engine = make_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def create_database(server_url: URL, name: str, template: str = "template0") -> URL:
    """Create database ``name`` as a copy of ``template`` and return its URL."""
    with admin_engine(server_url) as engine, engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return with_database(server_url, name)


def drop_database(server_url: URL, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still on it."""
    with admin_engine(server_url) as engine, engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def temporary_database(server_url: URL, template: str = "template0") -> Iterator[URL]:
    """A fresh database copied from ``template``, dropped on exit."""
    name = unique_name("oracle_test")
    url = create_database(server_url, name, template)
    try:
        yield url
    finally:
        drop_database(server_url, name)
