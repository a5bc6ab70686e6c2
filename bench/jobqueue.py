"""The job queue against pgqueuer: enqueue, claim and complete trivial jobs.

Both queues live in one scratch database on the same server and do the same work:
``--jobs`` jobs enqueued in transactions of ``--enqueue-batch``, then ``--workers``
worker processes (processes, so that the GIL is not what is measured) claim them
``--batch`` at a time and complete them with a job body that does nothing.

- ours: ``oracle.store.queue`` driven by the real ``oracle.engine.worker.Worker``
  (``run_once``: a claim transaction and a completion transaction per batch), with a
  runner that returns an empty result; ``enqueue_jobs`` with lists of
  ``--enqueue-batch`` jobs, one transaction each.
- pgqueuer: its ``QueueManager`` with an ``entrypoint``, ``run(batch_size=--batch,
  mode=drain)``, and ``Queries.enqueue`` with lists of ``--enqueue-batch`` jobs; over
  asyncpg, its usual driver, or psycopg 3 when asyncpg is missing (pgqueuer's psycopg
  adapter is much slower; ``pip install 'pgqueuer[asyncpg]'``).

Workers are started and connected before the clock starts; they wait for a signal
after the enqueue phase. jobs/s = jobs / (enqueue seconds + drain seconds).

Run: ``.venv/bin/python bench/jobqueue.py [--jobs 50000] [--workers 4] [--batch 10]``
(``--smoke``: 200 jobs, one worker).
The last line reads ``ratio=<ours/pgqueuer jobs/s>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import multiprocessing as mp
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL

from bench._common import (
    add_smoke_flag,
    apply_smoke,
    libpq_url,
    postgres_server,
    print_machine,
    ratio,
    scratch_database,
)
from oracle.errors import OracleError
from oracle.store import make_engine
from oracle.store.models import JobKind
from oracle.store.queue import ClaimedJob, NewJob, enqueue_jobs

OUR_KIND: JobKind = "embedding"
OUR_MODEL = "bench-noop"
PGQ_ENTRYPOINT = "bench_noop"
FAR_DEADLINE = datetime(2100, 1, 1, tzinfo=UTC)
PACKAGES = ("pgqueuer", "psycopg", "SQLAlchemy")


@dataclass(frozen=True, slots=True)
class Round:
    name: str
    enqueue_s: float
    drain_s: float
    jobs: int

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / (self.enqueue_s + self.drain_s)

    def line(self) -> str:
        return (
            f"{self.name:9s} enqueue {self.jobs / self.enqueue_s:8.0f} jobs/s "
            f"({self.enqueue_s:6.2f} s), claim+complete {self.jobs / self.drain_s:8.0f} jobs/s "
            f"({self.drain_s:6.2f} s), overall {self.jobs_per_s:8.0f} jobs/s"
        )


# --- ours -----------------------------------------------------------------------------


class NoopRunner:
    """A JobRunner whose jobs take no time: what is left is the queue."""

    kinds: Sequence[JobKind] = (OUR_KIND,)

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.done = 0

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Mapping[str, Any] | OracleError]:
        self.done += len(jobs)
        return [{} for _ in jobs]


def enqueue_ours(url: URL, jobs: int, per_transaction: int) -> None:
    engine = make_engine(url)
    try:
        for start in range(0, jobs, per_transaction):
            batch = [
                NewJob(
                    kind=OUR_KIND,
                    model=OUR_MODEL,
                    priority=1,
                    deadline=FAR_DEADLINE,
                    payload={"i": i},
                )
                for i in range(start, min(jobs, start + per_transaction))
            ]
            with engine.begin() as conn:
                enqueue_jobs(conn, batch)
    finally:
        engine.dispose()


def drain_ours(url: str, batch: int, ready: Any, go: Any, done: Any) -> None:
    """One worker process: the real Worker's run_once until a claim comes back empty."""
    from oracle.engine.worker import Worker, WorkerConfig

    engine = make_engine(url, pool_size=2)
    runner = NoopRunner(batch)
    config = WorkerConfig(database_url=url, role="embedding", model=OUR_MODEL)
    worker = Worker(config, runner, engine)
    with engine.connect():  # open the pooled connection before the clock starts
        pass
    ready.wait()
    go.wait()
    while worker.run_once():
        pass
    engine.dispose()
    done.put(runner.done)


