"""A worker's job runner in a process of its own: the lanes claim and record jobs in the
worker's process while the model runs in a child.

**Why.** A process has one interpreter lock. On a GPU the embedding model's host work
(tokenizing, launching each layer's kernels) needs it between kernels, and so does the
lanes' queue work (reading a claim, building results, recording them): in one process
they take turns. Measured on an H200 (README, GPU section): the worker's encoding alone
made 1.09-1.30 times one ``encode`` call's throughput and the queue alone 2.7 times, but
the two together 0.82-0.87 times; the time was close to the sum of the two. Apart, each
has an interpreter of its own: ahead of one process in six runs of seven on the H200, by
4.5 % on average (README, GPU section; the rest was not the shared interpreter). An
embedding worker on a GPU runs its model this way unless told otherwise
(``WorkerConfig.runs_apart``); it also keeps torch out of the worker's process, and a
CUDA fault that ends the model's process returns the worker's batches to the queue.

**What crosses the pipe.** A claim's jobs as tuples of their fields (the frozen records
pickled as records cost twice as much), and back each job's outcome: its result, or the
``OracleError`` it failed with (which pickles with its attributes). Batches are sent in
their turn (``Worker``: claim order) and run in the order sent, so a lane sends its batch
while another runs and the child goes from one batch to the next without waiting for
the worker's threads.

**The child** (started with ``spawn``: CUDA and threads do not survive a fork):

- loads the runner (``make_runner``) before the worker announces itself; a load that
  fails (an unknown model, a missing package) reaches the parent as the error it was;
- logs as the parent does, and ignores SIGINT: a terminal's Ctrl-C reaches the whole
  process group, and the parent finishes its batch before it stops the child;
- ends when the parent's end of the pipe closes, however the parent ended, and when the
  parent is gone while it runs a batch (``watch_supervisor``: a worker killed because its
  model hung in a device call must not leave the model loaded on the GPU behind it).

A batch that crashes inside the runner comes back as :class:`RunnerCrashed`, and the
worker runs its jobs one at a time, as with a runner in the worker's process. The child's
death comes back as ``RunnerProcessGone``, which stops the worker: its batch goes back
to the queue, and the supervisor starts a worker again.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from oracle.errors import OracleError
from oracle.store.models import JobKind
from oracle.store.queue import ClaimedJob

if TYPE_CHECKING:
    from oracle.engine.worker import WorkerConfig

__all__ = ["RunnerCrashed", "RunnerProcess", "RunnerProcessGone"]

logger = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
STOP_TIMEOUT_S = 10.0
"""How long a child has to end once its pipe closes before it is killed."""

Outcome = Mapping[str, Any] | OracleError


class RunnerCrashed(OracleError):
    """The job runner crashed on a batch."""


class RunnerProcessGone(OracleError):
    """The worker's job runner process is gone."""


class RunnerProcess:
    """A :class:`~oracle.engine.worker.JobRunner` whose ``run`` happens in a child
    process that holds the model; one batch at a time."""

    def __init__(self, config: WorkerConfig) -> None:
        """Start the child and wait until its runner is loaded (its load error, if any,
        raised here). ``config``: the worker's ``WorkerConfig``; the child builds the
        runner it names, in its own process."""
        ours, theirs = _SPAWN.Pipe()
        self._process = _SPAWN.Process(
            target=_serve,
            args=(theirs, config, _logging_here(), os.getpid()),
            name=f"runner {config.model}",
            daemon=True,  # ended at this process's exit, if still running
        )
        self._process.start()
        theirs.close()  # only the child holds its end: its exit closes the pipe here
        self._conn: Connection = ours
        self._sending = threading.Lock()
        self._replies = threading.Condition()
        self._sent = 0
        self._received = 0
        self._gone_error: RunnerProcessGone | None = None
        ready = self._receive()
        if isinstance(ready, BaseException):
            self.close()
            raise ready
        kinds, batch_size = ready
        self.kinds: Sequence[JobKind] = tuple(kinds)
        self.batch_size: int = batch_size
        logger.info("job runner started in its own process", extra={"pid": self.pid})

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def run(self, jobs: Sequence[ClaimedJob]) -> list[Outcome]:
        return self.submit(jobs)()

    def submit(self, jobs: Sequence[ClaimedJob]) -> Callable[[], list[Outcome]]:
        """Send a batch; the call returned waits for its outcomes. The child runs batches
        in the order they were sent, so one can be sent while another runs."""
        wire = pickle.dumps([_wire(job) for job in jobs], pickle.HIGHEST_PROTOCOL)
        with self._sending:
            try:
                self._conn.send_bytes(wire)
            except (OSError, ValueError):  # the pipe is closed: the child is gone
                raise self._gone() from None
            number = self._sent
            self._sent += 1
        return lambda: self._outcomes(number)

    def _outcomes(self, number: int) -> list[Outcome]:
        """The reply to the ``number``-th batch sent (replies come in that order)."""
        with self._replies:
            self._replies.wait_for(lambda: self._received == number or self._gone_error is not None)
            if self._gone_error is not None:
                raise self._gone_error
            try:
                reply = self._receive()
            finally:
                self._received += 1
                self._replies.notify_all()
        if isinstance(reply, RunnerCrashed):
            raise reply
        outcomes: list[Outcome] = reply
        return outcomes

    def close(self) -> None:
        """Close the pipe (the child ends) and wait for it; killed after
        :data:`STOP_TIMEOUT_S`."""
        self._conn.close()
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            logger.warning("job runner process did not stop; killed", extra={"pid": self.pid})
            self._process.kill()
            self._process.join()

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None

    def _gone(self) -> RunnerProcessGone:
        """What the pipe's closing means, said once for every batch still waiting."""
        if self._gone_error is None:
            self._process.join(STOP_TIMEOUT_S)
            self._gone_error = RunnerProcessGone(
                f"pid {self.pid}, exit code {self._process.exitcode}"
            )
        return self._gone_error


