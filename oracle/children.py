"""Child processes that end when this process ends, however it ends.

A process killed outright (SIGKILL, the kernel's OOM killer) runs no cleanup: without
this, the anvil and the nodes that ``oracle dev`` started would go on running, holding
their ports and sending transactions. On Linux the child asks the kernel for SIGTERM
when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a node still stops cleanly.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _find_prctl() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None  # no parent-death signal elsewhere: there a child may outlive a crash
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once, here: the forked child then only calls it, importing and loading nothing.
_prctl = _find_prctl()


def start_child(command: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **popen)``, for a child that gets SIGTERM once this
    process is gone.

    The kernel sends the signal when the *thread* that forked the child exits, not the
    process. So it is asked for only from the main thread, which lasts as long as the
    process; a child started from another thread (or where there is no prctl) is an
    ordinary child, rather than one that dies when a pool thread is retired.
    """
    prctl = _prctl
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return subprocess.Popen(command, **popen)
    return subprocess.Popen(command, preexec_fn=_die_with(prctl, os.getpid()), **popen)


def _die_with(prctl: Callable[..., int], parent_pid: int) -> Callable[[], None]:
    def ask_for_sigterm() -> None:  # runs in the child, between fork and exec
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent_pid:  # the parent died before the request was made
            os._exit(1)

    return ask_for_sigterm
