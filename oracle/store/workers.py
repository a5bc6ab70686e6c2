"""Worker presence: announce, heartbeat, retire, and which models are ready."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

ALIVE_WITHIN_S = 30.0

_LIVE_WORKERS_SQL = text(
    """
    SELECT role, model, worker_id FROM workers
    WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => :alive_within_s)
    """
)


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


def live_workers(
    conn: Connection, alive_within_s: float = ALIVE_WITHIN_S
) -> dict[tuple[str, str], set[str]]:
    """Worker ids with a recent presence heartbeat, by (role, model), on any machine."""
    found: dict[tuple[str, str], set[str]] = {}
    for row in conn.execute(_LIVE_WORKERS_SQL, {"alive_within_s": alive_within_s}):
        found.setdefault((str(row.role), str(row.model)), set()).add(str(row.worker_id))
    return found


def ready_models(conn: Connection, alive_within_s: float = ALIVE_WITHIN_S) -> dict[str, int]:
    """Model name -> number of live workers holding it (here or on other machines)."""
    ready: dict[str, int] = {}
    for (_role, model), worker_ids in live_workers(conn, alive_within_s).items():
        ready[model] = ready.get(model, 0) + len(worker_ids)
    return ready


def missing_models(conn: Connection, wanted: Iterable[str]) -> list[str]:
    ready = ready_models(conn)
    return [m for m in wanted if ready.get(m, 0) == 0]
