"""Worker presence: announce, heartbeat, retire, and which models are ready.

A worker beats its presence from the same side thread that renews its leases, so a busy
worker stays present for as long as its jobs run; one that stops beating is either gone
or stuck (supervisor.py tells which).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text

ALIVE_WITHIN_S = 30.0

_LIVE_WORKERS_SQL = text(
    """
    SELECT role, model, worker_id, slots FROM workers
    WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => :alive_within_s)
    """
)


_PRESENCE_SQL = text(
    """
    SELECT worker_id,
           extract(epoch FROM now() - heartbeat_at) AS silent_for_s,
           extract(epoch FROM now() - ready_at) AS ready_for_s,
           stopped_at IS NOT NULL AS stopped
    FROM workers
    WHERE worker_id = ANY(:ids)
    """
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Presence:
    """A worker's presence as the database sees it (by the database's clock)."""

    worker_id: str
    silent_for_s: float
    """Since its last heartbeat."""
    ready_for_s: float
    """Since it announced that its model is loaded."""
    stopped: bool


def announce_worker(
    conn: Connection,
    *,
    worker_id: str,
    host: str,
    pid: int,
    role: str,
    model: str,
    slots: int = 1,
) -> None:
    """Record a worker whose model is loaded and which takes jobs from now on, ``slots``
    of them at once (a batched LLM worker's sequences)."""
    conn.execute(
        text(
            """
            INSERT INTO workers (worker_id, host, pid, role, model, slots)
            VALUES (:worker_id, :host, :pid, :role, :model, :slots)
            ON CONFLICT (worker_id) DO UPDATE
            SET ready_at = now(), heartbeat_at = now(), stopped_at = NULL, slots = :slots
            """
        ),
        {
            "worker_id": worker_id,
            "host": host,
            "pid": pid,
            "role": role,
            "model": model,
            "slots": slots,
        },
    )


def worker_heartbeat(conn: Connection, worker_id: str) -> None:
    conn.execute(
        text("UPDATE workers SET heartbeat_at = now() WHERE worker_id = :id"), {"id": worker_id}
    )


def retire_worker(conn: Connection, worker_id: str) -> None:
    retire_workers(conn, [worker_id])


def retire_workers(conn: Connection, worker_ids: Collection[str]) -> None:
    """Mark workers stopped (a supervisor does it for the ones that died unannounced)."""
    conn.execute(
        text(
            """
            UPDATE workers SET stopped_at = now()
            WHERE worker_id = ANY(:ids) AND stopped_at IS NULL
            """
        ),
        {"ids": list(worker_ids)},
    )


def presence(conn: Connection, worker_ids: Collection[str]) -> dict[str, Presence]:
    """The presence of these workers, by id (those that never announced are missing)."""
    if not worker_ids:
        return {}
    return {
        str(row.worker_id): Presence(
            worker_id=str(row.worker_id),
            silent_for_s=float(row.silent_for_s),
            ready_for_s=float(row.ready_for_s),
            stopped=bool(row.stopped),
        )
        for row in conn.execute(_PRESENCE_SQL, {"ids": list(worker_ids)})
    }


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


def ready_slots(conn: Connection, alive_within_s: float = ALIVE_WITHIN_S) -> dict[str, int]:
    """Model name -> jobs the live workers holding it run at once, together."""
    slots: dict[str, int] = {}
    for row in conn.execute(_LIVE_WORKERS_SQL, {"alive_within_s": alive_within_s}):
        slots[str(row.model)] = slots.get(str(row.model), 0) + int(row.slots)
    return slots


def missing_models(conn: Connection, wanted: Iterable[str]) -> list[str]:
    ready = ready_models(conn)
    return [m for m in wanted if ready.get(m, 0) == 0]
