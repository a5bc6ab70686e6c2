"""Where a node's time and memory went, read from its database and its processes."""

from __future__ import annotations

import psutil
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from oracle.store.db import make_engine

_JOB_SECONDS = text(
    """
    SELECT kind, count(*), coalesce(sum((result->>'elapsed_s')::float), 0),
           coalesce(sum(extract(epoch FROM finished_at - created_at)), 0)
    FROM jobs WHERE status = 'done' GROUP BY kind ORDER BY kind
    """
)
_TX_SECONDS = text(
    """
    SELECT kind, count(*), coalesce(avg(extract(epoch FROM confirmed_at - created_at)), 0)
    FROM outgoing_txs WHERE status = 'confirmed' GROUP BY kind ORDER BY kind
    """
)


def node_timings(database_url: str, pid: int | None = None) -> str:
    """One line: per job kind the compute and queue-to-done seconds, per tx kind the
    seconds from decision to receipt, and the resident memory of the node's processes."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            jobs = [
                f"{kind} x{n}: {run:.2f} s compute, {total:.2f} s queued+run"
                for kind, n, run, total in conn.execute(_JOB_SECONDS)
            ]
            txs = [
                f"{kind} x{n}: {avg:.1f} s to receipt" for kind, n, avg in conn.execute(_TX_SECONDS)
            ]
    finally:
        engine.dispose()
    parts = jobs + txs
    if pid is not None:
        parts.append(f"memory {resident_mib(pid):.0f} MiB (node + workers)")
    return "; ".join(parts)


def resident_mib(pid: int) -> float:
    """Resident memory of a process and all its children."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20
