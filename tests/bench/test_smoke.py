"""Every benchmark runs once in its smoke mode, so that one that rots fails ``make test``.

``bench/<name>.py --smoke`` runs the benchmark's own code paths on tiny sizes in a
subprocess, as ``make bench`` starts it, against the test run's Postgres server
(``DATABASE_URL``). The test checks that it exits 0 and ends with its result line; the
figures of a smoke run mean nothing and are not checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted(path.name for path in (REPO_ROOT / "bench").glob("[!_]*.py"))

LAST_LINES: dict[str, str] = {
    "consensus.py": r"honest_short_min=[0-9.]+ other_prompt_max=[0-9.]+",
    "embed.py": r"ratio=[0-9.]+",
    "gas.py": r"finalize_q5_gas=\d+ protocol_q5_gas=\d+",
    "gpu.py": r"ratio=[0-9.]+",
    "jobqueue.py": r"ratio=[0-9.]+",
    "latency.py": r"p50_ms=\d+ p95_ms=\d+",
    "lifecycle.py": r"ratio=[0-9.]+",
    "pipeline.py": r"ratio=[0-9.]+",
    "provenance.py": r"honest_pass_min=[0-9.]+ other_prompt_pass_max=[0-9.]+",
    "rpc.py": r"calls_per_idle_block=[0-9.]+ calls_per_request=\d+",
    "seats.py": r"worst_ratio=[0-9.]+ worst_ratio_offline=[0-9.]+ first_come_q5_s20=[0-9.]+",
}
"""The result line each benchmark ends with (bench/README.md); a new benchmark adds its own."""

HANG_LIMIT_S = 600
"""Not a performance check: a smoke run takes seconds to a minute; this only stops a hang."""


def test_every_benchmark_has_a_result_line() -> None:
    assert BENCHMARKS, "no benchmarks found"
    assert sorted(LAST_LINES) == BENCHMARKS


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_smoke_run(script: str, postgres_server_url: URL) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": postgres_server_url.render_as_string(hide_password=False),
        "PYTHONUNBUFFERED": "1",
    }
    completed = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_LIMIT_S,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, (
        f"bench/{script} --smoke exited {completed.returncode}:\n{output[-4000:]}"
    )
    lines = completed.stdout.strip().splitlines()
    assert lines, f"bench/{script} --smoke printed nothing:\n{output[-4000:]}"
    assert re.fullmatch(LAST_LINES[script], lines[-1]), f"last line: {lines[-1]!r}"
