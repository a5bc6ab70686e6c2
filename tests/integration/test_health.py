"""/healthz says ready only when the node can work, on loopback unless told otherwise."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psutil
import pytest
from sqlalchemy import Engine, text

from oracle.observability import Readiness, serve_http
from oracle.store import make_engine
from oracle.store.workers import announce_worker

MODEL = "SmolLM2-135M-Instruct-Q4_1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    status = int(response.split()[1])
    return status, response.split("\r\n\r\n", 1)[1]


@asynccontextmanager
async def serving(
    engine: Engine, readiness: Readiness | None, **options: str
) -> AsyncIterator[int]:
    port, stop = free_port(), asyncio.Event()
    server = asyncio.ensure_future(serve_http(engine, port, stop, readiness=readiness, **options))
    for _ in range(100):
        try:
            await get(port, "/nothing")
            break
        except OSError:
            await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        stop.set()
        await server


def counter(start: int) -> Callable[[], int]:
    return lambda: start


def checkpoint(engine: Engine, block: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO chain_checkpoints (listener, block_number, block_hash)"
                " VALUES ('coordinator', :b, :h)"
            ),
            {"b": block, "h": b"\1" * 32},
        )


def test_ready_only_when_models_registration_and_listener_all_hold(db_engine: Engine) -> None:
    asyncio.run(_ready_only_when_all_hold(db_engine))


async def _ready_only_when_all_hold(db_engine: Engine) -> None:
    readiness = Readiness(chain_head=counter(100), confirmations=2)
    async with serving(db_engine, readiness) as port:
        status, body = await get(port, "/healthz")
        assert status == 503
        assert "models not checked yet" in body and "not registered" in body

        readiness.wanted_models = (MODEL,)
        readiness.observe_chain(db_engine)
        status, body = await get(port, "/healthz")
        assert f"models not loaded: {MODEL}" in body
        assert "listener has processed no block yet" in body

        with db_engine.begin() as conn:
            announce_worker(conn, worker_id="w1", host="h", pid=1, role="llm", model=MODEL)
        readiness.registered = True
        checkpoint(db_engine, 60)
        readiness.observe_chain(db_engine)
        status, body = await get(port, "/healthz")
        assert (status, body) == (503, "not ready: listener 38 blocks behind the head\n")

        with db_engine.begin() as conn:
            conn.execute(text("UPDATE chain_checkpoints SET block_number = 95"))
        readiness.observe_chain(db_engine)
        assert await get(port, "/healthz") == (200, "ready\n")

        readiness.chain_seen_at = time.monotonic() - 3600  # the RPC went away an hour ago
        status, body = await get(port, "/healthz")
        assert status == 503 and "chain head not read recently" in body


def test_the_server_keeps_the_chain_view_fresh_itself(db_engine: Engine) -> None:
    asyncio.run(_keeps_fresh(db_engine))


async def _keeps_fresh(db_engine: Engine) -> None:
    readiness = Readiness(chain_head=counter(10), wanted_models=(), registered=True)
    checkpoint(db_engine, 9)
    async with serving(db_engine, readiness) as port:
        for _ in range(100):
            if readiness.chain_seen_at is not None:
                break
            await asyncio.sleep(0.05)
        assert await get(port, "/healthz") == (200, "ready\n")


def test_a_database_error_is_logged_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    broken = make_engine("postgresql+psycopg://oracle:s3cret-pass@127.0.0.1:9/none")

    async def ask() -> tuple[int, str]:
        async with serving(broken, Readiness()) as port:
            return await get(port, "/healthz")

    try:
        status, body = asyncio.run(ask())
    finally:
        broken.dispose()
    assert (status, body) == (503, "not ready: database unavailable\n")
    [logged] = [r for r in caplog.records if r.getMessage() == "health check: database unavailable"]
    assert "127.0.0.1" in logged.error  # type: ignore[attr-defined]  # the cause, for the operator
    assert "s3cret-pass" not in body


@pytest.mark.parametrize(
    ("options", "address"), [({}, "127.0.0.1"), ({"host": "0.0.0.0"}, "0.0.0.0")]
)
def test_it_listens_on_loopback_unless_told_otherwise(
    db_engine: Engine, options: dict[str, str], address: str
) -> None:
    async def listening() -> set[str]:
        async with serving(db_engine, None, **options) as port:
            return {
                c.laddr.ip
                for c in psutil.Process().net_connections("tcp")
                if c.laddr.port == port and c.status == psutil.CONN_LISTEN
            }

    assert asyncio.run(listening()) == {address}
