"""``/healthz`` and ``/metrics`` (Prometheus) over plain HTTP, read from the node's database.

``/healthz`` answers 200 ``ready`` only when the node can do its work: the database
answers, a worker holds every model the node must serve, the node is registered with the
coordinator, and the listener is near the chain's head. Otherwise 503 and one line per
condition that fails. It never shows an error's text (a database error can carry the
connection string); that goes to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, text

from oracle.store.workers import missing_models

logger = logging.getLogger(__name__)

NEAR_HEAD_BLOCKS = 8
"""The listener counts as near the head while at most this many blocks behind."""

CHAIN_STALE_S = 60.0
"""A head reading older than this says nothing: the RPC endpoint is away."""

CHAIN_WATCH_S = 2.0


@dataclass(slots=True, kw_only=True)
class Readiness:
    """What ``/healthz`` answers from; the node fills it in as it starts and runs.

    Not a frozen record: it is the one piece of live state the node shares with the HTTP
    server, each field written by one side only.
    """

    chain_head: Callable[[], int] | None = None
    """Reads the chain's latest block number (an RPC call); set by the node when built."""
    confirmations: int = 0
    wanted_models: tuple[str, ...] | None = None
    """Models a live worker must hold; None until the node has worked them out."""
    registered: bool = False
    blocks_behind: int | None = None
    """Blocks between the listener's checkpoint and ``head - confirmations``; None: unknown."""
    chain_seen_at: float | None = None
    """``time.monotonic()`` of the last head reading."""
    restarting: set[str] = field(default_factory=set)
    """Parts of the node that failed and wait to be started again."""

    def problems(self, conn: Connection, now: float) -> list[str]:
        """Why the node is not ready, one phrase per condition; empty when it is."""
        found = []
        if self.wanted_models is None:
            found.append("models not checked yet")
        elif missing := missing_models(conn, list(self.wanted_models)):
            found.append(f"models not loaded: {', '.join(missing)}")
        if not self.registered:
            found.append("not registered with the coordinator")
        if self.chain_seen_at is None or now - self.chain_seen_at > CHAIN_STALE_S:
            found.append("chain head not read recently (RPC endpoint away?)")
        elif self.blocks_behind is None:
            found.append("listener has processed no block yet")
        elif self.blocks_behind > NEAR_HEAD_BLOCKS:
            found.append(f"listener {self.blocks_behind} blocks behind the head")
        if self.restarting:
            found.append(f"restarting after a failure: {', '.join(sorted(self.restarting))}")
        return found

    def observe_chain(self, engine: Engine) -> None:
        """Read the head and the listener's checkpoint once; a failure leaves the old values."""
        if self.chain_head is None:
            return
        head = self.chain_head()
        with engine.connect() as conn:
            checkpoint = conn.scalar(text("SELECT max(block_number) FROM chain_checkpoints"))
        target = head - self.confirmations
        self.blocks_behind = None if checkpoint is None else max(0, target - int(checkpoint))
        self.chain_seen_at = time.monotonic()


async def watch_chain(readiness: Readiness, engine: Engine, stop: asyncio.Event) -> None:
    """Keep ``readiness``'s view of the listener fresh until ``stop``."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(readiness.observe_chain, engine)
        except Exception as exc:  # health reports the staleness; the listener logs the cause
            logger.debug("readiness: chain not observed", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=CHAIN_WATCH_S)


class StoreCollector(Collector):
    """Gauges computed from Postgres at scrape time, so every process agrees on them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._engine.connect() as conn:
            yield self._family(
                conn,
                "oracle_requests",
                "Requests by phase",
                "phase",
                "SELECT phase, count(*) FROM requests GROUP BY phase",
            )
            yield self._family(
                conn,
                "oracle_jobs",
                "Jobs by status",
                "status",
                "SELECT status, count(*) FROM jobs GROUP BY status",
            )
            yield self._family(
                conn,
                "oracle_transactions",
                "Outgoing transactions by status",
                "status",
                "SELECT status, count(*) FROM outgoing_txs GROUP BY status",
            )
            block = conn.scalar(text("SELECT max(block_number) FROM chain_checkpoints"))
        last = GaugeMetricFamily("oracle_last_block", "Last block the listener processed")
        last.add_metric([], float(block or 0))
        yield last

    @staticmethod
    def _family(conn: object, name: str, doc: str, label: str, sql: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=[label])
        for key, count in conn.execute(text(sql)):  # type: ignore[attr-defined]
            family.add_metric([str(key)], float(count))
        return family


async def serve_http(
    engine: Engine,
    port: int,
    stop: asyncio.Event,
    collectors: Sequence[Collector] = (),
    *,
    host: str = "127.0.0.1",
    readiness: Readiness | None = None,
) -> None:
    """Serve until ``stop``; ``collectors`` add the node's in-process metrics (autoscaling).

    Without ``readiness``, ``/healthz`` only checks the database.
    """
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    for collector in collectors:
        registry.register(collector)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            path = request_line[1] if len(request_line) > 1 else "/"
            status, body, content_type = await asyncio.to_thread(
                _respond, path, engine, registry, readiness
            )
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    logger.info("http listening", extra={"host": host, "port": port})
    async with server:
        if readiness is not None and readiness.chain_head is not None:
            await watch_chain(readiness, engine, stop)
        await stop.wait()


_UNAVAILABLE = "503 Service Unavailable"


def _respond(
    path: str, engine: Engine, registry: CollectorRegistry, readiness: Readiness | None
) -> tuple[str, bytes, str]:
    if path.startswith("/metrics"):
        try:
            return "200 OK", generate_latest(registry), "text/plain; version=0.0.4"
        except Exception as exc:
            logger.warning("metrics unavailable", extra={"error": str(exc)})
            return _UNAVAILABLE, b"metrics unavailable\n", "text/plain"
    if path.startswith("/healthz"):
        return _health(engine, readiness)
    return "404 Not Found", b"not found\n", "text/plain"


def _health(engine: Engine, readiness: Readiness | None) -> tuple[str, bytes, str]:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            problems = [] if readiness is None else readiness.problems(conn, time.monotonic())
    except Exception as exc:  # its text may hold the connection string: log it, never show it
        logger.warning("health check: database unavailable", extra={"error": str(exc)})
        return _UNAVAILABLE, b"not ready: database unavailable\n", "text/plain"
    if problems:
        body = "not ready: " + "; ".join(problems) + "\n"
        return _UNAVAILABLE, body.encode(), "text/plain"
    return "200 OK", b"ready\n", "text/plain"
