"""Whatever `oracle dev` started ends when it is killed outright (SIGKILL runs no cleanup).

Otherwise a newcomer who kills it finds stale nodes still sending transactions, and the
ports taken.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest

from oracle.children import start_child

END_WAIT_S = 180  # a node told to stop finishes the batch in hand first

STARTS_ANVIL_AND_WAITS = """
import time
from oracle.chain.anvil import start_anvil
print(start_anvil().process.pid, flush=True)
time.sleep(600)
"""


def running(process: psutil.Process) -> bool:
    """Alive, and still the same process. A zombie has ended: pid 1 in a container may
    never reap the children it inherits."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:160]}"
    except psutil.Error:
        return str(process.pid)


def assert_all_end(processes: Iterable[psutil.Process]) -> None:
    """Every process ends within END_WAIT_S; those that do not are killed, then reported."""
    left = list(processes)
    deadline = time.monotonic() + END_WAIT_S
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if running(p)]
    stale = [describe(p) for p in left]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not stale, f"still running {END_WAIT_S} s after their parent was killed: {stale}"


def test_anvil_ends_with_the_process_that_started_it() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTS_ANVIL_AND_WAITS], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        anvil = psutil.Process(int(parent.stdout.readline()))
        assert running(anvil)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    assert_all_end([anvil])


def test_a_child_started_from_another_thread_outlives_that_thread() -> None:
    """The kernel's parent-death signal follows the thread that forked, not the process:
    a child started from a short-lived thread must not end with it."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        started.append(start_child([sys.executable, "-c", "input()"], stdin=subprocess.PIPE))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    (child,) = started
    try:
        task = Path(f"/proc/self/task/{thread.native_id}")
        while task.exists():  # the thread is gone for the kernel too, signal sent if any
            time.sleep(0.05)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=2)
    finally:
        child.kill()
        child.wait()
        assert child.stdin is not None
        child.stdin.close()


def wait_for_line(output: Path, line: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300  # the node loads its models first
    while line not in output.read_text():
        assert process.poll() is None, output.read_text()
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.5)


@pytest.mark.slow
def test_nothing_oracle_dev_started_outlives_it() -> None:
    """anvil, the node and its workers, and the embedded Postgres, killed mid-request."""
    # not under pytest's base temp: as root, the Postgres runs as its own user and could
    # not enter it
    data_dir = Path(tempfile.mkdtemp(prefix="oracle-dev-killed-"))
    output = data_dir / "dev.out"
    try:
        with output.open("wb") as out:
            dev = subprocess.Popen(
                [sys.executable, "-m", "oracle.cli", "dev", "--nodes", "1",
                 "--data-dir", str(data_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for_line(output, "nodes registered; sending the sample request", dev)
            started = psutil.Process(dev.pid).children(recursive=True)
            pid_file = data_dir / "postgres" / "postmaster.pid"
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            started += [postmaster, *postmaster.children()]
            commands = [describe(p) for p in started]
            assert any("anvil" in c for c in commands), commands
            assert any("oracle.cli --log-prefix node0 run" in c for c in commands), commands
        finally:
            dev.kill()
            dev.wait()
        assert_all_end(started)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
