"""The committed contract artifacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_artifacts_match_the_sources() -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed to run the pinned solc"
    result = subprocess.run(
        [node, "scripts/compile_contracts.js", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "artifacts up to date" in result.stdout
