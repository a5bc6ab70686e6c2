"""A worker's job runner in a process of its own: the lanes claim and record jobs in the
worker's process while the model runs in a child.

**Why.** A process has one interpreter lock. On a GPU the embedding model's host work
(tokenizing, launching each layer's kernels) needs it between kernels, and so does the
lanes' queue work (reading a claim, building results, recording them): in one process
they take turns. Measured on an H200 (README, GPU section): the worker's encoding alone
made 1.09-1.30 times one ``encode`` call's throughput and the queue alone 2.7 times, but
the two together 0.82-0.87 times; the time was close to the sum of the two. Apart, each
has an interpreter of its own. An embedding worker on a GPU runs its model this way
unless told otherwise (``WorkerConfig.runs_apart``).

**What crosses the pipe.** A claim's jobs as tuples of their fields (the frozen records
pickled as records cost twice as much), and back each job's outcome: its result, or the
``OracleError`` it failed with (which pickles with its attributes).

**The child** (started with ``spawn``: CUDA and threads do not survive a fork):

- loads the runner (``make_runner``) before the worker announces itself; a load that
  fails (an unknown model, a missing package) reaches the parent as the error it was;
- logs as the parent does, and ignores SIGINT: a terminal's Ctrl-C reaches the whole
  process group, and the parent finishes its batch before it stops the child;
- ends when the parent's end of the pipe closes, however the parent ended.

A batch that crashes inside the runner comes back as :class:`RunnerCrashed`, and the
worker runs its jobs one at a time, as with a runner in its own process. The child's
death comes back as ``RunnerProcessGone``, which stops the worker: its batch goes back
to the queue, and the supervisor starts a worker again.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
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
_FIELDS = tuple(field.name for field in dataclasses.fields(ClaimedJob))
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
            args=(theirs, config, _logging_here()),
            name=f"runner {config.model}",
            daemon=True,  # ended at this process's exit, if still running
        )
        self._process.start()
        theirs.close()  # only the child holds its end: its exit closes the pipe here
        self._conn: Connection = ours
        self._lock = threading.Lock()
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
        with self._lock:
            try:
                self._conn.send([tuple(getattr(job, name) for name in _FIELDS) for job in jobs])
            except (OSError, ValueError):  # the pipe is closed: the child is gone
                raise self._gone() from None
            reply = self._receive()
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
        self._process.join(STOP_TIMEOUT_S)
        return RunnerProcessGone(f"pid {self.pid}, exit code {self._process.exitcode}")


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
        formatters=tuple(handler.formatter for handler in root.handlers),
        levels={
            name: log.level for name, log in named if isinstance(log, logging.Logger) and log.level
        },
    )


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


def _serve(conn: Connection, config: WorkerConfig, log: _Logging) -> None:
    """The child: load the runner, say so, then run each batch that arrives until the
    pipe closes."""
    from oracle.engine.worker import make_runner, settle_heap

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _log_as(log)
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
            jobs = [ClaimedJob(**dict(zip(_FIELDS, fields, strict=True))) for fields in batch]
            try:
                reply = runner.run(jobs)
            except Exception as exc:  # the worker decides what a crash means, as in-process
                reply = RunnerCrashed(f"{type(exc).__name__}: {exc}")
    except (EOFError, OSError):  # the worker closed its end, or is gone
        return
