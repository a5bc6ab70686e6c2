"""LISTEN/NOTIFY: a process sleeps until another one has news for it, or a timeout passes.

Notifications are hints, never the record: whoever is woken reads the tables, and a
lost notification (a dropped connection, a process that was not listening yet) costs
only the waiter's timeout, after which it looks anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import psycopg
from sqlalchemy import Connection, text

from oracle.store.db import to_sqlalchemy_url

__all__ = ["CHAIN_CHANNEL", "NotificationWaiter", "notify"]

logger = logging.getLogger(__name__)

CHAIN_CHANNEL = "oracle_chain"
"""NOTIFY channel: the listener stored new events (payload: how many)."""


def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Queue a notification; Postgres delivers it when the caller's transaction commits."""
    conn.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
    )


class NotificationWaiter:
    """One LISTEN connection on ``channels``, reopened after it drops."""

    def __init__(self, database_url: str, channels: Sequence[str]) -> None:
        libpq_url = to_sqlalchemy_url(database_url).set(drivername="postgresql")
        self._dsn = libpq_url.render_as_string(hide_password=False)
        self._channels = tuple(channels)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._connect()

    def wait(self, timeout_s: float) -> bool:
        """Block until a notification arrives (True) or ``timeout_s`` passes (False).

        Notifications that arrived meanwhile are all consumed by one call. After the
        connection dropped it answers True once it is back: something may have been missed.
        """
        if self._conn is None or self._conn.closed:
            time.sleep(timeout_s)
            return self._reconnect()
        try:
            arrived = any(True for _ in self._conn.notifies(timeout=timeout_s, stop_after=1))
            if arrived:
                for _ in self._conn.notifies(timeout=0):  # what came with it: one wake-up
                    pass
            return arrived
        except psycopg.OperationalError as exc:
            logger.warning(
                "notification connection lost; polling meanwhile", extra={"error": str(exc)}
            )
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> None:
        conn = psycopg.connect(self._dsn, autocommit=True)
        for channel in self._channels:
            conn.execute(f"LISTEN {channel}")
        self._conn = conn

    def _reconnect(self) -> bool:
        try:
            self._connect()
        except psycopg.OperationalError as exc:
            logger.warning("notification connection still down", extra={"error": str(exc)})
            return False
        logger.info("notification connection back", extra={"channels": list(self._channels)})
        return True
