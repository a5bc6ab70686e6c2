"""A worker exempts what start-up left alive from later garbage collections."""

from __future__ import annotations

import json
import subprocess
import sys

# run in a process of its own: freezing the test runner's heap would outlive the test
_PROBE = """
import gc, json, weakref
import oracle.cli  # what a worker process has loaded before it serves
from oracle.engine.worker import settle_heap

class Node:
    pass

cycle = Node()
cycle.self = cycle
left_behind = weakref.ref(cycle)
del cycle
tracked = len(gc.get_objects())
frozen = settle_heap()
print(json.dumps({
    "tracked_before": tracked,
    "frozen": frozen,
    "freeze_count": gc.get_freeze_count(),
    "tracked_after": len(gc.get_objects()),
    "cycle_collected": left_behind() is None,
}))
"""


def test_start_up_objects_are_exempted_and_start_up_garbage_collected_first() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["frozen"] == seen["freeze_count"]
    assert seen["frozen"] > 0.9 * seen["tracked_before"]  # start-up's objects, exempted
    assert seen["tracked_after"] < 100  # nothing of start-up left for a collection to walk
    assert seen["cycle_collected"]  # garbage in a cycle was collected, not kept forever