# --- pgqueuer -------------------------------------------------------------------------


@asynccontextmanager
async def pgqueuer_driver(url: str, driver: str) -> AsyncIterator[Any]:
    """pgqueuer's driver over one connection: asyncpg (what its docs use) or psycopg."""
    if driver == "asyncpg":
        import asyncpg
        from pgqueuer import AsyncpgDriver

        connection = await asyncpg.connect(url)
        try:
            yield AsyncpgDriver(connection)
        finally:
            await connection.close()
        return
    import psycopg
    from pgqueuer import PsycopgDriver

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        yield PsycopgDriver(connection)


async def install_pgqueuer(url: str, driver: str) -> None:
    from pgqueuer import Queries

    async with pgqueuer_driver(url, driver) as db:
        await Queries(db).install()


async def enqueue_pgqueuer(url: str, driver: str, jobs: int, per_batch: int) -> None:
    from pgqueuer import Queries

    async with pgqueuer_driver(url, driver) as db:
        queries = Queries(db)
        for start in range(0, jobs, per_batch):
            count = min(jobs, start + per_batch) - start
            await queries.enqueue(
                [PGQ_ENTRYPOINT] * count,
                [b'{"i": %d}' % i for i in range(start, start + count)],
                [0] * count,
            )


def drain_pgqueuer(target: tuple[str, str], batch: int, ready: Any, go: Any, done: Any) -> None:
    """One worker process: a QueueManager in drain mode (it stops once the queue is empty)."""
    url, driver = target
    done.put(asyncio.run(_drain_pgqueuer(url, driver, batch, ready, go)))


async def _drain_pgqueuer(url: str, driver: str, batch: int, ready: Any, go: Any) -> int:
    from pgqueuer import Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    count = 0
    async with pgqueuer_driver(url, driver) as db:
        manager = QueueManager(Queries(db))

        @manager.entrypoint(PGQ_ENTRYPOINT)
        async def noop(job: Job) -> None:
            nonlocal count
            count += 1

        await asyncio.to_thread(ready.wait)
        await asyncio.to_thread(go.wait)
        await manager.run(batch_size=batch, mode=QueueExecutionMode.drain)
    return count


def default_driver() -> str:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "psycopg"
    return "asyncpg"


# --- rounds ---------------------------------------------------------------------------


def run_round(
    name: str,
    *,
    enqueue: Callable[[], None],
    between: Callable[[], None],
    drain: Callable[..., None],
    target: Any,
    jobs: int,
    workers: int,
    batch: int,
) -> Round:
    spawn = mp.get_context("spawn")
    ready = spawn.Barrier(workers + 1)
    go = spawn.Event()
    done = spawn.Queue()
    processes = [
        spawn.Process(target=drain, args=(target, batch, ready, go, done)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=120)  # every worker is connected and waiting
    started = time.perf_counter()
    enqueue()
    enqueue_s = time.perf_counter() - started
    between()  # not timed
    drain_started = time.perf_counter()
    go.set()
    finished = sum(done.get(timeout=600) for _ in processes)
    drain_s = time.perf_counter() - drain_started
    for process in processes:
        process.join(timeout=30)
    if finished != jobs:
        raise RuntimeError(f"{name}: {finished} of {jobs} jobs completed")
    return Round(name, enqueue_s, drain_s, jobs)


def reset_tables(url: URL) -> None:
    """Empty both queues and checkpoint, so no round inherits the previous one's debris."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("TRUNCATE jobs, pgqueuer, pgqueuer_log"))
            conn.execute(text("VACUUM ANALYZE jobs, pgqueuer, pgqueuer_log"))
            conn.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def analyze_tables(url: URL) -> None:
    """Statistics as autovacuum keeps them in a running system. Without them the planner
    takes the freshly filled tables for nearly empty: our claim then sorts every queued
    row (a bitmap scan, milliseconds a claim) instead of walking the claim-order index."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE jobs, pgqueuer"))
    finally:
        engine.dispose()


