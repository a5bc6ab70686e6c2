"""No benchmark file may be named like a standard-library module.

A benchmark runs as ``python bench/<name>.py``, which puts ``bench/`` on ``sys.path``
while it starts: a ``bench/queue.py`` shadowed the standard library's ``queue`` for
everything ``bench/gas.py`` imported, and ``make bench`` failed on a clean checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_directory_holds_benchmarks() -> None:
    assert sorted(BENCH.glob("*.py")), f"no benchmarks found under {BENCH}"


def test_no_bench_file_shadows_the_standard_library() -> None:
    shadowing = sorted(
        path.name
        for path in BENCH.glob("*.py")
        if path.stem in sys.stdlib_module_names or path.stem in sys.builtin_module_names
    )
    assert shadowing == [], f"rename these: they shadow standard-library modules: {shadowing}"
