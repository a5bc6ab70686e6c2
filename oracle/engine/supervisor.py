"""Supervises worker processes: starts them, restarts the ones that die, stops them all.

Each worker is a separate process (``oracle worker``), so a model crash, a leak or a
SIGKILL takes down one worker, never the node; its leased jobs go back to the queue when
the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from oracle.engine.worker import Role

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    role: Role
    model: str
    threads: int = 1
    device: str = "cpu"

    def command(self) -> list[str]:
        """The ``oracle worker`` command line (the database URL travels in the environment,
        where ``ps`` does not show its password)."""
        return [
            sys.executable,
            "-m",
            "oracle.cli",
            "worker",
            "--role",
            self.role,
            "--model",
            self.model,
            "--threads",
            str(self.threads),
            "--device",
            self.device,
        ]


@dataclass(slots=True)
class _Slot:
    spec: WorkerSpec
    process: subprocess.Popen[bytes] | None = None
    crashes: int = 0
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class WorkerSupervisor:
    """Keeps a set of worker processes running until stopped."""

    def __init__(self, database_url: str, specs: list[WorkerSpec]) -> None:
        self._database_url = database_url
        self._slots = [_Slot(spec) for spec in specs]

    @property
    def pids(self) -> list[int]:
        return [
            s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None
        ]

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)

    def check(self) -> None:
        """Restart workers that exited, with growing delays for ones that keep crashing."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None:
                if now >= slot.restart_at:
                    self._spawn(slot)
                continue
            code = slot.process.poll()
            if code is None:
                if now - slot.started_at > 60:
                    slot.crashes = 0  # it has been healthy for a while
                continue
            delay = RESTART_BACKOFF_S[min(slot.crashes, len(RESTART_BACKOFF_S) - 1)]
            slot.crashes += 1
            slot.process = None
            slot.restart_at = now + delay
            logger.error(
                "worker exited; restarting",
                extra={
                    "model": slot.spec.model,
                    "role": slot.spec.role,
                    "exit_code": code,
                    "restart_in_s": delay,
                },
            )

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
        finally:
            await asyncio.to_thread(self.stop)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every worker (they finish their batch), then SIGKILL what is left."""
        running = [s.process for s in self._slots if s.process is not None]
        for process in running:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self, slot: _Slot) -> None:
        env = {**os.environ, "ORACLE_DATABASE_URL": self._database_url}
        slot.process = subprocess.Popen(slot.spec.command(), env=env)
        slot.started_at = time.monotonic()
        logger.info(
            "worker started",
            extra={"model": slot.spec.model, "role": slot.spec.role, "pid": slot.process.pid},
        )