def count_done_ours(url: URL) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM jobs WHERE status = 'done'")) or 0)
    finally:
        engine.dispose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10, help="jobs per claim, both queues")
    parser.add_argument("--enqueue-batch", type=int, default=1_000, help="jobs per enqueue call")
    parser.add_argument(
        "--pgqueuer-driver",
        choices=("asyncpg", "psycopg"),
        default=default_driver(),
        help="asyncpg when installed (pip install 'pgqueuer[asyncpg]'), else psycopg",
    )
    parser.add_argument(
        "--stale-stats",
        action="store_true",
        help="skip the ANALYZE between enqueue and drain (see analyze_tables)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternate rounds; best counts")
    add_smoke_flag(parser)
    args = parser.parse_args()
    return apply_smoke(args, jobs=200, workers=1, enqueue_batch=100, rounds=1)


def main() -> None:
    args = parse_args()
    driver = args.pgqueuer_driver
    with postgres_server() as server_url, scratch_database(server_url) as url:
        print_machine("bench/jobqueue.py: oracle.store.queue vs pgqueuer", PACKAGES, server_url)
        print(
            f"{args.jobs} jobs, {args.workers} worker processes, claims of {args.batch}, "
            f"enqueued {args.enqueue_batch} per transaction/call, "
            f"statistics {'stale' if args.stale_stats else 'analyzed'} before the drain"
        )
        print(f"pgqueuer runs over {driver}; ours over psycopg (SQLAlchemy)")
        if driver == "psycopg":
            print(
                "  note: pgqueuer's PsycopgDriver parks its NOTIFY watcher on the connection "
                "for up to 1 s at a time, which slows its queries; asyncpg is its usual driver"
            )
        plain_url = libpq_url(url)
        asyncio.run(install_pgqueuer(plain_url, driver))
        shared: dict[str, Any] = {
            "jobs": args.jobs,
            "workers": args.workers,
            "batch": args.batch,
            "between": (lambda: None) if args.stale_stats else (lambda: analyze_tables(url)),
        }
        ours: list[Round] = []
        theirs: list[Round] = []
        for _ in range(args.rounds):
            reset_tables(url)
            theirs.append(
                run_round(
                    "pgqueuer",
                    enqueue=lambda: asyncio.run(
                        enqueue_pgqueuer(plain_url, driver, args.jobs, args.enqueue_batch)
                    ),
                    drain=drain_pgqueuer,
                    target=(plain_url, driver),
                    **shared,
                )
            )
            print(theirs[-1].line(), flush=True)
            reset_tables(url)
            ours.append(
                run_round(
                    "ours",
                    enqueue=lambda: enqueue_ours(url, args.jobs, args.enqueue_batch),
                    drain=drain_ours,
                    target=url.render_as_string(hide_password=False),
                    **shared,
                )
            )
            if count_done_ours(url) != args.jobs:
                raise RuntimeError("ours: not every job is marked done")
            print(ours[-1].line(), flush=True)
    report(max(ours, key=lambda r: r.jobs_per_s), max(theirs, key=lambda r: r.jobs_per_s))


def report(ours: Round, theirs: Round) -> None:
    print()
    print(
        "ours/pgqueuer: "
        f"enqueue {ratio(theirs.enqueue_s, ours.enqueue_s):.2f}, "
        f"claim+complete {ratio(theirs.drain_s, ours.drain_s):.2f}, "
        f"overall {ratio(ours.jobs_per_s, theirs.jobs_per_s):.2f}"
    )
    print(f"ours {ours.jobs_per_s:.0f} jobs/s, pgqueuer {theirs.jobs_per_s:.0f} jobs/s overall")
    print(f"ratio={ratio(ours.jobs_per_s, theirs.jobs_per_s):.3f}")


if __name__ == "__main__":
    main()
