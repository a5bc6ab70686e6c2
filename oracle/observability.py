"""``/healthz`` and ``/metrics`` (Prometheus) over plain HTTP, read from the node's database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

logger = logging.getLogger(__name__)


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
    engine: Engine, port: int, stop: asyncio.Event, collectors: Sequence[Collector] = ()
) -> None:
    """Serve until ``stop``; ``collectors`` add the node's in-process metrics (autoscaling)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    for collector in collectors:
        registry.register(collector)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            path = request_line[1] if len(request_line) > 1 else "/"
            status, body, content_type = await asyncio.to_thread(_respond, path, engine, registry)
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    logger.info("http listening", extra={"port": port})
    async with server:
        await stop.wait()


def _respond(path: str, engine: Engine, registry: CollectorRegistry) -> tuple[str, bytes, str]:
    if path.startswith("/metrics"):
        return "200 OK", generate_latest(registry), "text/plain; version=0.0.4"
    if path.startswith("/healthz"):
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the database is the node's heart: unhealthy without it
            return (
                "503 Service Unavailable",
                f"database unreachable: {exc}\n".encode(),
                "text/plain",
            )
        return "200 OK", b"ok\n", "text/plain"
    return "404 Not Found", b"not found\n", "text/plain"
