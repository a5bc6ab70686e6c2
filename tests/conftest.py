"""Shared fixtures: a local anvil chain and Postgres databases (see tests/support/)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil, start_anvil
from oracle.store import make_engine, upgrade
from oracle.store.db import make_session_factory
from tests.support.postgres import (
    create_database,
    drop_database,
    postgres_server,
    temporary_database,
    unique_name,
)


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One anvil node for the whole run (chain id 31337, default dev accounts, automine)."""
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def chain(anvil: Anvil) -> Iterator[Anvil]:
    """The session's anvil, with every change this test makes reverted afterwards."""
    snapshot = anvil.rpc("evm_snapshot")
    try:
        yield anvil
    finally:
        assert anvil.rpc("evm_revert", snapshot) is True


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[URL]:
    """The server's maintenance database: ``DATABASE_URL`` if set, else an embedded pgserver.

    Its data lives outside pytest's base temp: pytest deletes all but the newest three
    of those when a session starts, which would pull the data out from under a server
    still serving a concurrent run.
    """
    scratch = Path(tempfile.mkdtemp(prefix="oracle-test-pg-"))
    try:
        with postgres_server(scratch) as url:
            yield url
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(postgres_server_url: URL) -> Iterator[str]:
    """Name of a database migrated to head once; per-test databases are copied from it."""
    name = unique_name("oracle_template")
    upgrade(create_database(postgres_server_url, name))
    try:
        yield name
    finally:
        drop_database(postgres_server_url, name)


@pytest.fixture
def database_url(postgres_server_url: URL, template_database: str) -> Iterator[str]:
    """URL (``postgresql+psycopg://``) of a fresh, migrated database, dropped after the test."""
    with temporary_database(postgres_server_url, template=template_database) as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def empty_database_url(postgres_server_url: URL) -> Iterator[str]:
    """URL of a fresh database with no tables at all (for migration tests)."""
    with temporary_database(postgres_server_url) as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's migrated database, disposed after the test."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``db_engine`` that keep loaded attributes after commit."""
    return make_session_factory(db_engine)
