"""Worker presence: announce, heartbeat, retire, and which models are ready."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

ALIVE_WITHIN_S = 30.0


def announce_worker(
    conn: Connection, *, worker_id: str, host: str, pid: int, role: str, model: str
) -> None:
    """Record a worker whose model is loaded and which takes jobs from now on."""
    conn.execute(
        text(
            """
            INSERT INTO workers (worker_id, host, pid, role, model)
            VALUES (:worker_id, :host, :pid, :role, :model)
            ON CONFLICT (worker_id) DO UPDATE
            SET ready_at = now(), heartbeat_at = now(), stopped_at = NULL
            """
        ),
        {"worker_id": worker_id, "host": host, "pid": pid, "role": role, "model": model},
    )


def worker_heartbeat(conn: Connection, worker_id: str) -> None:
    conn.execute(
        text("UPDATE workers SET heartbeat_at = now() WHERE worker_id = :id"), {"id": worker_id}
    )


def retire_worker(conn: Connection, worker_id: str) -> None:
    conn.execute(
        text("UPDATE workers SET stopped_at = now() WHERE worker_id = :id"), {"id": worker_id}
    )


def ready_models(conn: Connection, alive_within_s: float = ALIVE_WITHIN_S) -> dict[str, int]:
    """Model name -> number of live workers holding it (here or on other machines)."""
    rows = conn.execute(
        text(
            """
            SELECT model, count(*) FROM workers
            WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => :s)
            GROUP BY model
            """
        ),
        {"s": alive_within_s},
    )
    return {str(model): int(count) for model, count in rows}


def missing_models(conn: Connection, wanted: Iterable[str]) -> list[str]:
    ready = ready_models(conn)
    return [m for m in wanted if ready.get(m, 0) == 0]