def _wire(job: ClaimedJob) -> tuple[Any, ...]:
    """The job's fields as a tuple, which pickles in a fraction of the time the frozen
    record takes; :func:`_unwire` builds the record again."""
    return (
        job.id,
        job.kind,
        job.request_id,
        job.model,
        job.priority,
        job.deadline,
        job.payload,
        job.attempts,
        job.max_attempts,
        job.pay_per_token_wei,
    )


def _unwire(fields: tuple[Any, ...]) -> ClaimedJob:
    (id_, kind, request_id, model, priority, deadline, payload, attempts, max_attempts, pay) = (
        fields
    )
    return ClaimedJob(
        id=id_,
        kind=kind,
        request_id=request_id,
        model=model,
        priority=priority,
        deadline=deadline,
        payload=payload,
        attempts=attempts,
        max_attempts=max_attempts,
        pay_per_token_wei=pay,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Logging:
    """A process's logging as the child needs it: the root's level and formatters (each
    to stderr), and the levels set on named loggers."""

    level: int
    formatters: tuple[logging.Formatter | None, ...]
    levels: Mapping[str, int]


def _logging_here() -> _Logging:
    root = logging.getLogger()
    named = logging.root.manager.loggerDict.items()
    return _Logging(
        level=root.level,
        formatters=tuple(_portable(handler.formatter) for handler in root.handlers),
        levels={
            name: log.level for name, log in named if isinstance(log, logging.Logger) and log.level
        },
    )


def _portable(formatter: logging.Formatter | None) -> logging.Formatter | None:
    """The formatter, if it can cross to the child (one holding a stream cannot: the
    child's handler then formats as logging does by default)."""
    try:
        pickle.dumps(formatter)
    except (TypeError, AttributeError, pickle.PicklingError):
        return None
    return formatter


def _log_as(settings: _Logging) -> None:
    root = logging.getLogger()
    root.handlers[:] = []
    for formatter in settings.formatters:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.level)
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level)


def _serve(conn: Connection, config: WorkerConfig, log: _Logging, worker_pid: int) -> None:
    """The child: load the runner, say so, then run each batch that arrives until the
    pipe closes, or until the worker is gone while a batch runs (a worker killed while
    its model is stuck in a device call must not leave the model loaded behind it)."""
    from oracle.engine.worker import make_runner, settle_heap, watch_supervisor

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _log_as(log)
    watch_supervisor(worker_pid)
    try:
        runner = make_runner(dataclasses.replace(config, embed_process=False))
    except OracleError as exc:
        conn.send(exc)
        return
    settle_heap()
    reply: Any = (tuple(runner.kinds), runner.batch_size)
    try:
        while True:
            conn.send(reply)
            batch = conn.recv()
            jobs = [_unwire(fields) for fields in batch]
            try:
                reply = runner.run(jobs)
            except Exception as exc:  # the worker decides what a crash means, as in-process
                reply = RunnerCrashed(f"{type(exc).__name__}: {exc}")
    except (EOFError, OSError):  # the worker closed its end, or is gone
        return
