"""The embedded Postgres (pgserver) used when the operator names no database server."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from oracle.children import start_child
from oracle.errors import OracleError
from oracle.store.db import make_engine, to_sqlalchemy_url

logger = logging.getLogger(__name__)


class EmbeddedPostgresFailed(OracleError):
    """The embedded Postgres (pgserver) could not start; pass --database-url to use a server"""


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[URL]:
    """Start (or reuse) a pgserver whose data lives in ``data_dir``; stop it on exit,
    and also if this process is killed outright.

    pgserver stops the server only from an exit handler, which SIGKILL skips, and
    pg_ctl detaches the postmaster, so it is no child of ours that could ask to die with
    us. A child of ours that does (``start_child``) stops it instead. So a data directory
    belongs to one process: the server is nobody else's.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = _pgserver(data_dir)
    except Exception as exc:
        raise EmbeddedPostgresFailed(f"{type(exc).__name__}: {exc}") from exc
    logger.info("embedded postgres running", extra={"data_dir": str(data_dir)})
    postmaster_pid = (data_dir / "postmaster.pid").read_text().split()[0]
    guard = start_child(
        [sys.executable, "-c", _STOP_POSTMASTER_ON_SIGTERM, postmaster_pid],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield to_sqlalchemy_url(server.get_uri())
    finally:  # a clean exit: pgserver stops the server itself
        guard.kill()
        guard.wait()
        server.cleanup()


# The guard waits for the SIGTERM that our death sends (a Ctrl-C meant for us is not its
# business), then passes it on to the postmaster: Postgres's smart shutdown, which lets
# open sessions finish first.
_STOP_POSTMASTER_ON_SIGTERM = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
os.kill(int(sys.argv[1]), signal.SIGTERM)
"""


def ensure_database(server_url: URL, name: str) -> URL:
    """The URL of database ``name`` on the server, created first if it does not exist."""
    engine = make_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server_url.set(database=name)


def _pgserver(data_dir: Path) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (root, CI)
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver.postgres_server import get_server

    return get_server(data_dir, cleanup_mode="stop")
